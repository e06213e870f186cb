"""The `promptseg` command line, end to end in subprocesses on small files (the shipped model)."""

import subprocess
import sys

import numpy as np
import pytest
import tifffile

import napari_promptseg as ps
from napari_promptseg.sample import nuclei_image


def _run(*args, cwd=None):
    out = subprocess.run([sys.executable, "-m", "napari_promptseg.cli", *map(str, args)],
                         capture_output=True, text=True, cwd=cwd, timeout=600)
    return out.returncode, out.stdout, out.stderr


@pytest.fixture(scope="module")
def stack_tif(tmp_path_factory):
    img, lab = nuclei_image((96, 112), n=6)
    stack = np.stack([np.roll(img, k, axis=1) for k in range(3)])
    path = tmp_path_factory.mktemp("cli") / "stack.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    return path, stack, lab


def test_help_explains_each_command_with_an_example():
    rc, out, _ = _run("--help")
    assert rc == 0 and "embed" in out and "Examples:" in out
    rc, out, _ = _run("embed", "--help")
    assert rc == 0 and "Example: promptseg embed" in out and "--axis" in out


def test_models_lists_the_registry_and_what_is_local():
    rc, out, _ = _run("models")
    assert rc == 0
    lines = {ln.split()[0]: ln for ln in out.splitlines()}
    assert "vit_b" in lines and "local" in lines["promptseg_demo"]


@pytest.mark.slow
def test_embed_writes_a_store_that_propagate_uses_and_a_rerun_resumes(stack_tif, tmp_path):
    path, stack, lab = stack_tif
    store = tmp_path / "stack.zarr"
    rc, out, err = _run("embed", path, "--model", "promptseg_demo", "--device", "cpu", "--out", store)
    assert rc == 0, err
    assert "3 of 3 planes" in out and "embedding planes" in err  # progress on stderr
    emb = ps.open_embeddings(store)
    assert emb.complete and emb.model == "promptseg_demo" and emb.shape == stack.shape
    model = ps.load_model("promptseg_demo", device="cpu")
    labels = ps.propagate(model, stack, {0: lab}, embeddings=store)
    assert labels.shape == stack.shape and (labels[2] > 0).sum() > 0
    mtime = (store / "planes" / "1" / "zarr.json").stat().st_mtime_ns
    rc, out, _ = _run("embed", path, "--model", "promptseg_demo", "--device", "cpu", "--out", store)
    assert rc == 0 and (store / "planes" / "1" / "zarr.json").stat().st_mtime_ns == mtime  # skipped


@pytest.mark.parametrize("args,message", [
    (["missing.tif"], "no such file"),
    (["{tif}", "--model", "nope"], "unknown model 'nope'"),
    (["{tif}", "--axis", "5"], "axis 5 does not exist"),
    (["{npy}"], "was made for an image of shape"),
])
@pytest.mark.slow
def test_bad_inputs_give_one_clear_line_and_exit_code_2(stack_tif, tmp_path, args, message):
    path, stack, _ = stack_tif
    store = tmp_path / "s.zarr"
    other = tmp_path / "other.npy"
    np.save(other, stack[:2])
    assert _run("embed", path, "--model", "promptseg_demo", "--device", "cpu", "--out", store)[0] == 0
    args = [a.format(tif=path, npy=other) for a in args]
    if "--model" not in args:
        args += ["--model", "promptseg_demo"]
    rc, out, err = _run("embed", *args, "--device", "cpu", "--out", store)
    assert rc == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_embed_takes_an_rgb_png_as_one_image(tmp_path):
    from skimage.io import imsave

    img, _ = nuclei_image((64, 80), n=3)
    rgb = np.repeat((img // 16).astype(np.uint8)[..., None], 3, axis=2)
    imsave(tmp_path / "photo.png", rgb, check_contrast=False)
    rc, out, err = _run("embed", tmp_path / "photo.png", "--model", "promptseg_demo", "--device", "cpu",
                        "--out", tmp_path / "p.zarr")
    assert rc == 0, err
    store = ps.open_embeddings(tmp_path / "p.zarr")
    assert store.rgb and store.n_planes == 1 and "1 of 1 planes" in out
