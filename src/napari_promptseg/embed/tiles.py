"""Huge 2D images in overlapping tiles at the model's pixel scale, embedded only when needed.

A tile is ``model.image_size / pixel_scale`` image pixels square (1024 for SAM, 256 for the demo
model), so it fills the model input at the model's scale: a nucleus keeps its size however large
the image. Tiles are spread evenly, all full-size (the last one is not a sliver), and overlap by
at least ``2 * halo``; their *cores* (each tile cut at the middles of its overlaps) partition the
image.

A prompt is decoded in the tile whose core holds its centre; objects up to ``halo`` pixels from
that core lie wholly inside the tile. A mask that still reaches an inner tile edge (a larger
object), or a box larger than a tile, is decoded again in a window centred on it (squeezed into
the input when larger than a tile), so one prompt always gives one whole mask. Every window goes
through the memory and disk caches (the key is its pixels). Coordinates: ``(row, col)`` image
pixels; regions ``(row0, col0, row1, col1)`` with exclusive ends.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from napari_promptseg.core.geometry import extent
from napari_promptseg.core.image import intensity_window
from napari_promptseg.core.results import Embedding, Prediction, RegionEmbedding
from napari_promptseg.embed.cache import EmbeddingCache, embed_cached

__all__ = ["TILE_FACTOR", "Tile", "TileGrid", "TiledEmbedding", "tile_side", "wants_tiles", "embed_tiles"]

#: ``tiles="auto"``: tile an image whose long side exceeds this many tiles
TILE_FACTOR = 4.0
_MAX_REGIONS = 256  # predictions whose logits can come back as mask_input

Region = tuple[int, int, int, int]


def tile_side(model) -> int:
    """Image pixels per tile side: the model input at the model's pixel scale (1 when unset)."""
    return max(16, int(round(model.image_size / (model.pixel_scale or 1.0))))


def wants_tiles(model, shape, factor: float = TILE_FACTOR) -> bool:
    """Whether an image of ``shape`` ``(H, W, ...)`` is more than ``factor`` tiles long."""
    return max(int(shape[0]), int(shape[1])) > factor * tile_side(model)


@dataclass(frozen=True)
class Tile:
    """One tile: ``box`` and ``core`` as regions (exclusive ends); ``index`` in the grid."""

    index: int
    box: Region
    core: Region


def _starts(n: int, tile: int, halo: int) -> list[int]:
    if n <= tile:
        return [0]
    k = math.ceil((n - tile) / max(1, tile - 2 * halo)) + 1
    return [int(round(v)) for v in np.linspace(0, n - tile, k)]


