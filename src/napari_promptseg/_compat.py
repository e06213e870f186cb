"""Names and module paths of release 0.1 that moved: they keep working for one release, with a
DeprecationWarning that names the new place."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__all__ = ["MOVED_MODULES", "MOVED_NAMES", "deprecated_name"]

#: old module -> new module (``napari_promptseg.`` left out)
MOVED_MODULES = {
    "results": "core.results", "prompts": "core.prompts", "image": "core.image", "cancel": "core.cancel",
    "devices": "core.devices", "interactive": "core.prompts", "embeddings": "embed.cache",
    "disk_cache": "embed.disk_cache", "store": "embed.store", "stack": "embed.stack", "tiles": "embed.tiles",
    "distributed": "embed.distributed", "automatic": "segmentation.everything",
    "automatic_sam2": "segmentation.everything_sam2", "everything_tiles": "segmentation.everything_tiles",
    "slice_propagator": "propagation.prompt_method",
    "tracking": "propagation.memory", "labels_io": "labels.write", "autosave": "labels.autosave",
    "models.sam_encoder": "models.sam.encoder", "models.sam_decoder": "models.sam.decoder",
    "models.sam_batch": "models.sam.batch", "models.sam2_decoder": "models.sam2.decoder",
}

#: old top-level name -> (new module, name there)
MOVED_NAMES = {
    "Prompt": ("core.prompts", "Prompt"),
    "default_model_name": ("models.weights", "default_model_name"),
    "CacheWarning": ("embed.disk_cache", "CacheWarning"),
    "MaskRecord": ("segmentation.everything", "MaskRecord"),
    "EVERYTHING_DEFAULTS": ("segmentation.everything", "EVERYTHING_DEFAULTS"),
    "SAM2_EVERYTHING_DEFAULTS": ("segmentation.everything", "SAM2_EVERYTHING_DEFAULTS"),
    "TiledEmbedding": ("embed.tiles", "TiledEmbedding"),
    "EmbeddingStore": ("embed.store", "EmbeddingStore"),
    "embed_cached": ("embed.cache", "embed_cached"),
    "EmbeddingCache": ("embed.cache", "EmbeddingCache"),
    "embed_stack_iter": ("embed.stack", "embed_stack_iter"),
}

_PKG = "napari_promptseg"


def deprecated_name(name: str):
    """The object an old top-level name stands for, with a DeprecationWarning; AttributeError
    for names that never existed."""
    if name not in MOVED_NAMES:
        raise AttributeError(f"module {_PKG!r} has no attribute {name!r}")
    module, attr = MOVED_NAMES[name]
    warnings.warn(f"napari_promptseg.{name} is deprecated; use napari_promptseg.{module}.{attr}",
                  DeprecationWarning, stacklevel=3)
    return getattr(importlib.import_module(f"{_PKG}.{module}"), attr)


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as the new module (the same module object)."""

    def find_spec(self, fullname, path=None, target=None):
        old = fullname[len(_PKG) + 1:] if fullname.startswith(_PKG + ".") else None
        if old not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = f"{_PKG}.{MOVED_MODULES[spec.name[len(_PKG) + 1:]]}"
        warnings.warn(f"{spec.name} is deprecated; use {new}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module) -> None:
        pass


if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedFinder())
