"""What the models and propagation return: :class:`Embedding` (per image), :class:`Prediction`
(per prompt), :class:`SliceResult` (per propagated slice) and :class:`Found` (the instances of a
concept, :func:`napari_promptseg.find`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Embedding", "RegionEmbedding", "Prediction", "SliceResult", "FoundObject", "Found"]


@dataclass
class Embedding:
    """The encoder's output for one image, plus what is needed to map results back to it.

    features: named tensors on the model's device; SAM has ``"image_embed"`` ``(1, C, h, w)``
    (SAM 2 adds high-resolution maps under further names). original_size: ``(H, W)`` of the
    image; input_size: ``(h_in, w_in)`` of the resized image inside the square model input.
    model / checkpoint_id / preprocessing identify what made it: an embedding is only valid for
    that exact model and preprocessing (the cache key of the disk cache).
    """

    model: str
    checkpoint_id: str
    preprocessing: str
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    features: dict[str, Any]
    # Prompt-independent decoder tensors derived from ``features`` (never serialised).
    derived: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_state(self) -> dict[str, Any]:
        """A picklable dict of numpy arrays and plain values (see :meth:`from_state`)."""
        feats = {k: v.detach().cpu().numpy() for k, v in self.features.items()}
        return {
            "model": self.model,
            "checkpoint_id": self.checkpoint_id,
            "preprocessing": self.preprocessing,
            "original_size": list(self.original_size),
            "input_size": list(self.input_size),
            "features": feats,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], device: Any = "cpu") -> Embedding:
        """Rebuild an embedding from :meth:`to_state`'s output, with tensors on ``device``."""
        import torch

        feats = {k: torch.as_tensor(np.asarray(v), device=device) for k, v in state["features"].items()}
        return cls(
            model=str(state["model"]),
            checkpoint_id=str(state["checkpoint_id"]),
            preprocessing=str(state["preprocessing"]),
            original_size=tuple(int(v) for v in state["original_size"]),
            input_size=tuple(int(v) for v in state["input_size"]),
            features=feats,
        )

    def save(self, path: str | Path) -> None:
        """Write to an ``.npz`` file (no pickle)."""
        state = self.to_state()
        arrays = {f"features/{k}": v for k, v in state.pop("features").items()}
        meta = np.array(repr(state))
        with open(path, "wb") as f:  # a file handle: np.savez would append ".npz" to a bare path
            np.savez(f, __meta__=meta, **arrays)

    @classmethod
    def load(cls, path: str | Path, device: Any = "cpu") -> Embedding:
        """Read a file written by :meth:`save`."""
        import ast

        with np.load(path, allow_pickle=False) as f:
            state = ast.literal_eval(str(f["__meta__"]))
            state["features"] = {
                k.split("/", 1)[1]: f[k] for k in f.files if k.startswith("features/")
            }
        return cls.from_state(state, device)


class Prediction:
    """Masks for one prompt.

    masks: ``(K, H, W)`` bool at the image's resolution (K = 3 with multimask, else 1);
    scores: ``(K,)`` float32 predicted IoU; logits: ``(K, h, w)`` float32 low-resolution logits
    (256 x 256 for SAM): pass ``logits[i]`` back as ``mask_input`` to refine mask i.
    Backends may compute the full-resolution masks lazily (``upscale``): :meth:`mask` computes
    one of them, :attr:`masks` all; both cache what they computed (thread-safe).
    """

    def __init__(self, masks=None, scores=None, logits=None, *, upscale=None) -> None:
        if masks is None and upscale is None:
            raise ValueError("a Prediction needs masks or an upscale function")
        self.scores = np.asarray(scores, np.float32)
        self.logits = np.asarray(logits, np.float32)
        self._masks = None if masks is None else np.asarray(masks, bool)
        self._upscale = upscale  # (indices) -> (len(indices), H, W) bool
        self._one: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Prediction(scores={self.scores!r}, logits shape {self.logits.shape})"

    @property
    def masks(self) -> np.ndarray:
        """``(K, H, W)`` bool: every candidate mask at the image's resolution."""
        if self._masks is None:
            with self._lock:  # one upscaling call for all the candidates not computed yet
                missing = [i for i in range(len(self.scores)) if i not in self._one]
                if missing:
                    self._one.update(zip(missing, self._upscale(missing), strict=True))
                self._masks = np.stack([self._one[i] for i in range(len(self.scores))])
        return self._masks

    def mask(self, i: int) -> np.ndarray:
        """``(H, W)`` bool: candidate ``i`` (computed alone when the masks are lazy)."""
        if self._masks is not None:
            return self._masks[i]
        i = int(i) % len(self.scores)
        with self._lock:
            if i not in self._one:
                self._one[i] = self._upscale([i])[0]
            return self._one[i]

    @property
    def best(self) -> int:
        """Index of the mask with the highest predicted IoU."""
        return int(np.argmax(self.scores))


