"""The backend protocol: what every model family implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from napari_promptseg.core.image import to_rgb_uint8
from napari_promptseg.core.prompts import Prompt, make_prompt
from napari_promptseg.core.results import Embedding, Prediction, RegionEmbedding
from napari_promptseg.models.generator_defaults import GENERATOR_DEFAULTS
from napari_promptseg.models.registry import ModelSpec

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
    #: which of Meta's automatic mask generators :func:`~napari_promptseg.segment_everything`
    #: follows: ``"sam"`` (``SamAutomaticMaskGenerator``) or ``"sam2"`` (``SAM2AutomaticMaskGenerator``)
    everything_generator: str = "sam"

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

    @property
    def pixel_scale(self) -> float | None:
        """Model-input pixels per image pixel this model works best at (``ModelSpec.pixel_scale``);
        None: the image's long side fills the input (official SAM and SAM 2, as Meta's predictors)."""
        return self.spec.pixel_scale

    @property
    def everything_defaults(self) -> dict[str, object]:
        """Segment-everything parameters used when not given: the defaults of Meta's generator for
        this family (:attr:`everything_generator`: :data:`~napari_promptseg.EVERYTHING_DEFAULTS` or
        :data:`~napari_promptseg.SAM2_EVERYTHING_DEFAULTS`) with this model's ``ModelSpec.everything``."""
        return {**GENERATOR_DEFAULTS[self.everything_generator], **dict(self.spec.everything)}

    def input_zoom(self, shape: tuple[int, int], zoom: float | str | None = None) -> float | None:
        """The zoom :meth:`embed` uses for an image of ``shape`` ``(H, W)``: None = fit the long
        side to the input (Meta's resize, exactly); a float = input pixels per image pixel.

        zoom: None = the model's :attr:`pixel_scale`, capped where the image would not fit (then
        fit: a large image is squeezed, as Meta does; :func:`~napari_promptseg.embed.tiles.embed_tiles`
        keeps the scale); ``"fit"``; or a number, which must keep the image inside the input.
        """
        h, w = (int(v) for v in shape[:2])
        fit = self.image_size / max(h, w)
        explicit = zoom is not None
        zoom = self.pixel_scale if zoom is None else zoom
        if zoom is None or (isinstance(zoom, str) and zoom == "fit"):
            return None
        try:
            z = float(zoom)
        except (TypeError, ValueError):
            raise ValueError(f"zoom must be a positive number or 'fit', got {zoom!r}") from None
        if not (np.isfinite(z) and z > 0):
            raise ValueError(f"zoom must be a positive number or 'fit', got {zoom!r}")
        if int(max(h, w) * z + 0.5) > self.image_size:
            if explicit:
                raise ValueError(
                    f"at zoom {z:g} the image ({h}, {w}) would be {int(h * z + 0.5)} x {int(w * z + 0.5)} "
                    f"pixels, larger than the model's {self.image_size}-pixel input; use zoom <= "
                    f"{fit:.4g}, zoom='fit', or tiles (ps.embed_tiles)"
                )
            return None
        return None if int(max(h, w) * z + 0.5) == self.image_size else z

    def embed(self, image, contrast_limits: tuple[float, float] | None = None,
              zoom: float | str | None = None) -> Embedding:
        """Encode ``image`` (H, W) or (H, W, 1|3|4) of any real dtype.

        uint8 RGB goes to the model unchanged; uint8 gray too unless ``contrast_limits`` other than
        ``(0, 255)`` are given; other dtypes through the ``contrast_limits`` window (default:
        robust percentiles). For a stack, pass the stack's window for every slice.
        zoom: how the image is resized into the square input (:meth:`input_zoom`): by default at
        the model's :attr:`pixel_scale` (a small image is padded, not blown up), else its long
        side fills the input.
        """
        rgb = to_rgb_uint8(image, contrast_limits)
        z = self.input_zoom(rgb.shape[:2], zoom)
        return self._embed_rgb(rgb) if z is None else self._embed_rgb(rgb, z)

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
        A :class:`~napari_promptseg.embed.tiles.TiledEmbedding` decodes in the tile the prompt needs.
        """
        if isinstance(embedding, RegionEmbedding):
            self.check_tiled(embedding)
            return embedding.predict(points, labels, box, mask_input, multimask)
        self.check_embedding(embedding)
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

        if isinstance(embedding, RegionEmbedding):
            self.check_tiled(embedding)
            return embedding.mask_prompt(mask, strength)
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
                      min_score: float | None = None, mask_input=None):
        """One positive point per prompt, many prompts at once (segment everything).

        points: ``(B, 2)`` float (row, col) in image pixels; mask_input: None, or ``(B, h, w)``
        low-resolution logits, one mask prompt per point. Returns numpy ``(scores, keep, low)``:
        scores ``(B, K)`` float32 predicted IoUs; keep ``(M, 2)`` int64 ``(prompt, mask)`` pairs
        whose score is > ``min_score`` (all when None); low ``(M, h, w)`` float32 their
        low-resolution logits (:meth:`upscale_args` maps them to the image). Backends override this
        with a batched decoder; this default decodes prompt by prompt.
        """
        import torch

        from napari_promptseg.models.batching import decode_in_batches, passing

        self.check_embedding(embedding)
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        masks = [None] * len(pts) if mask_input is None else [np.asarray(m, np.float32) for m in mask_input]

        def one(s: int, _stop: int):
            pred = self.predict(embedding, points=pts[s][None], multimask=multimask, mask_input=masks[s])
            iou = torch.as_tensor(pred.scores)[None]
            keep = passing(iou, min_score).nonzero()
            return iou, keep, torch.as_tensor(pred.logits)[keep[:, 1]]

        return decode_in_batches(len(pts), 1, one, 3 if multimask else 1, self.low_res_shape)

    def upscale_args(self, embedding: Embedding) -> tuple[tuple[int, int], tuple[int, int], int]:
        """``(input_size, original_size, padded_size)``: how :func:`~.upscale.upscale_masks` maps
        this model's low-resolution logits of ``embedding`` to the image (SAM: the resized image
        sits in the top-left corner of the square input)."""
        return tuple(embedding.input_size), tuple(embedding.original_size), int(self.image_size)

    def check_tiled(self, tiled) -> None:
        """ValueError unless the tiled embedding ``tiled`` was made with this model."""
        if tiled.model is not self:
            raise ValueError(f"this tiled embedding is for model {tiled.model.name!r}, not for this "
                             f"{self.name!r}; make one with ps.embed_tiles(model, image)")

    def check_embedding(self, embedding: Embedding) -> None:
        """TypeError / ValueError unless ``embedding`` was made by this model (name, checkpoint,
        preprocessing)."""
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
    def _embed_rgb(self, rgb: np.ndarray, zoom: float | None = None) -> Embedding:
        """Encode a validated (H, W, 3) uint8 image at ``zoom`` (None: the long side fills the input)."""

    @abstractmethod
    def _predict(self, embedding: Embedding, prompt: Prompt, multimask: bool) -> Prediction:
        """Decode a validated prompt."""
