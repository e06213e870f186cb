"""The `promptseg segment`, `propagate` and `everything` commands (argparse namespaces in, exit
codes out). Bad input raises :class:`~.io.UsageError` (one line, exit code 2).

A ``.zarr`` output is written plane by plane (block by block for a tiled 2D image) into a zarr
array on disk, so memory stays bounded by a few planes however large the input; a ``.tif`` output
is built in memory (the whole labels) and written at the end (:func:`~napari_promptseg.io.labels_output`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from napari_promptseg.cli.errors import UsageError
from napari_promptseg.core.image import stack_window
from napari_promptseg.io import SUFFIXES, LabelPlanes, check_labels_path, guess_rgb, labels_output, read_image

__all__ = ["spec_of", "say_download", "load_model", "run_segment", "run_propagate", "run_everything",
           "everything_params"]


def spec_of(name: str):
    """The registry's ModelSpec for ``name``; an unknown name is a UsageError."""
    from napari_promptseg.models.registry import get_spec

    try:
        return get_spec(name)
    except (KeyError, ValueError) as e:
        raise UsageError(str(e).strip("'\"")) from None


def say_download(args) -> None:
    """Say on stderr that ``args.model`` is about to be downloaded (no ``--checkpoint``, not cached)."""
    from napari_promptseg.models.weights import available_locally

    if args.checkpoint is None and not available_locally(spec_of(args.model)):
        print(f"promptseg: {args.model} is not downloaded yet: downloading", file=sys.stderr)


def load_model(args):
    """The model named by ``args.model`` (``args.checkpoint``, ``args.device``); a missing
    checkpoint is downloaded (said on stderr), an unknown name or a bad file is a UsageError."""
    import napari_promptseg as ps
    from napari_promptseg.models.weights import WeightsError

    say_download(args)
    try:
        return ps.load_model(args.model, checkpoint=args.checkpoint, device=args.device)
    except (OSError, ValueError, WeightsError) as e:
        raise UsageError(f"cannot load {args.model}: {e}") from None


def _layout(image, axis: int) -> tuple[bool, int, int]:
    """``(rgb, non-channel dims, axis)`` of an input image: 2D (gray or RGB) or a stack."""
    rgb = guess_rgb(image.shape)
    spatial = image.ndim - rgb
    if spatial == 2:
        return rgb, 2, 0
    if spatial != 3:
        raise UsageError(f"an image of shape {tuple(image.shape)} is neither 2D nor a stack (N, H, W"
                         f"{'' if not rgb else ', C'}); T x Z stacks: use `promptseg embed`")
    if not -3 <= axis < 3:
        raise UsageError(f"axis {axis} does not exist: the image has 3 non-channel axes (shape "
                         f"{tuple(image.shape)}); use 0..2")
    return rgb, 3, axis % 3


def _plane(image, axis: int, k: int) -> np.ndarray:
    return np.asarray(image[(slice(None),) * axis + (k,)])