def _cores(starts: list[int], tile: int, n: int) -> list[tuple[int, int]]:
    cuts = [0] + [(a + tile + b) // 2 for a, b in zip(starts[:-1], starts[1:])] + [n]
    return list(zip(cuts[:-1], cuts[1:]))


class TileGrid:
    """Tiles of ``tile`` pixels over an ``(H, W)`` image with overlaps of at least ``2 * halo``."""

    def __init__(self, shape, tile: int, halo: int) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.tile, self.halo = int(tile), int(halo)
        if self.tile < 16 or not 0 <= 2 * self.halo < self.tile:
            raise ValueError(f"tile must be >= 16 pixels and halo in [0, tile / 2), got tile={tile}, "
                             f"halo={halo}")
        rs, cs = (_starts(n, self.tile, self.halo) for n in self.shape)
        rc, cc = _cores(rs, self.tile, self.shape[0]), _cores(cs, self.tile, self.shape[1])
        self.rows, self.cols = len(rs), len(cs)
        H, W = self.shape
        self.tiles = [Tile(i * len(cs) + j, (r, c, min(r + self.tile, H), min(c + self.tile, W)),
                           (rc[i][0], cc[j][0], rc[i][1], cc[j][1]))
                      for i, r in enumerate(rs) for j, c in enumerate(cs)]

    def __len__(self) -> int:
        return len(self.tiles)

    def at(self, row: float, col: float) -> Tile:
        """The tile whose core holds pixel ``(row, col)`` (clipped into the image)."""
        r = min(max(int(row), 0), self.shape[0] - 1)
        c = min(max(int(col), 0), self.shape[1] - 1)
        for t in self.tiles:
            r0, c0, r1, c1 = t.core
            if r0 <= r < r1 and c0 <= c < c1:
                return t
        raise AssertionError("the cores partition the image")


def _touches_inner_edge(mask: np.ndarray, region: Region, shape) -> bool:
    """Whether ``mask`` (the region's pixels) reaches a side of ``region`` inside the image."""
    r0, c0, r1, c1 = region
    return bool((r0 > 0 and mask[0].any()) or (c0 > 0 and mask[:, 0].any())
                or (r1 < shape[0] and mask[-1].any()) or (c1 < shape[1] and mask[:, -1].any()))


class TiledEmbedding(RegionEmbedding):
    """A large 2D image for one model, embedded tile by tile on demand.

    image: ``(H, W)`` or ``(H, W, 3|4)`` array-like (numpy, zarr, dask: only the windows needed
    are read). contrast_limits: one window for every tile (default: robust percentiles of the
    whole image, subsampled). tile / halo: pixels (default :func:`tile_side` and an eighth of the
    tile). cache / disk: embedding caches (one key per window). on_embed(text): called before
    a window not in the memory cache is embedded (e.g. ``"embedding tile 3 of 40"``). grow: how
    many times a mask reaching an inner window edge is decoded again in a larger window (0: never).
    regions: the memory of which window each prediction's logits belong to, shared by the planes
    of a stack (one grid): logits of plane k given as ``mask_input`` on plane k + 1 are decoded
    in the same window (propagation).
    ``model.predict(tiled, ...)`` and ``ps.segment_everything(model, tiled)`` take it like an
    :class:`~napari_promptseg.core.results.Embedding`; predictions are at the whole image's size.
    """

    def __init__(self, model, image, contrast_limits=None, *, tile: int | None = None,
                 halo: int | None = None, cache: EmbeddingCache | None = None, disk=None,
                 on_embed: Callable[[str], None] | None = None, grow: int = 2,
                 regions: OrderedDict | None = None) -> None:
        if not hasattr(image, "shape") or len(image.shape) not in (2, 3):
            raise ValueError(f"a tiled image must be 2D (H, W) or (H, W, 3|4), got shape "
                             f"{getattr(image, 'shape', None)}")
        self.model, self.image = model, image
        self.shape = (int(image.shape[0]), int(image.shape[1]))
        side = int(tile) if tile is not None else tile_side(model)
        self.grid = TileGrid(self.shape, side, int(halo) if halo is not None else side // 8)
        dtype = np.dtype(image.dtype)
        if contrast_limits is None and dtype not in (np.uint8, np.bool_):
            contrast_limits = intensity_window(_sample(image))
        self.contrast_limits = contrast_limits
        self.cache = cache if cache is not None else EmbeddingCache(16)
        self.disk = disk
        self.on_embed = on_embed
        self.grow = max(0, int(grow))
        # logits digest -> the window they belong to (the latest _MAX_REGIONS predictions)
        self._regions: OrderedDict[bytes, Region] = OrderedDict() if regions is None else regions
        self._keys: dict[Region, str] = {}  # cache key of each region embedded so far

    @property
    def original_size(self) -> tuple[int, int]:
        return self.shape

    def __repr__(self) -> str:
        return (f"<TiledEmbedding {self.shape} in {len(self.grid)} tiles of {self.grid.tile} px, "
                f"{self.model.name}>")

    # -- windows ---------------------------------------------------------------------------
    def embedding_of(self, region: Region) -> Embedding:
        """The embedding of the image's ``region`` (from the caches when seen before)."""
        rgb, key = self._input(region)
        emb = self.cache.get(key)
        if emb is not None:
            return emb
        if self.on_embed is not None:
            self.on_embed(self._describe(region))
        return embed_cached(self.model, rgb, None, self.cache, self.disk)

    def _input(self, region: Region) -> tuple[np.ndarray, str]:
        """The region's model input (uint8 RGB) and its embedding cache key."""
        from napari_promptseg.core.image import to_rgb_uint8
        from napari_promptseg.embed.cache import embedding_key

        r0, c0, r1, c1 = region
        rgb = to_rgb_uint8(np.asarray(self.image[r0:r1, c0:c1]), self.contrast_limits)
        key = self._keys[tuple(region)] = embedding_key(self.model, rgb, self.model.input_zoom(rgb.shape[:2]))
        return rgb, key

    def _remember(self, logits, region: Region) -> None:
        self._regions[_digest(logits)] = region
        while len(self._regions) > _MAX_REGIONS:
            self._regions.popitem(last=False)

    def tile_embedding(self, index: int) -> Embedding:
        """Tile ``index``'s embedding."""
        return self.embedding_of(self.grid.tiles[index].box)

    def _describe(self, region: Region) -> str:
        for t in self.grid.tiles:
            if t.box == tuple(region):
                return f"embedding tile {t.index + 1} of {len(self.grid)} (rows {region[0]}-{region[2]}, " \
                       f"columns {region[1]}-{region[3]})"
        return f"embedding a window (rows {region[0]}-{region[2]}, columns {region[1]}-{region[3]})"

    def window_around(self, extent: Region) -> Region:
        """A region centred on ``extent`` (inclusive ends), at least a tile and 1.3x the extent."""
        out = []
        for lo, hi, n in ((extent[0], extent[2], self.shape[0]), (extent[1], extent[3], self.shape[1])):
            side = min(n, max(self.grid.tile, int(math.ceil(1.3 * (hi - lo + 1))) + 2))
            start = int(round((lo + hi + 1) / 2 - side / 2))
            start = min(max(start, 0), n - side)
            out.append((start, start + side))
        return (out[0][0], out[1][0], out[0][1], out[1][1])

    def region_for(self, points=None, labels=None, box=None) -> Region:
        """Where a prompt is decoded: its centre's tile when the prompt fits in that tile with a
        margin, else a window around it (``points`` ``(N, 2)``, ``labels`` 1/0, ``box`` as in predict)."""
        ext = _extent(points, labels, box)
        if ext is None:
            raise ValueError("empty prompt: give at least one positive point or a box")
        t = self.grid.at((ext[0] + ext[2]) / 2, (ext[1] + ext[3]) / 2)
        r0, c0, r1, c1 = t.box
        m = self.grid.halo // 2
        inside = all((
            ext[0] >= r0 + (m if r0 > 0 else 0), ext[1] >= c0 + (m if c0 > 0 else 0),
            ext[2] < r1 - (m if r1 < self.shape[0] else 0), ext[3] < c1 - (m if c1 < self.shape[1] else 0)))
        return t.box if inside else self.window_around(ext)

    def pending(self, points=None, labels=None, box=None) -> str | None:
        """What decoding this prompt will embed first (``"embedding tile 3 of 40 (...)"``), or None
        when its tile is in the memory cache (a guess for a mask that will grow: the first window)."""
        pts = None if points is None or not len(points) else np.asarray(points, np.float64).reshape(-1, 2)
        if pts is None:
            lab = None
        else:
            lab = np.ones(len(pts)) if labels is None else np.asarray(labels).reshape(-1)
        if _extent(pts, lab, box) is None:
            return None
        region = self.region_for(pts, lab, box)
        key = self._keys.get(tuple(region))  # no pixels read or hashed: this runs on the UI thread
        return None if key is not None and key in self.cache else self._describe(region)

    # -- decoding ----------------------------------------------------------------------------
    def predict(self, points=None, labels=None, box=None, mask_input=None,
                multimask: bool = True) -> Prediction:
        """Masks for one object, as :meth:`~napari_promptseg.PromptableModel.predict`, with
        ``(K, H, W)`` masks of the whole image and the window it was decoded in as ``.region``.

        mask_input: logits of an earlier prediction of this tiled image (decoded again in that
        prediction's window). A mask reaching an inner window edge is decoded again in a window
        around it (:attr:`grow` times at most).

        Memory: ``pred.masks`` and ``pred.mask(i)`` are whole-image arrays (made on request, the
        :class:`Prediction` contract); on a huge image use ``pred.region`` (the window,
        ``(row0, col0, row1, col1)``, ends exclusive) and ``pred.window_mask(i)`` (that window's
        pixels) instead, as ``ps.segment`` does to paste each object into its labels."""
        pts = None if points is None else np.asarray(points, np.float64).reshape(-1, 2)
        lab = None if labels is None else np.asarray(labels).reshape(-1)
        if pts is not None and lab is None:
            lab = np.ones(len(pts), np.int32)
        if pts is not None and lab is not None and len(lab) != len(pts):
            raise ValueError(f"labels has {len(lab)} entries for {len(pts)} points")
        fixed = None if mask_input is None else self._regions.get(_digest(mask_input))
        region = fixed or self.region_for(pts, lab, box)
        for attempt in range(self.grow + 1):
            pred = self._predict_in(region, pts, lab, box, mask_input, multimask)
            if fixed is not None or attempt == self.grow:
                break
            best = pred.window_mask(pred.best)
            if not best.any() or not _touches_inner_edge(best, region, self.shape):
                break
            r0, c0, r1, c1 = extent(best)
            ext = (region[0] + r0, region[1] + c0, region[0] + r1, region[1] + c1)
            bigger = self.window_around(ext)
            if bigger == region:
                break
            region = bigger
        for i in range(len(pred.scores)):
            self._remember(pred.logits[i], region)
        return pred

    def _predict_in(self, region, pts, lab, box, mask_input, multimask):
        r0, c0, r1, c1 = region
        emb = self.embedding_of(region)
        p = lb = b = None
        if pts is not None and len(pts):
            local = pts - (r0, c0)
            ok = (local[:, 0] >= 0) & (local[:, 0] < r1 - r0) & (local[:, 1] >= 0) & (local[:, 1] < c1 - c0)
            ok |= lab == 1  # positive points are inside by construction; keep them to get the error otherwise
            p, lb = local[ok], lab[ok]
            if not len(p):
                p = lb = None
        if box is not None:
            b = np.asarray(box, np.float64).reshape(4) - (r0, c0, r0, c0)
        inner = self.model.predict(emb, points=p, labels=lb, box=b, mask_input=mask_input,
                                   multimask=multimask)
        return _TiledPrediction(inner, region, self.shape)

    def mask_prompt(self, mask, strength: float = 8.0) -> np.ndarray:
        """:meth:`~napari_promptseg.PromptableModel.mask_prompt` for a ``(H, W)`` mask of the image
        (encoded in the window around it; :meth:`predict` decodes it there)."""
        m = np.asarray(mask, bool)
        if m.shape != self.shape:
            raise ValueError(f"mask shape {m.shape} does not match the tiled image {self.shape}")
        ext = extent(m)
        if ext is None:
            region = self.grid.tiles[0].box
        else:
            t = self.grid.at((ext[0] + ext[2]) / 2, (ext[1] + ext[3]) / 2)
            region = t.box if _contains(t.box, ext) else self.window_around(ext)
        r0, c0, r1, c1 = region
        logits = self.model.mask_prompt(self.embedding_of(region), m[r0:r1, c0:c1], strength)
        self._remember(logits, region)
        return logits

    def tile_embeddings(self) -> Iterator[tuple[Tile, Embedding]]:
        """Every tile with its embedding, in grid order (embedded as the iteration reaches it)."""
        for t in self.grid.tiles:
            yield t, self.embedding_of(t.box)


class _TiledPrediction(Prediction):
    """A window's prediction seen at the whole image's size (masks pasted into ``(H, W)``)."""

    def __init__(self, inner: Prediction, region: Region, shape) -> None:
        self.inner, self.region, self.shape = inner, tuple(int(v) for v in region), tuple(shape)
        super().__init__(scores=inner.scores, logits=inner.logits, upscale=self._paste)

    def window_mask(self, i: int) -> np.ndarray:
        """Candidate ``i`` inside :attr:`region` only."""
        return self.inner.mask(i)

    def _paste(self, indices) -> list[np.ndarray]:
        """One whole-image ``(H, W)`` mask per index, each pasted from its window on its own (no
        ``(K, H, W)`` block: ``pred.mask(i)`` makes one plane, only ``pred.masks`` stacks K)."""
        r0, c0, r1, c1 = self.region
        out = []
        for i in indices:
            m = np.zeros(self.shape, bool)
            m[r0:r1, c0:c1] = self.inner.mask(i)
            out.append(m)
        return out


def _digest(logits) -> bytes:
    import xxhash

    return xxhash.xxh3_128(np.ascontiguousarray(np.asarray(logits, np.float32).reshape(-1)).data).digest()


def _contains(region: Region, ext) -> bool:
    return region[0] <= ext[0] and region[1] <= ext[1] and ext[2] < region[2] and ext[3] < region[3]


def _extent(points, labels, box):
    """Inclusive ``(row0, col0, row1, col1)`` of the positive points and the box, or None."""
    rc = []
    if points is not None and len(points):
        pos = np.asarray(points, np.float64)[np.asarray(labels).reshape(-1) == 1]
        rc.extend(pos.tolist())
    if box is not None:
        b = np.asarray(box, np.float64).reshape(4)
        rc.extend([[b[0], b[1]], [b[2], b[3]]])
    if not rc:
        return None
    a = np.asarray(rc)
    lo, hi = np.floor(a.min(0)).astype(int), np.floor(a.max(0)).astype(int)
    return (int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))


def _sample(image, target: int = 1 << 18) -> np.ndarray:
    """A strided subsample of about ``target`` pixels (reads little of a lazy array; 262k pixels
    put ~500 in each 0.2% tail of the window's percentiles, and their sort costs ~2 ms where 1M
    cost ~10 ms, a third of a demo-model tile's embedding)."""
    h, w = int(image.shape[0]), int(image.shape[1])
    step = max(1, int(math.sqrt(h * w / target)))
    return np.asarray(image[::step, ::step])


def embed_tiles(model, image, contrast_limits=None, **kwargs) -> TiledEmbedding:
    """A :class:`TiledEmbedding` of ``image`` (nothing is embedded until a prompt needs it);
    model: a loaded model or a registry name."""
    from napari_promptseg.models import as_model

    return TiledEmbedding(as_model(model), image, contrast_limits, **kwargs)
