"""Masks through the planes of a z-stack or the frames of a video: the public API and its option
objects, the prompt method (mask -> prompt, plane by plane) and the memory method (SAM 2)."""
