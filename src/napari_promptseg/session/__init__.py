"""The annotation session: interactive segmentation without Qt or napari (see :mod:`.core`)."""

from __future__ import annotations

from ..interactive import ObjectPrompt
from .core import AnnotationSession, SessionEvents
from .jobs import Job, run_now

__all__ = ["AnnotationSession", "SessionEvents", "Job", "run_now", "ObjectPrompt"]
