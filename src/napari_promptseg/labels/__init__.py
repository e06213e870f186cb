"""Masks -> labels: writing objects into any labels array (numpy, zarr, dask, multiscale) plane by
plane, the undo history, and the autosave store of annotations."""
