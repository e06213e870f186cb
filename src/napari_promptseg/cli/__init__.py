"""The ``promptseg`` command line (headless: no napari, no Qt). See :func:`main`."""

from .main import main

__all__ = ["main"]
