"""``python -m PLCLSegmentationLib.engine`` runs the ``plcl`` command (Slicer starts it this way)."""

import sys

from .cli import main

sys.exit(main())
