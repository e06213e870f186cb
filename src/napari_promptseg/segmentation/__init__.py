"""Embedding -> masks: prompted segmentation (:func:`~napari_promptseg.segment`) and segment
everything (Meta's automatic mask generators, SAM and SAM 2, tiled, linked into 3D ids)."""