def _ids(labels, axis: int | None, k: int = 0) -> set[int]:
    """The ids on plane ``k`` across ``axis`` of ``labels`` (None: a 2D array), read in bands of
    rows (about 4M pixels each), never a whole huge plane at once."""
    rows = [d for d in range(labels.ndim) if d != axis][0]
    width = int(np.prod([labels.shape[d] for d in range(labels.ndim) if d not in (axis, rows)]))
    band = max(1, (1 << 22) // max(1, width))
    found: set[int] = set()
    for r0 in range(0, labels.shape[rows], band):
        key: list = [slice(None)] * labels.ndim
        key[rows] = slice(r0, r0 + band)
        if axis is not None:
            key[axis] = k
        found.update(np.unique(np.asarray(labels[tuple(key)])).tolist())
    return found


def _window(args, image, rgb: bool, spatial: int, axis: int):
    if args.window:
        return tuple(args.window)
    if spatial == 3 and np.dtype(image.dtype) not in (np.uint8, np.bool_):
        return stack_window(image, rgb, (axis,))  # as ps.propagate and stores
    return None


def _store(args, model, image, axis: int):
    if not getattr(args, "embeddings", None):
        return None
    import napari_promptseg as ps

    try:
        store = ps.open_embeddings(args.embeddings, device=model.device)
        store.check(model, tuple(image.shape), axis)
    except ps.StoreError as e:
        raise UsageError(str(e)) from None
    if args.window and tuple(args.window) != store.window:
        raise UsageError(f"--window {tuple(args.window)} differs from the store's window {store.window}: "
                         "leave --window out to use the store")
    return store


def run_segment(args) -> int:
    """One mask per prompted object on its plane; the labels have the image's non-channel shape."""
    import napari_promptseg as ps
    from napari_promptseg.cli.prompt_files import read_prompts

    image = read_image(args.input)
    rgb, spatial, axis = _layout(image, args.axis)
    prompts = read_prompts(args.prompts, spatial, axis)
    out_path = check_labels_path(args.out)
    model = load_model(args)
    store = _store(args, model, image, axis)
    window = None if store is not None else _window(args, image, rgb, spatial, axis)
    n = image.shape[axis] if spatial == 3 else 1
    for k in prompts:
        if not 0 <= k < n:
            raise UsageError(f"{args.prompts}: plane {k} is outside the image's {n} planes (axis {axis})")
    shape = tuple(image.shape[:3] if spatial == 3 else image.shape[:2])
    planes_axis = axis if spatial == 3 else None
    with labels_output(out_path, shape, axis=planes_axis) as labels:
        try:
            ps.segment(model, image, prompts if spatial == 3 else prompts[0], axis=axis,
                       contrast_limits=window, embeddings=store, skip_empty=True, out=labels)
        except ps.StoreError as e:
            raise UsageError(str(e)) from None
        except (TypeError, ValueError) as e:
            raise UsageError(f"{args.prompts}: {e}") from None
        empty, ids = 0, set()
        for k in sorted(prompts):  # only the prompted planes hold labels
            found = _ids(labels, planes_axis, k)
            ids |= found
            for oid in sorted(prompts[k]):
                if oid not in found:
                    where = f"plane {k}, object {oid}" if spatial == 3 else f"object {oid}"
                    print(f"promptseg segment: {where}: the prompt gave an empty mask: skipped",
                          file=sys.stderr)
                    empty += 1
    n_obj = len(ids - {0})
    print(f"{out_path}: {n_obj} object(s) on {len(prompts)} plane(s)"
          + (f"; {empty} prompt(s) gave no mask" if empty else ""))
    return 0


def run_propagate(args) -> int:
    """Objects prompted on some planes, followed through the stack both ways (ps.propagate)."""
    from tqdm import tqdm

    import napari_promptseg as ps
    from napari_promptseg.cli.prompt_files import read_prompts

    image = read_image(args.input)
    rgb, spatial, axis = _layout(image, args.axis)
    if spatial != 3:
        raise UsageError(f"propagate needs a stack or a video (N, H, W[, C]); {args.input} is a 2D image "
                         f"of shape {tuple(image.shape)}: use `promptseg segment`")
    prompts = read_prompts(args.prompts, spatial, axis)
    out_path = check_labels_path(args.out)
    model = load_model(args)
    store = _store(args, model, image, axis)
    window = None if store is not None else _window(args, image, rgb, spatial, axis)
    bars = []  # made at the first step: a refusal before any work prints one line only

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(desc="propagating", unit="plane", total=total, file=sys.stderr))
        bars[0].n = done
        bars[0].refresh()

    n = image.shape[axis]
    with labels_output(out_path, tuple(image.shape[:3]), axis=axis) as labels:
        try:
            options = {"auto": None, "prompt": ps.PromptPropagation(), "memory": ps.MemoryTracking()}
            ps.propagate(model, image, prompts, axis=axis, options=options[args.method],
                         contrast_limits=window, embeddings=store, progress=progress, out=labels)
        except ps.StoreError as e:
            raise UsageError(str(e)) from None
        except ValueError as e:
            raise UsageError(f"{args.prompts}: {e}") from None
        finally:
            for bar in bars:
                bar.close()
        ids: set[int] = set()
        filled = 0
        for k in range(n):  # the summary, one plane at a time
            found = _ids(labels, axis, k)
            ids |= found
            filled += bool(found - {0})
    print(f"{out_path}: {len(ids - {0})} object(s) on {filled} of {n} planes")
    return 0


