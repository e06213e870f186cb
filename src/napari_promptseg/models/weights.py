"""Checkpoint download and cache.

Files land in ``<cache>/weights/<model name>.<ext>``, where ``<cache>`` is ``$PROMPTSEG_CACHE_DIR``
or the platform's user cache folder. Downloads go through pooch: the file is streamed to a
temporary name in the same folder, its hash is checked, and only then is it moved into place, so an
interrupted or corrupt transfer never leaves a file that looks valid. ``PROMPTSEG_OFFLINE=1``
forbids any network access (clusters, air-gapped machines).

Weights that ship inside the package (``ModelSpec.package_file``, the demo model) are read in
place: never downloaded, available offline, checked against the registry hash once per process.

Weights on the Hugging Face Hub (SAM 3, gated) go through ``huggingface_hub.hf_hub_download`` with
the user's token (``hf auth login`` or ``HF_TOKEN``) into the Hub's own cache, which checks them;
``PROMPTSEG_OFFLINE=1`` then reads that cache only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from napari_promptseg.models.registry import DEMO_MODEL, REGISTRY, ModelSpec

__all__ = [
    "WeightsError", "cache_dir", "weights_path", "fetch_weights", "ProgressCallback", "packaged_path",
    "available_locally", "default_model_name", "hf_location",
]

ProgressCallback = Callable[[int, int], None]
"""``callback(bytes_done, bytes_total)``; ``bytes_total`` is 0 when the server does not say.
Raising inside the callback cancels the download (nothing is left in the cache)."""


class WeightsError(RuntimeError):
    """A checkpoint could not be downloaded, verified or read."""


def cache_dir() -> Path:
    """Root of the promptseg cache (``$PROMPTSEG_CACHE_DIR`` overrides the platform default)."""
    env = os.environ.get("PROMPTSEG_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-promptseg"))


def weights_path(spec: ModelSpec) -> Path:
    """Where the checkpoint of ``spec`` lives (or will live): the cache, or inside the package."""
    if spec.packaged:
        return packaged_path(spec)
    return cache_dir() / "weights" / spec.filename


def packaged_path(spec: ModelSpec) -> Path:
    """Path of weights that ship inside the package (``spec.package_file``)."""
    from importlib.resources import files

    return Path(str(files("napari_promptseg").joinpath(spec.package_file)))


_PACKAGED_OK: set[tuple[str, int, int, str]] = set()


def _check_packaged(spec: ModelSpec) -> Path:
    import hashlib

    path = packaged_path(spec)
    if not path.is_file():
        raise WeightsError(
            f"the weights of model {spec.name!r} should ship with napari-promptseg at {path} but "
            "are missing; reinstall the package (pip install --force-reinstall napari-promptseg)"
        )
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, spec.known_hash)
    if key not in _PACKAGED_OK:
        algo, digest = spec.known_hash.split(":", 1)
        if getattr(hashlib, algo)(path.read_bytes()).hexdigest() != digest:
            raise WeightsError(
                f"the packaged weights {path} do not match the registry hash of model {spec.name!r} "
                f"({spec.known_hash}); reinstall the package, or after re-exporting run "
                "`python -m napari_promptseg.training.export CHECKPOINT --update-registry`"
            )
        _PACKAGED_OK.add(key)
    return path


def available_locally(spec: ModelSpec) -> bool:
    """True when ``spec``'s weights can be loaded without the network (packaged, or in the
    cache and verified before). Cheap: never hashes a large file."""
    if spec.packaged:
        return packaged_path(spec).is_file()
    path = cache_dir() / "weights" / spec.filename
    return path.is_file() and _verified(path, spec.known_hash)


def default_model_name() -> str:
    """The model to use when the user has not picked one: the first registry model whose
    verified weights are already in the local cache, else the packaged demo model (offline)."""
    for spec in REGISTRY.values():
        if not spec.packaged and available_locally(spec):
            return spec.name
    return DEMO_MODEL


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp(path: Path, known_hash: str) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "hash": known_hash}


def _verified(path: Path, known_hash: str) -> bool:
    """True when ``path`` was hash-checked before and has not changed since (skips re-hashing GBs)."""
    try:
        return json.loads(_marker(path).read_text()) == _stamp(path, known_hash)
    except (OSError, ValueError):
        return False


class _CallbackProgress:
    """Adapts a ``(done, total)`` callback to the progress-bar object pooch expects."""

    def __init__(self, callback: ProgressCallback):
        self.callback = callback
        self.total = 0
        self.done = 0

    def update(self, n: int) -> None:
        self.done = min(self.done + n, self.total) if self.total else self.done + n
        self.callback(self.done, self.total)

    def reset(self) -> None:
        self.done = 0

    def close(self) -> None:
        pass


def _manual_hint(spec: ModelSpec, path: Path) -> str:
    return (
        f"Download {spec.url} by hand and save it as {path} "
        f"(expected {spec.known_hash}), or pass checkpoint='/path/to/file' to load_model."
    )


_HF = "https://huggingface.co/"


def hf_location(spec: ModelSpec) -> tuple[str, str, str] | None:
    """``(repo_id, revision, filename)`` when ``spec``'s weights are on the Hugging Face Hub."""
    if not spec.url.startswith(_HF) or "/resolve/" not in spec.url:
        return None
    repo, rest = spec.url[len(_HF):].split("/resolve/", 1)
    revision, filename = rest.split("/", 1)
    return repo, revision, filename


