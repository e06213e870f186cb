"""Embeddings stores on dask.distributed: 2 worker processes on 127.0.0.1, the shipped demo model."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

import napari_promptseg as ps
from napari_promptseg.embed.distributed import embed_store_distributed_iter, local_cluster
from napari_promptseg.embed.store import StoreError
from napari_promptseg.sample import nuclei_image


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    cluster = local_cluster(2)
    c = Client(cluster)
    c.wait_for_workers(2)
    yield c
    c.close()
    cluster.close()


def _stack(n: int, seed: int = 0) -> np.ndarray:
    img, _ = nuclei_image((96, 112), n=6, seed=seed)
    return np.stack([np.roll(img, 3 * k, axis=1) for k in range(n)])


def _mtimes(path) -> dict[str, int]:
    return {p.name: (p / "zarr.json").stat().st_mtime_ns
            for p in (path / "planes").iterdir() if (p / "zarr.json").is_file()}


def _running(dask_worker) -> int:
    return len(dask_worker.state.executing)


def _idle(client, timeout: float = 30) -> None:
    """Wait until no worker runs a task (cancelled tasks already running still finish)."""
    end = time.monotonic() + timeout
    while any(client.run(_running).values()) and time.monotonic() < end:
        time.sleep(0.05)


@pytest.mark.slow
def test_the_distributed_store_equals_the_in_process_store(client, demo_model, tmp_path):
    stack = _stack(6)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")  # read per plane (memmap)
    progress = list(embed_store_distributed_iter("promptseg_demo", tmp_path / "s.tif", tmp_path / "d.zarr",
                                                 device="cpu", scheduler=client))
    assert progress[-1] == (6, 6) and [d for d, _ in progress] == list(range(1, 7))
    list(ps.embed_store_iter(demo_model, stack, tmp_path / "i.zarr"))
    d, i = ps.open_embeddings(tmp_path / "d.zarr"), ps.open_embeddings(tmp_path / "i.zarr")
    assert d.complete and sorted(d) == sorted(i) == list(range(6))
    assert d.meta == i.meta  # model, checkpoint, window (the same default), shape, axis
    for k in range(6):
        assert d.key(k) == i.key(k)
        np.testing.assert_allclose(d[k].features["image_embed"].numpy(),
                                   i[k].features["image_embed"].numpy(), rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_a_killed_worker_loses_only_its_planes_and_the_store_completes(client, tmp_path):
    n = 24
    np.save(tmp_path / "s.npy", _stack(n))
    before = client.run(os.getpid)
    it = embed_store_distributed_iter("promptseg_demo", tmp_path / "s.npy", tmp_path / "d.zarr",
                                      device="cpu", scheduler=client)
    done, total = next(it)
    assert done < total == n
    os.kill(next(iter(before.values())), signal.SIGKILL)  # mid-run, tasks in flight
    assert list(it)[-1] == (n, n)
    store = ps.open_embeddings(tmp_path / "d.zarr")
    assert store.complete and all(store[k].original_size == (96, 112) for k in range(n))
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it
    assert set(client.run(os.getpid).values()) != set(before.values())


@pytest.mark.slow
def test_an_interrupted_run_is_valid_and_a_rerun_computes_only_the_missing_planes(client, tmp_path):
    n = 12
    np.save(tmp_path / "s.npy", _stack(n))
    it = embed_store_distributed_iter("promptseg_demo", tmp_path / "s.npy", tmp_path / "d.zarr",
                                      device="cpu", scheduler=client)
    next(it), next(it), next(it)
    it.close()  # interrupted: the rest is cancelled
    _idle(client)
    store = ps.open_embeddings(tmp_path / "d.zarr")
    old = _mtimes(tmp_path / "d.zarr")
    assert 3 <= len(store) < n and not store.complete and len(old) == len(store)
    progress = list(embed_store_distributed_iter("promptseg_demo", tmp_path / "s.npy",
                                                 tmp_path / "d.zarr", device="cpu", scheduler=client))
    assert progress[-1] == (n - len(old), n - len(old))  # only the missing planes were submitted
    new = _mtimes(tmp_path / "d.zarr")
    assert len(new) == n and all(new[k] == t for k, t in old.items())  # none recomputed
    assert ps.open_embeddings(tmp_path / "d.zarr").complete


def test_bad_input_fails_before_any_plane_task(client, demo_model, tmp_path):
    np.save(tmp_path / "s.npy", _stack(4))
    np.save(tmp_path / "other.npy", _stack(3))
    with pytest.raises(StoreError, match="axis 3 does not exist"):  # at the call, no cluster needed
        embed_store_distributed_iter("promptseg_demo", tmp_path / "s.npy", tmp_path / "d.zarr", axis=3,
                                     scheduler=client)
    with pytest.raises(ValueError, match="unknown model .nope."):
        embed_store_distributed_iter("nope", tmp_path / "s.npy", tmp_path / "d.zarr", scheduler=client)
    list(ps.embed_store_iter(demo_model, _stack(4)[:2], tmp_path / "d.zarr"))
    with pytest.raises(StoreError, match="shape"):
        list(embed_store_distributed_iter("promptseg_demo", tmp_path / "s.npy", tmp_path / "d.zarr",
                                          device="cpu", scheduler=client))
    assert sorted(ps.open_embeddings(tmp_path / "d.zarr")) == [0, 1]
    with pytest.raises(ValueError, match="one of workers"):
        embed_store_distributed_iter("promptseg_demo", tmp_path / "s.npy", tmp_path / "e.zarr")


def _cli(*args):
    out = subprocess.run([sys.executable, "-m", "napari_promptseg.cli", *map(str, args)],
                         capture_output=True, text=True, timeout=300)
    return out.returncode, out.stdout, out.stderr


@pytest.mark.slow
def test_cli_embed_with_two_local_workers(demo_model, tmp_path):
    stack = _stack(4)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    rc, out, err = _cli("embed", tmp_path / "s.tif", "--model", "promptseg_demo", "--device", "cpu",
                        "--out", tmp_path / "s.zarr", "--workers", "2")
    assert rc == 0, err
    assert "4 of 4 planes" in out and "embedding planes" in err
    list(ps.embed_store_iter(demo_model, stack, tmp_path / "i.zarr"))
    d, i = ps.open_embeddings(tmp_path / "s.zarr"), ps.open_embeddings(tmp_path / "i.zarr")
    assert d.complete and [d.key(k) for k in range(4)] == [i.key(k) for k in range(4)]


@pytest.mark.parametrize("args,message", [
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:9"], "--workers and --scheduler exclude each other"),
    (["--workers", "0"], "--workers must be at least 1"),
])
def test_cli_workers_and_scheduler_errors_are_one_line(tmp_path, args, message):
    np.save(tmp_path / "s.npy", _stack(2))
    rc, out, err = _cli("embed", tmp_path / "s.npy", "--model", "promptseg_demo", "--out",
                        tmp_path / "s.zarr", *args)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.zarr").exists()