def _generator_defaults() -> dict:
    """Both of Meta's generators' parameters (SAM 2's extras are refused for SAM models)."""
    from napari_promptseg.models.generator_defaults import EVERYTHING_DEFAULTS, SAM2_EVERYTHING_DEFAULTS

    return {**EVERYTHING_DEFAULTS, **{k: v for k, v in SAM2_EVERYTHING_DEFAULTS.items()
                                      if k not in EVERYTHING_DEFAULTS}}


def everything_params(args) -> dict:
    """The generator parameters given on the command line (the others keep the model's defaults)."""
    return {k: getattr(args, k) for k in _generator_defaults() if getattr(args, k, None) is not None}


def _inputs(paths) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir() and p.suffix.lower() != ".zarr":
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in SUFFIXES
                           and not q.name.startswith("."))
            if not found:
                raise UsageError(f"{p}: a folder with no image ({', '.join(SUFFIXES)})")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise UsageError(f"{p}: no such file or folder")
    return files


def run_everything(args) -> int:
    """Every object of every image (a stack: of every plane, linked into 3D objects) into
    ``OUT/<name>_labels.<format>``; existing outputs are skipped unless --overwrite."""
    from tqdm import tqdm

    import napari_promptseg as ps
    from napari_promptseg.segmentation.generator import check_params
    from napari_promptseg.segmentation.link3d import link_plane

    files, out_dir = _inputs(args.inputs), out_folder(args)
    params = everything_params(args)
    model = load_model(args)
    try:
        check_params(params, model)
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from None

    def segment(f, image, spatial: int, axis: int, window, labels) -> int:
        if spatial == 2:  # a huge image is tiled: read tile by tile, labels block by block
            return len(ps.segment_everything(model, image, contrast_limits=window, out=labels,
                                             **params).objects)
        planes = LabelPlanes(labels, axis)
        prev, next_id = None, 1
        for k in tqdm(range(labels.shape[axis]), desc=f.name, unit="plane", file=sys.stderr, leave=False):
            found = ps.segment_everything(model, _plane(image, axis, k), contrast_limits=window,
                                          **params).labels
            plane, next_id = link_plane(prev, found, next_id)
            planes.write(k, plane)
            prev = plane
        return next_id - 1

    return label_each(args, files, out_dir, "everything", "object(s)", segment)


def out_folder(args) -> Path:
    """``args.out`` as a folder for per-image labels (made later; a file there is a UsageError)."""
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: --out must be a folder")
    return out_dir


def label_each(args, files: list[Path], out_dir: Path, command: str, what: str, segment) -> int:
    """Fill ``OUT/<name>_labels.<args.format>`` for each input file with ``segment(file, image,
    spatial, axis, window, labels) -> count`` (labels: the output array, image's shape without its
    channel axis, filled by ``segment``); an existing output is skipped unless ``args.overwrite``.
    A file's bad input is said on stderr and the others go on; returns the exit code (1 if any
    failed)."""
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    failed = skipped = 0
    for f in tqdm(files, desc="images", unit="image", file=sys.stderr, disable=len(files) < 2):
        target = out_dir / f"{f.name.split('.')[0]}_labels.{args.format}"
        if target.exists() and not args.overwrite:
            skipped += 1
            continue
        try:
            image = read_image(f)
            rgb, spatial, axis = _layout(image, args.axis)
            window = _window(args, image, rgb, spatial, axis)
            shape = tuple(image.shape[:spatial])
            with labels_output(target, shape, axis=axis if spatial == 3 else None) as labels:
                n = segment(f, image, spatial, axis, window, labels)
        except (UsageError, ValueError) as e:
            print(f"promptseg {command}: {f}: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{f} -> {target}: {n} {what}")
    if skipped:
        print(f"{skipped} image(s) skipped: their labels exist (--overwrite recomputes them)",
              file=sys.stderr)
    return 1 if failed else 0


EXAMPLES = {
    "segment": "promptseg segment cells.tif --model vit_b --prompts points.csv --out cells_labels.tif",
    "propagate": "promptseg propagate stack.tif --model vit_b --prompts seeds.json --axis 0 "
                 "--out stack_labels.zarr [--embeddings stack.zarr]",
    "everything": "promptseg everything images/ more.tif --model vit_b_lm --out labels/ "
                  "--points-per-side 32 --pred-iou-thresh 0.8",
}

