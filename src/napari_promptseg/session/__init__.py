"""The annotation session: interactive segmentation without Qt or napari (see :mod:`.core`)."""

from __future__ import annotations

from napari_promptseg.core.prompts import ObjectPrompt, Prompt  # ObjectPrompt: release 0.1's name
from napari_promptseg.session.core import AnnotationSession, SessionEvents
from napari_promptseg.session.jobs import Job, run_now

__all__ = ["AnnotationSession", "SessionEvents", "Job", "run_now", "Prompt", "ObjectPrompt"]
