"""The package's version, in the lowest layer so that any module (and ``oamip --version``) can
read it without importing the rest of the package."""

__version__ = "0.1.0"