def _hf_hint(spec: ModelSpec, repo: str) -> str:
    return (f"request access at https://huggingface.co/{repo} and log in with `hf auth login` "
            f"(or set HF_TOKEN), or pass checkpoint='/path/to/{spec.url.rsplit('/', 1)[-1]}' to "
            "load_model")


def _fetch_hf(spec: ModelSpec) -> Path:
    """Download ``spec``'s file from the Hugging Face Hub with the user's token (the Hub's cache)."""
    repo, revision, filename = hf_location(spec)
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError as err:
        raise WeightsError(f"model {spec.name!r} is downloaded from the Hugging Face Hub, which needs "
                           'huggingface_hub: pip install "napari-promptseg[sam3]"') from err
    offline = os.environ.get("PROMPTSEG_OFFLINE", "") not in ("", "0")
    try:
        return Path(huggingface_hub.hf_hub_download(repo_id=repo, filename=filename, revision=revision,
                                                    local_files_only=offline))
    except errors.GatedRepoError as err:
        raise WeightsError(f"the weights of model {spec.name!r} are gated on Hugging Face and this "
                           f"account has no access to {repo} (or is not logged in): "
                           + _hf_hint(spec, repo)) from err
    except errors.RepositoryNotFoundError as err:  # what the Hub answers without a valid token
        raise WeightsError(f"Hugging Face refused {repo} for model {spec.name!r} (not logged in, or "
                           "no access): " + _hf_hint(spec, repo)) from err
    except errors.LocalEntryNotFoundError as err:
        why = "PROMPTSEG_OFFLINE is set" if offline else "huggingface.co could not be reached (offline?)"
        raise WeightsError(f"model {spec.name!r} is not in the Hugging Face cache and {why}; "
                           + _hf_hint(spec, repo)) from err
    except (errors.HfHubHTTPError, OSError) as err:
        raise WeightsError(f"download of model {spec.name!r} from {spec.url} failed "
                           f"({err.__class__.__name__}: {err}); try again, or "
                           + _hf_hint(spec, repo)) from err


def fetch_weights(
    spec: ModelSpec,
    progress: bool | ProgressCallback = True,
    timeout: float = 60.0,
) -> Path:
    """Return the local path of ``spec``'s checkpoint, downloading and verifying it if needed.

    ``progress``: ``True`` shows a tqdm bar in the terminal, ``False`` nothing, a callable
    receives ``(bytes_done, bytes_total)``. Raises :class:`WeightsError` when offline, on a
    network error or on a hash mismatch; the message names the URL and where to put the file.
    """
    if spec.packaged:
        return _check_packaged(spec)
    if hf_location(spec) is not None:
        return _fetch_hf(spec)
    import pooch
    import requests

    path = weights_path(spec)
    if path.is_file() and _verified(path, spec.known_hash):
        return path
    if os.environ.get("PROMPTSEG_OFFLINE", "") not in ("", "0"):
        if not path.is_file():
            raise WeightsError(
                f"model {spec.name!r} is not in the cache and PROMPTSEG_OFFLINE is set. "
                + _manual_hint(spec, path)
            )
        if not pooch.hashes.hash_matches(str(path), spec.known_hash):  # placed by hand: check here
            raise WeightsError(
                f"{path} does not match the expected hash of model {spec.name!r} and "
                "PROMPTSEG_OFFLINE forbids downloading it again. " + _manual_hint(spec, path)
            )
        _marker(path).write_text(json.dumps(_stamp(path, spec.known_hash)))
        return path
    bar = _CallbackProgress(progress) if callable(progress) else bool(progress)
    downloader = pooch.HTTPDownloader(progressbar=bar, timeout=timeout)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        pooch.retrieve(
            spec.url,
            known_hash=spec.known_hash,
            fname=path.name,
            path=path.parent,
            downloader=downloader,
            progressbar=False,
        )
    except requests.exceptions.ConnectionError as err:
        raise WeightsError(
            f"could not reach {spec.url} to download model {spec.name!r} (are you offline?). "
            + _manual_hint(spec, path)
        ) from err
    except requests.exceptions.RequestException as err:
        raise WeightsError(
            f"download of model {spec.name!r} from {spec.url} failed or was interrupted "
            f"({err.__class__.__name__}: {err}); nothing was kept. Try again, or: "
            + _manual_hint(spec, path)
        ) from err
    except ValueError as err:  # pooch: hash mismatch (the bad file is already deleted)
        raise WeightsError(
            f"the file downloaded from {spec.url} does not match the expected hash "
            f"{spec.known_hash} and was removed ({err}). The server may have changed the file, "
            "or the transfer was corrupted; try again, or: " + _manual_hint(spec, path)
        ) from err
    _marker(path).write_text(json.dumps(_stamp(path, spec.known_hash)))
    return path
