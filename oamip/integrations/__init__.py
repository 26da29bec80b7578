"""Adapters to other libraries' conventions, each importing its library only when imported
itself: :mod:`oamip.integrations.torch_pruning` (``pip install 'oamip[tp]'``)."""
