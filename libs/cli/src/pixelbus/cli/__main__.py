"""``python -m pixelbus.cli``, the same as ``pixelbus``."""

import sys

from pixelbus.cli.app import main

sys.exit(main())
