"""python -m napari_promptseg.cli: the promptseg command line."""

import sys

from napari_promptseg.cli.main import main

sys.exit(main())
