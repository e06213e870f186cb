"""Prompts -> seeds, the one copy of the rules both propagation methods use.

``ps.propagate``'s prompts are ``{slice index: p}`` where ``p`` is an ``(H, W)`` integer labels
image (each non-zero id one object's mask), a list of prompt dicts (object ids 1, 2, ... by
position) or ``{object id: prompt dict}``. :func:`parse_prompts` checks them once;
:func:`seed_masks` decodes the prompt dicts into masks (the prompt method), :func:`seed_tracker`
gives them to SAM 2's tracker as its point, box and mask prompts (the memory method).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from napari_promptseg.core.results import Embedding
from napari_promptseg.segmentation.prompted import decode_prompt, object_prompts

__all__ = ["parse_prompts", "seed_masks", "seed_tracker", "check_seeds"]


Parsed = dict[int, dict[int, Mapping | np.ndarray]]  # slice -> object id -> prompt dict | (H, W) bool mask


def parse_prompts(prompts, n: int, plane_shape: tuple[int, int]) -> Parsed:
    """``{slice: {object id: prompt dict | (H, W) bool mask}}`` from ``ps.propagate``'s prompts
    over ``n`` slices of ``plane_shape`` (negative slice indices count from the end)."""
    if not isinstance(prompts, Mapping) or not prompts:
        raise ValueError(
            "prompts must be a non-empty mapping {slice index: labels image (H, W), or a list of "
            "prompt dicts, or {object id: prompt dict}}"
        )
    out: Parsed = {}
    for k, p in prompts.items():
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
            raise ValueError(f"prompt slice index must be an integer, got {k!r}")
        if not -n <= k < n:
            raise ValueError(f"prompt slice index {k} is out of range for {n} slices")
        k = int(k) % n
        dicts = isinstance(p, (list, tuple)) and all(isinstance(d, Mapping) for d in p)
        if isinstance(p, Mapping) or dicts:
            objs = dict(object_prompts(p, f"slice {k}"))
        else:
            lab = np.asarray(p)
            if lab.dtype.kind not in "iub":
                raise ValueError(f"prompts[{k}]: a labels image must be integers, got dtype {lab.dtype}")
            if lab.shape != tuple(plane_shape):
                raise ValueError(f"prompts[{k}]: labels of shape {lab.shape} do not match the slices "
                                 f"{tuple(plane_shape)}")
            if lab.dtype.kind == "i" and (lab < 0).any():
                raise ValueError(f"prompts[{k}]: labels must be >= 0")
            objs = {int(i): lab == i for i in np.unique(lab) if i != 0}
        if objs:
            out[k] = objs
    return out


def seed_masks(model, embedding_of: Callable[[int], Embedding],
               parsed: Parsed) -> dict[int, dict[int, np.ndarray]]:
    """The seed masks ``{slice: {object id: (H, W) bool}}``: prompt dicts decoded on their slice
    (a lower id keeps a pixel that two claim), masks as given. ValueError when none is left."""
    seeds: dict[int, dict[int, np.ndarray]] = {}
    for k, objs in parsed.items():
        emb = None
        taken = None
        for oid, v in sorted(objs.items()):
            if isinstance(v, Mapping):
                emb = embedding_of(k) if emb is None else emb
                m = decode_prompt(model, emb, v, f"slice {k}, object {oid}")
                taken = np.zeros(m.shape, bool) if taken is None else taken
                m &= ~taken
                taken |= m
            else:
                m = v
            seeds.setdefault(k, {})[oid] = m
    if not seeds:
        raise ValueError("prompts hold no object on any slice")
    return seeds


def seed_tracker(tracker, parsed: Parsed) -> dict[int, dict[int, np.ndarray]]:
    """Give parsed prompts to a :class:`~napari_promptseg.propagation.memory.MemoryTracker` as
    SAM 2's point / box and mask prompts; returns the seed masks ``{frame: {id: mask}}`` (labels:
    the user's masks; prompt dicts: the masks SAM 2 gave)."""
    seeds: dict[int, dict[int, np.ndarray]] = {}
    for k, objs in sorted(parsed.items()):
        for oid, v in sorted(objs.items()):
            if isinstance(v, Mapping):
                try:
                    m = tracker.add_points(k, oid, v.get("points"), v.get("labels"), v.get("box"))
                except ValueError as e:
                    raise ValueError(f"slice {k}, object {oid}: {e}") from None
            else:
                tracker.add_mask(k, oid, v)
                m = v
            seeds.setdefault(k, {})[oid] = m
    if not seeds:
        raise ValueError("prompts hold no object on any slice")
    return seeds


def check_seeds(seeds, n_slices: int) -> tuple[dict[int, dict[int, np.ndarray]], tuple[int, int]]:
    """Validated seeds ``{slice: {object id: (H, W) bool mask}}`` (ids >= 1, non-empty masks of one
    shape) and that shape; ValueError / TypeError naming the bad entry."""
    if not isinstance(n_slices, (int, np.integer)) or isinstance(n_slices, bool) or n_slices < 1:
        raise ValueError(f"n_slices must be a positive integer, got {n_slices!r}")
    if not isinstance(seeds, Mapping):
        raise TypeError("seeds must be a mapping {slice index: {object id: (H, W) bool mask}}")
    out: dict[int, dict[int, np.ndarray]] = {}
    shape = None
    for k, objs in seeds.items():
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
            raise ValueError(f"seed slice index must be an integer, got {k!r}")
        k = int(k)
        if not 0 <= k < n_slices:
            raise ValueError(f"seed slice index {k} is out of range for {n_slices} slices")
        if not isinstance(objs, Mapping):
            raise TypeError(f"seeds[{k}] must be a mapping {{object id: (H, W) bool mask}}")
        for o, m in objs.items():
            if not isinstance(o, (int, np.integer)) or isinstance(o, bool) or o < 1:
                raise ValueError(f"object ids must be positive integers, got {o!r} on slice {k}")
            m = np.asarray(m)
            if m.ndim != 2:
                raise ValueError(
                    f"the seed mask of object {o} on slice {k} must be 2D (H, W), got shape {m.shape}"
                )
            if shape is None:
                shape = m.shape
            elif m.shape != shape:
                raise ValueError(
                    f"the seed mask of object {o} on slice {k} has shape {m.shape}, others {shape}"
                )
            m = m.astype(bool)
            if not m.any():
                raise ValueError(f"the seed mask of object {o} on slice {k} is empty")
            out.setdefault(k, {})[int(o)] = m
    if not out:
        raise ValueError("no seeds: give at least one object mask on one slice")
    return out, shape


