"""Prompt files for the command line: JSON (points, labels, boxes per plane and object) and CSV
(points as napari's Points layer saves them).

Coordinates are napari's data coordinates: ``(row, col)`` pixels, pixel centres at integers.

JSON, one of::

    [{"points": [[r, c], ...], "labels": [1, 0, ...], "box": [r0, c0, r1, c1]}, ...]
        # a 2D image: objects 1, 2, ... in list order
    {"12": [prompt, ...], "30": [prompt, ...]}
        # a stack: plane index -> objects in list order (the same position is the same object)
    {"12": {"1": prompt, "4": prompt}}
        # plane index -> {object id: prompt}

CSV: a header and one point a row. Coordinates in columns ``axis-0, axis-1[, axis-2, ...]`` (as
napari's *File > Save Selected Layers* writes a Points layer) or ``row, col`` (and ``plane`` for
a stack); optional ``label`` (1 object, 0 background; default 1) and ``object`` (ids; without
it every point is an object of its own). For a stack the coordinate along ``--axis`` is the plane.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path

from napari_promptseg.cli.errors import UsageError

__all__ = ["read_prompts"]

Prompts = dict[int, dict[int, dict]]  # plane -> object id -> prompt dict


def read_prompts(path: str | Path, n_spatial: int, axis: int = 0) -> Prompts:
    """``{plane: {object id: {"points", "labels", "box"}}}`` from a prompts file; plane 0 for a
    2D image. n_spatial: the image's non-channel dimensions (2 or 3); axis: the planes' axis."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such prompts file")
    suffix = p.suffix.lower()
    if suffix == ".json":
        out = _from_json(p, n_spatial)
    elif suffix == ".csv":
        out = _from_csv(p, n_spatial, axis)
    else:
        raise UsageError(f"{p}: prompts must be a .json or .csv file, not {suffix or 'no suffix'}")
    if not any(out.values()):
        raise UsageError(f"{p}: holds no prompt")
    return out


def _int(value, what: str, where: Path) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: {what} must be an integer, got {value!r}") from None
    if f != round(f):
        raise UsageError(f"{where}: {what} must be an integer, got {value!r}")
    return int(round(f))


def _objects(value, where: Path, plane: str) -> dict[int, dict]:
    if isinstance(value, list):
        items = list(enumerate(value, 1))
    elif isinstance(value, Mapping):
        items = [(_int(k, f"an object id{plane}", where), v) for k, v in value.items()]
    else:
        raise UsageError(f"{where}:{plane} expected a list of prompts or {{object id: prompt}}, got "
                         f"{type(value).__name__}")
    out = {}
    for oid, d in items:
        if oid < 1:
            raise UsageError(f"{where}:{plane} object ids must be >= 1, got {oid}")
        if not isinstance(d, Mapping):
            raise UsageError(f"{where}:{plane} a prompt must be an object with \"points\", \"labels\", "
                             f"\"box\", got {d!r}")
        unknown = sorted(set(d) - {"points", "labels", "box"})
        if unknown:
            raise UsageError(f"{where}:{plane} unknown prompt keys {unknown}; use points, labels, box")
        out[oid] = dict(d)
    return out


def _from_json(p: Path, n_spatial: int) -> Prompts:
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{p}: not valid JSON ({e})") from None
    if isinstance(data, list):
        if n_spatial > 2:
            raise UsageError(f"{p}: the image is a stack: say on which plane each prompt lies, "
                             "e.g. {\"12\": [{\"points\": [[60, 80]]}]}")
        return {0: _objects(data, p, "")}
    if not isinstance(data, Mapping):
        raise UsageError(f"{p}: expected a list of prompts or {{plane: prompts}}")
    if n_spatial == 2 and set(data) <= {"points", "labels", "box"}:
        return {0: _objects([data], p, "")}  # one prompt for a 2D image
    return {_int(k, "a plane index", p): _objects(v, p, f" plane {k}:") for k, v in data.items()}


def _from_csv(p: Path, n_spatial: int, axis: int) -> Prompts:
    try:
        with p.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise UsageError(f"{p}: cannot be read as CSV ({e})") from None
    if not rows:
        raise UsageError(f"{p}: no point rows under the header")
    cols = {c.strip().lower(): c for c in rows[0] if c is not None}
    axes = sorted((c for c in cols if c.startswith("axis-")), key=lambda c: int(c[5:]))
    if axes:
        names = [cols[c] for c in axes]
        if len(names) != n_spatial:
            raise UsageError(f"{p}: {len(names)} coordinate columns ({', '.join(names)}) for an image "
                             f"with {n_spatial} non-channel axes")
    elif {"row", "col"} <= set(cols):
        names = ([cols["plane"]] if n_spatial > 2 and "plane" in cols else []) + [cols["row"], cols["col"]]
        if len(names) != n_spatial:
            raise UsageError(f"{p}: the image is a stack: add a 'plane' column")
        axis = 0
    else:
        raise UsageError(f"{p}: needs coordinate columns axis-0, axis-1, ... (napari's Points CSV) or "
                         f"row, col; found {', '.join(rows[0])}")
    out: Prompts = {}
    for i, row in enumerate(rows, 2):
        try:
            coords = [float(row[c]) for c in names]
        except (TypeError, ValueError):
            raise UsageError(f"{p}, line {i}: coordinates must be numbers, got "
                             f"{[row[c] for c in names]}") from None
        if n_spatial > 2:
            plane = _int(round(coords[axis]), f"line {i}'s plane", p)
            rc = [v for j, v in enumerate(coords) if j != axis]
        else:
            plane, rc = 0, coords
        label = _int(row[cols["label"]], f"line {i}'s label", p) if "label" in cols else 1
        if label not in (0, 1):
            raise UsageError(f"{p}, line {i}: label must be 1 (object) or 0 (background), got {label}")
        oid = _int(row[cols["object"]], f"line {i}'s object", p) if "object" in cols else i - 1
        if oid < 1:
            raise UsageError(f"{p}, line {i}: object ids must be >= 1, got {oid}")
        d = out.setdefault(plane, {}).setdefault(oid, {"points": [], "labels": []})
        d["points"].append(rc)
        d["labels"].append(label)
    for plane, objs in out.items():
        for oid, d in objs.items():
            if not any(d["labels"]):
                raise UsageError(f"{p}: object {oid} on plane {plane} has only background points (label 0)")
    return out

