"""``python -m oamip``: the ``oamip`` command."""

from oamip.cli import main

raise SystemExit(main())
