"""promptseg: models, downloads and embeddings stores from a shell (a cluster node, a batch job).

Every command prints progress on stderr; a bad input gives one line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from napari_promptseg.cli.commands import EXAMPLES as MORE_EXAMPLES
from napari_promptseg.cli.commands import add_common_options, add_parsers, load_model, say_download, spec_of
from napari_promptseg.cli.errors import USER_ERRORS, UsageError
from napari_promptseg.cli.find import add_parser as add_find_parser
from napari_promptseg.io import guess_rgb, read_image

EXAMPLES = {
    "models": "promptseg models",
    "download": "promptseg download vit_b",
    "embed": "promptseg embed stack.tif --model vit_b --out stack.zarr   # rerun to resume",
}


def _models(args) -> int:
    import napari_promptseg as ps
    from napari_promptseg.models.weights import available_locally

    for spec in ps.list_models():
        here = "local" if available_locally(spec) else "-"
        print(f"{spec.name:24s} {spec.family:5s} {spec.size_mb:8.1f} MB  {here:5s}  {spec.description}")
    return 0


def _download(args) -> int:
    from napari_promptseg.models.weights import WeightsError, fetch_weights

    try:
        path = fetch_weights(spec_of(args.name), progress=True)
    except WeightsError as e:
        print(f"promptseg download: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _embed(args) -> int:
    from tqdm import tqdm

    import napari_promptseg as ps
    from napari_promptseg.embed.store import StoreError

    if args.workers is not None and args.scheduler is not None:
        raise UsageError("--workers and --scheduler exclude each other: --workers N starts N local "
                         "worker processes, --scheduler ADDRESS uses a running cluster")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, not {args.workers}")
    distributed = args.scheduler is not None or (args.workers or 1) > 1  # --workers 1: in-process
    image = read_image(args.input)
    window = tuple(args.window) if args.window else None
    rgb = guess_rgb(tuple(image.shape))  # a png / jpg photo is one RGB image, not 3 gray planes
    user_errors: tuple[type[Exception], ...] = (StoreError,)
    if distributed:  # the client fetches the weights once; each worker loads the model
        from napari_promptseg.embed.distributed import WorkerLoadError, embed_store_distributed_iter
        from napari_promptseg.models.weights import WeightsError

        user_errors += (WorkerLoadError,)
        say_download(args)
        try:
            it = embed_store_distributed_iter(
                args.model, args.input, args.out, checkpoint=args.checkpoint, axis=args.axis,
                window=window, rgb=rgb, device=args.device, workers=args.workers,
                scheduler=args.scheduler)
        except StoreError as e:  # checked here, before any cluster starts
            raise UsageError(str(e)) from None
        except (OSError, ValueError, WeightsError) as e:
            raise UsageError(f"cannot load {args.model}: {e}") from None
    else:
        model = load_model(args)
    try:
        if not distributed:
            it = ps.embed_store_iter(model, image, args.out, axis=args.axis, window=window, rgb=rgb)
        with tqdm(desc="embedding planes", unit="plane", file=sys.stderr) as bar:
            for done, total in it:
                bar.total = total
                bar.n = done
                bar.refresh()
    except user_errors as e:
        raise UsageError(str(e)) from None
    store = ps.open_embeddings(args.out)
    print(f"{args.out}: {len(store)} of {store.n_planes} planes, model {store.model}, window {store.window}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="promptseg", description=__doc__.split("\n")[0],
        epilog="Examples:\n  " + "\n  ".join([*EXAMPLES.values(), *MORE_EXAMPLES.values()]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    m = sub.add_parser("models", help="list the models, and which are in the local cache",
                       epilog=f"Example: {EXAMPLES['models']}")
    m.set_defaults(run=_models)
    d = sub.add_parser("download", help="download a model's checkpoint into the cache (hash-checked)",
                       epilog=f"Example: {EXAMPLES['download']}")
    d.add_argument("name", help="registry name (see `promptseg models`)")
    d.set_defaults(run=_download)
    e = sub.add_parser(
        "embed", help="embed every plane of an image, z-stack, video or T x Z stack into a zarr store",
        description="Embed every plane into one self-describing zarr store (model, checkpoint, window,\n"
                    "axis, shape; float16). Planes already stored are skipped: rerun an interrupted\n"
                    "run to complete it. Open the store with ps.open_embeddings or\n"
                    "ps.propagate(..., embeddings=STORE).\n\n"
                    "With --workers N (N > 1) the planes are embedded by N local worker processes\n"
                    "(dask.distributed), with --scheduler ADDRESS by a running dask cluster (e.g.\n"
                    "dask-jobqueue on SLURM; the input and the store on a shared filesystem). A worker\n"
                    "that dies loses only the planes it was embedding; they are given to another.",
        epilog=f"Example: {EXAMPLES['embed']}\n"
               "  promptseg embed stack.tif --model vit_b --out stack.zarr --workers 4\n"
               "  promptseg embed stack.tif --model vit_b --out stack.zarr --scheduler tcp://node1:8786",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("input", help="tif / ome-tif, png / jpg, npy or zarr")
    add_common_options(e, store=False)
    e.add_argument("--out", required=True, help="the store folder, e.g. stack.zarr")
    e.add_argument("--workers", type=int, default=None, metavar="N",
                   help="embed with N local worker processes sharing the cores (default: in this "
                        "process, as --workers 1)")
    e.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="embed on the running dask cluster at ADDRESS (tcp://host:8786)")
    e.set_defaults(run=_embed)
    add_parsers(sub)
    add_find_parser(sub)
    return p


def main(argv=None) -> int:
    """Run the command line; returns the exit code (2 for a user error)."""
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as e:
        print(f"promptseg {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"promptseg {args.command}: interrupted (a store is valid: rerun to complete it)",
              file=sys.stderr)
        return 130


def _entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _entry()
