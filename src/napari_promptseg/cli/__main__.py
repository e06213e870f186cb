"""python -m napari_promptseg.cli: the promptseg command line."""

import sys

from .main import main

sys.exit(main())