_PROMPTS_HELP = ("prompts: .json ({plane: [{\"points\": [[row, col], ...], \"labels\": [1, 0], \"box\": "
                 "[row0, col0, row1, col1]}, ...]}, or a list for a 2D image) or .csv (a napari Points "
                 "layer saved as CSV: axis-0, axis-1, ... and optional label / object columns)")


def add_common_options(p, store: bool = True) -> None:
    p.add_argument("--model", required=True, help="registry name (see `promptseg models`)")
    p.add_argument("--checkpoint", default=None, help="a local checkpoint file: no download")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--axis", type=int, default=0, help="for a stack: the axis of its planes (default 0)")
    p.add_argument("--window", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                   help="intensity window (default: robust percentiles; for a stack the stack's)")
    if store:
        p.add_argument("--embeddings", metavar="STORE", default=None,
                       help="an embeddings store made by `promptseg embed` for this image and model")


def _prompted(p, input_help: str) -> None:
    p.add_argument("input", help=input_help)
    p.add_argument("--prompts", required=True, help="a .json or .csv prompts file")
    p.add_argument("--out", required=True, help="labels file: .tif or .zarr")
    add_common_options(p)


def add_parsers(sub) -> None:
    """Add the segment, propagate and everything sub-commands to ``sub``."""
    import argparse

    s = sub.add_parser(
        "segment", help="masks from point / box prompts on a 2D image or planes of a stack",
        description="One mask per prompted object (the best-scoring candidate; three candidates for a "
                    "single point), written as int32 labels (object ids from the prompts; where two "
                    "objects claim a pixel the lower id keeps it). Huge 2D images are embedded in "
                    "tiles, only those the prompts need. Coordinates: (row, col) data pixels, as in "
                    "napari. " + _PROMPTS_HELP + ".",
        epilog=f"Example: {EXAMPLES['segment']}")
    _prompted(s, "tif / ome-tif, png / jpg, npy or zarr")
    s.set_defaults(run=run_segment)

    p = sub.add_parser(
        "propagate", help="follow prompted objects through a z-stack or video, both ways",
        description="Segment objects prompted on some planes in every plane of a stack or video (SAM: "
                    "mask-to-prompt propagation; SAM 2: memory tracking), both ways from each prompted "
                    "plane. " + _PROMPTS_HELP + ".",
        epilog=f"Example: {EXAMPLES['propagate']}")
    _prompted(p, "a stack (N, H, W) or an RGB video (N, H, W, 3): tif, npy or zarr")
    p.add_argument("--method", choices=("auto", "memory", "prompt"), default="auto",
                   help="memory (SAM 2 models), prompt, or auto (default: memory for SAM 2)")
    p.set_defaults(run=run_propagate)

    e = sub.add_parser(
        "everything", help="segment every object of images and folders (SAM's automatic generator)",
        description="Every object of each image (SAM's automatic mask generator, Meta's parameters) "
                    "into OUT/<name>_labels.tif; a stack plane by plane with objects linked across "
                    "planes by overlap (3D ids); huge 2D images in tiles. Labels already in OUT are "
                    "skipped, so an interrupted batch resumes. Unset parameters keep the model's "
                    "defaults (Meta's, or the model's own).",
        epilog=f"Example: {EXAMPLES['everything']}")
    e.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and folders of images")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--format", choices=("tif", "zarr"), default="tif", help="labels format (default tif)")
    e.add_argument("--overwrite", action="store_true", help="recompute labels that exist in OUT")
    add_common_options(e, store=False)
    g = e.add_argument_group("generator parameters (Meta's names; mask-threshold, use-m2m and "
                             "multimask-output: SAM 2 models only)")
    for name, default in _generator_defaults().items():
        if name == "point_grids":
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            g.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                           help=f"Meta's default: {default}")
            continue
        kind = int if isinstance(default, int) else float
        g.add_argument(flag, dest=name, type=kind, default=None, metavar=kind.__name__.upper(),
                       help=f"Meta's default: {default}")
    e.set_defaults(run=run_everything)
