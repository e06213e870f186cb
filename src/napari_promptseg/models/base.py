"""The backend protocol: what every model family implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..image import to_rgb_uint8
from ..prompts import Prompt, make_prompt
from ..results import Embedding, Prediction
from .registry import ModelSpec

__all__ = ["PromptableModel"]


class PromptableModel(ABC):
    """A promptable segmentation model: ``embed`` an image once, ``predict`` many prompts.

    Subclasses (one per family) implement :meth:`_embed_rgb` and :meth:`_predict`; input
    checking, intensity mapping and prompt validation live here, shared by all families.
    """

    #: bump when the image preparation changes, so cached embeddings are invalidated
    preprocessing: str = "rgb8-v1"
    #: side of the square model input in pixels (the image is resized into its top-left corner;
    #: the low-resolution logits cover the whole square)
    image_size: int

    def __init__(self, spec: ModelSpec, checkpoint_id: str, device) -> None:
        self.spec = spec
        self.checkpoint_id = checkpoint_id
        self.device = device

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    @abstractmethod
    def low_res_shape(self) -> tuple[int, int]:
        """Shape ``(h, w)`` of :attr:`Prediction.logits` rows and of ``mask_input``."""

    @property
    def supports_memory(self) -> bool:
        """Whether the model tracks with a memory (SAM 2): ``ps.propagate(method="memory")``."""
        return False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} on {self.device}>"

    def embed(self, image, contrast_limits: tuple[float, float] | None = None) -> Embedding:
        """Encode ``image`` (H, W) or (H, W, 1|3|4) of any real dtype.

        uint8 RGB goes to the model unchanged; uint8 gray too unless ``contrast_limits`` other than
        ``(0, 255)`` are given; other dtypes through the ``contrast_limits`` window (default:
        robust percentiles). For a stack, pass the stack's window for every slice.
        """
        return self._embed_rgb(to_rgb_uint8(image, contrast_limits))

    def predict(
        self,
        embedding: Embedding,
        points=None,
        labels=None,
        box=None,
        mask_input=None,
        multimask: bool = True,
    ) -> Prediction:
        """Masks for one object.

        points: ``(N, 2)`` (row, col) in image pixels; labels: ``(N,)`` 1 = object, 0 = background
        (default all 1); box: ``(row0, col0, row1, col1)``, corners in any order; mask_input:
        ``(h, w)`` or ``(1, h, w)`` low-res logits from a previous prediction of the same object.
        """
        self._check_embedding(embedding)
        prompt = make_prompt(
            embedding.original_size, self.low_res_shape, points, labels, box, mask_input
        )
        return self._predict(embedding, prompt, bool(multimask))

    def mask_prompt(self, embedding: Embedding, mask, strength: float = 8.0) -> np.ndarray:
        """Low-resolution logits ``(h, w)`` float32 that encode ``mask`` as a ``mask_input``.

        mask: ``(H, W)`` bool at the embedded image's resolution (e.g. a mask painted by the
        user). Inside the mask the logits are ``+strength``, outside ``-strength``, with the
        resize's soft edge in between; the padding beyond the image is ``-strength``.
        """
        from skimage.transform import resize

        m = np.asarray(mask)
        if m.shape != tuple(embedding.original_size):
            raise ValueError(
                f"mask shape {m.shape} does not match the embedded image {tuple(embedding.original_size)}"
            )
        h_lr, w_lr = self.low_res_shape
        h_in, w_in = embedding.input_size
        rh = min(h_lr, max(1, round(h_in * h_lr / self.image_size)))
        rw = min(w_lr, max(1, round(w_in * w_lr / self.image_size)))
        p = resize((m > 0).astype(np.float32), (rh, rw), order=1, anti_aliasing=True)
        out = np.full((h_lr, w_lr), -strength, np.float32)
        out[:rh, :rw] = (2 * strength) * (p - 0.5)
        return out

    def decode_points(self, embedding: Embedding, points, multimask: bool = True,
                      min_score: float | None = None):
        """One positive point per prompt, many prompts at once (segment everything).

        points: ``(B, 2)`` float (row, col) in image pixels. Returns ``(scores, keep, low)``:
        scores ``(B, K)`` float32 tensor of predicted IoUs; keep ``(M, 2)`` int64 tensor of
        ``(prompt, mask)`` pairs whose score is > ``min_score`` (all when None); low ``(M, h, w)``
        float32 tensor of their low-resolution logits (:meth:`upscale_args` maps them to the image).
        Backends override this with a batched decoder; this default decodes prompt by prompt.
        """
        import torch

        self._check_embedding(embedding)
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        preds = [self.predict(embedding, points=p[None], multimask=multimask) for p in pts]
        scores = torch.as_tensor(np.stack([p.scores for p in preds]) if preds else
                                 np.zeros((0, 3 if multimask else 1), np.float32))
        keep = (scores > min_score).nonzero() if min_score is not None else torch.ones_like(scores).nonzero()
        low = torch.as_tensor(np.stack([preds[i].logits[j] for i, j in keep.tolist()])
                              if len(keep) else np.zeros((0, *self.low_res_shape), np.float32))
        return scores, keep, low

    def upscale_args(self, embedding: Embedding) -> tuple[tuple[int, int], tuple[int, int], int]:
        """``(input_size, original_size, padded_size)``: how :func:`~.upscale.upscale_masks` maps
        this model's low-resolution logits of ``embedding`` to the image (SAM: the resized image
        sits in the top-left corner of the square input)."""
        return tuple(embedding.input_size), tuple(embedding.original_size), int(self.image_size)

    def _check_embedding(self, embedding: Embedding) -> None:
        if not isinstance(embedding, Embedding):
            raise TypeError(f"expected an Embedding from model.embed(), got {type(embedding).__name__}")
        mine = (self.name, self.checkpoint_id, self.preprocessing)
        theirs = (embedding.model, embedding.checkpoint_id, embedding.preprocessing)
        if mine != theirs:
            raise ValueError(
                f"this embedding was made by model {embedding.model!r} "
                f"(checkpoint {embedding.checkpoint_id}, {embedding.preprocessing}), not by "
                f"{self.name!r} (checkpoint {self.checkpoint_id}, {self.preprocessing}); "
                "embed the image again with this model"
            )

    @abstractmethod
    def _embed_rgb(self, rgb: np.ndarray) -> Embedding:
        """Encode a validated (H, W, 3) uint8 image."""

    @abstractmethod
    def _predict(self, embedding: Embedding, prompt: Prompt, multimask: bool) -> Prediction:
        """Decode a validated prompt."""
