"""The ``pixelbus`` command line."""
