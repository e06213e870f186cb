"""The ``promptseg`` command line (headless: no napari, no Qt). See :func:`main`."""

from napari_promptseg.cli.main import main

__all__ = ["main"]