class RegionEmbedding:
    """An image whose embedding is made region by region when a prompt needs it (tiles of a huge
    image): :meth:`PromptableModel.predict <napari_promptseg.PromptableModel.predict>` and
    ``mask_prompt`` hand it the prompt. Subclasses set :attr:`model` and implement both."""

    model: Any

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask: bool = True):
        raise NotImplementedError

    def mask_prompt(self, mask, strength: float = 8.0) -> np.ndarray:
        raise NotImplementedError


@dataclass
class SliceResult:
    """The masks of the objects decoded on one slice.

    index: slice index along the propagation axis; masks: object id -> ``(H, W)`` bool (objects
    that stopped on this slice are absent); scores: object id -> predicted IoU; done: slices
    processed so far (this one included); total: upper bound of the slices to process (it only
    decreases, as objects stop); direction: +1 (forward pass) or -1 (backward pass); sources:
    object id -> the seed slice its mask was propagated from; stopped: object id -> why its front
    stopped here: the prompt method's rule (``"score"``, ``"area"``, ``"overlap"``, ``"contrast"``,
    ``"extent"``, ``"neighbour"``; ``PromptPropagation.stops``), or ``"absent"`` (SAM 2's object
    score, ``MemoryTracking.stop_after``).
    """

    index: int
    masks: dict[int, np.ndarray]
    scores: dict[int, float]
    done: int
    total: int
    direction: int = 1
    sources: dict[int, int] = field(default_factory=dict)
    stopped: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class FoundObject:
    """One instance of a concept: ``score`` its probability (detection times presence); ``box``
    ``(row0, col0, row1, col1)`` in image pixels, as the model predicted it (not the mask's extent;
    for an object joined across tiles, the extent of its joined mask); its mask kept as the extent
    ``window`` ``(row0, col0, row1, col1)`` (ends exclusive; all 0 for an empty mask) and ``piece``,
    the window's bool pixels; ``shape`` ``(H, W)`` of the image. :attr:`mask` is the ``(H, W)``
    bool mask, made on request (on a huge image use ``window`` and ``piece``)."""

    score: float
    box: tuple[float, float, float, float]
    window: tuple[int, int, int, int]
    piece: np.ndarray = field(repr=False)
    shape: tuple[int, int] = field(repr=False)

    @property
    def mask(self) -> np.ndarray:
        out = np.zeros(self.shape, bool)
        r0, c0, r1, c1 = self.window
        out[r0:r1, c0:c1] = self.piece
        return out


@dataclass
class Found:
    """The instances of a concept in one image (:func:`napari_promptseg.find`).

    objects: :class:`FoundObject` by decreasing score; shape: ``(H, W)`` of the image;
    threshold: the score above which objects were kept; out: the array the labels were painted
    into (``find(..., out=)``), else None.
    """

    objects: list[FoundObject]
    shape: tuple[int, int]
    threshold: float = 0.5
    out: Any = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.objects)

    @property
    def scores(self) -> np.ndarray:
        """``(N,)`` float32 scores, decreasing."""
        return np.array([o.score for o in self.objects], np.float32)

    @property
    def labels(self) -> np.ndarray:
        """``(H, W)`` int32 (or :attr:`out` when given): object ``i`` (0-based in :attr:`objects`)
        has id ``i + 1``; where objects overlap, the higher-scored one keeps the pixel; 0 is
        background."""
        if self.out is not None:
            return self.out
        out = np.zeros(self.shape, np.int32)
        for i in range(len(self.objects) - 1, -1, -1):
            o = self.objects[i]
            r0, c0, r1, c1 = o.window
            out[r0:r1, c0:c1][o.piece] = i + 1
        return out
