"""`promptseg find`: every instance of a concept (a noun phrase, example boxes) in images, stacks
and folders, with SAM 3 (:func:`~napari_promptseg.find`, :func:`~napari_promptseg.find_stack`).

Exemplar boxes come from a JSON file: ``[[row0, col0, row1, col1], ...]`` (positive boxes) or
``{"exemplars": [...], "negative": [...]}``, in image (plane) pixels as napari shows them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from napari_promptseg.cli.commands import _inputs, add_common_options, label_each, load_model, out_folder
from napari_promptseg.cli.errors import UsageError

__all__ = ["run_find", "add_parser", "read_boxes", "EXAMPLE"]

EXAMPLE = "promptseg find images/ stack.tif --text nucleus [--exemplars boxes.json] --out labels/"


def read_boxes(path: str | None) -> tuple[list, list]:
    """``(exemplars, negative)`` box lists from a JSON file (see the module); None: no boxes."""
    if path is None:
        return [], []
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"--exemplars {path}: cannot read it as JSON ({e})") from None
    if isinstance(data, dict):
        unknown = set(data) - {"exemplars", "negative"}
        if unknown or not data:
            raise UsageError(f"--exemplars {path}: expected the keys 'exemplars' and/or 'negative' (lists "
                             f"of [row0, col0, row1, col1] boxes), got {sorted(data)}")
        pos, neg = data.get("exemplars", []), data.get("negative", [])
    else:
        pos, neg = data, []
    for name, boxes in (("exemplars", pos), ("negative", neg)):
        arr = np.asarray(boxes, dtype=object)
        if len(boxes) and (arr.ndim != 2 or arr.shape[1] != 4):
            raise UsageError(f"--exemplars {path}: {name} must be boxes [row0, col0, row1, col1]: shape "
                             f"(N, 4), got {arr.shape}")
    return pos, neg


def _threshold(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"--threshold must be in [0, 1], got {value}")
    return value


def run_find(args) -> int:
    """Every instance of the concept in every input into ``OUT/<name>_labels.<format>`` (a stack:
    every plane, instances linked into 3D ids); existing outputs are skipped unless --overwrite."""
    from tqdm import tqdm

    import napari_promptseg as ps

    if args.text is None and args.exemplars is None:
        raise UsageError("give --text (a noun phrase such as 'nucleus'), --exemplars (a JSON file of "
                         "boxes), or both")
    threshold = _threshold(args.threshold)
    pos, neg = read_boxes(args.exemplars)
    if args.text is None and not pos:
        raise UsageError(f"--exemplars {args.exemplars} holds no positive box: add 'exemplars' or give "
                         "--text")
    files, out_dir = _inputs(args.inputs), out_folder(args)
    model = load_model(args)
    if not getattr(model, "supports_concepts", False):
        raise UsageError(f"{args.model} cannot find concepts: use --model sam3")
    kw = {"text": args.text, "exemplars": pos or None, "negative": neg or None, "threshold": threshold}

    def segment(f, image, spatial: int, axis: int, window, labels) -> int:
        if spatial == 2:  # a huge image: tile by tile, its labels painted block by block
            bar = tqdm(desc=f.name, unit="tile", file=sys.stderr, leave=False)

            def tick(done, total):
                bar.total = total
                bar.update(done - bar.n)

            found = ps.find(model, image, contrast_limits=window, out=labels, progress=tick, **kw)
            bar.close()
            return len(found)
        bar = tqdm(total=labels.shape[axis], desc=f.name, unit="plane", file=sys.stderr, leave=False)
        ps.find_stack(model, image, axis=axis, contrast_limits=window, out=labels,
                      progress=lambda d, t: bar.update(d - bar.n), **kw)
        bar.close()
        return int(max(np.max(labels[(slice(None),) * axis + (k,)]) for k in range(labels.shape[axis])))

    return label_each(args, files, out_dir, "find", "instance(s)", segment)


def add_parser(sub) -> None:
    """Add the ``find`` sub-command to ``sub``."""
    f = sub.add_parser(
        "find", help="every instance of a concept (a word, example boxes) in images and stacks (SAM 3)",
        description="Every instance of a concept, given as a short noun phrase (--text nucleus) and/or "
                    "example boxes (--exemplars boxes.json: [[row0, col0, row1, col1], ...] or "
                    "{\"exemplars\": [...], \"negative\": [...]}, in image pixels), with SAM 3, into "
                    "OUT/<name>_labels.tif; a stack plane by plane with instances linked across planes "
                    "(3D ids; boxes prompt every plane at their place). Labels already in OUT are "
                    "skipped, so an interrupted batch resumes. The sam3 checkpoint is gated on Hugging "
                    "Face: request access and `hf auth login`, or pass --checkpoint.",
        epilog=f"Example: {EXAMPLE}")
    f.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and folders of images")
    f.add_argument("--text", default=None, help="a short noun phrase: 'nucleus', 'mitotic cell'")
    f.add_argument("--exemplars", default=None, metavar="JSON", help="a JSON file of example boxes")
    f.add_argument("--threshold", type=float, default=0.5, help="keep instances scoring above it (0..1)")
    f.add_argument("--out", required=True, help="output folder")
    f.add_argument("--format", choices=("tif", "zarr"), default="tif", help="labels format (default tif)")
    f.add_argument("--overwrite", action="store_true", help="recompute labels that exist in OUT")
    add_common_options(f, store=False)
    for a in f._actions:
        if a.dest == "model":
            a.required, a.default = False, "sam3"
            a.help = "registry name (default sam3)"
    f.set_defaults(run=run_find)
