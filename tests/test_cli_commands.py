"""`promptseg segment`, `propagate` and `everything`, end to end in subprocesses (the shipped model)."""

import json

import numpy as np
import pytest
import tifffile
import zarr

import napari_promptseg as ps
from napari_promptseg.cli.main import main
from napari_promptseg.sample import nuclei_image

from .test_cli import _run


def _centre(lab, i):
    return [int(v) for v in np.argwhere(lab == i).mean(axis=0).round()]


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory):
    img, lab = nuclei_image((128, 144), n=8, seed=3)
    d = tmp_path_factory.mktemp("cmd")
    tifffile.imwrite(d / "img.tif", img, photometric="minisblack")
    return d, img, lab


@pytest.mark.slow
def test_segment_json_points_and_box_give_the_objects_with_their_ids(nuclei, tmp_path):
    d, img, lab = nuclei
    ids = [i for i in np.unique(lab) if i][:3]
    r0, c0 = np.argwhere(lab == ids[2]).min(0)
    r1, c1 = np.argwhere(lab == ids[2]).max(0)
    prompts = {"2": {"points": [_centre(lab, ids[0])]}, "5": {"points": [_centre(lab, ids[1])]},
               "7": {"box": [int(r0) - 2, int(c0) - 2, int(r1) + 2, int(c1) + 2]}}
    (tmp_path / "p.json").write_text(json.dumps({"0": prompts}))
    # a 2D image also takes {plane: ...} with plane 0; the list form is tested below
    rc, out, err = _run("segment", d / "img.tif", "--model", "promptseg_demo", "--device", "cpu",
                        "--prompts", tmp_path / "p.json", "--out", tmp_path / "out.tif")
    assert rc == 0, err
    got = tifffile.imread(tmp_path / "out.tif")
    assert got.shape == img.shape and got.dtype == np.int32
    assert sorted(np.unique(got))[1:] == [2, 5, 7]
    for oid, truth in zip((2, 5, 7), ids, strict=True):
        assert _iou(got == oid, lab == truth) > 0.6
    assert "3 object(s)" in out
    # the same masks as the API: the CLI adds nothing of its own
    model = ps.load_model("promptseg_demo", device="cpu")
    pred = model.predict(model.embed(img), points=[_centre(lab, ids[0])], multimask=True)
    assert np.array_equal(got == 2, pred.masks[pred.best])  # the lowest id keeps all its pixels


def test_segment_reads_napari_points_csv_with_labels_and_objects(nuclei, tmp_path):
    d, img, lab = nuclei
    a, b = (_centre(lab, i) for i in [i for i in np.unique(lab) if i][:2])
    # as napari's Points writer saves our prompt layer: index, axis-0, axis-1, then the features
    (tmp_path / "p.csv").write_text("index,axis-0,axis-1,label,object\n"
                                    f"0.0,{a[0]}.0,{a[1]}.0,1.0,1.0\n1.0,{b[0]}.0,{b[1]}.0,1.0,4.0\n")
    code = main(["segment", str(d / "img.tif"), "--model", "promptseg_demo", "--device", "cpu",
                 "--prompts", str(tmp_path / "p.csv"), "--out", str(tmp_path / "o.zarr")])
    assert code == 0
    got = np.asarray(zarr.open_array(tmp_path / "o.zarr", mode="r"))
    assert sorted(np.unique(got))[1:] == [1, 4]
    assert got[tuple(a)] == 1 and got[tuple(b)] == 4


@pytest.mark.slow
def test_propagate_follows_a_prompt_through_the_stack_and_can_use_a_store(nuclei, tmp_path):
    _, img, lab = nuclei
    stack = np.stack([np.roll(img, 2 * k, axis=1) for k in range(4)])
    np.save(tmp_path / "stack.npy", stack)
    i = [i for i in np.unique(lab) if i][0]
    r, c = _centre(lab, i)
    (tmp_path / "seeds.json").write_text(json.dumps({"1": [{"points": [[r, c + 2]]}]}))
    rc, out, err = _run("propagate", tmp_path / "stack.npy", "--model", "promptseg_demo", "--device", "cpu",
                        "--prompts", tmp_path / "seeds.json", "--out", tmp_path / "lab.tif")
    assert rc == 0, err and "propagating" in err
    got = tifffile.imread(tmp_path / "lab.tif")
    assert got.shape == stack.shape and "on 4 of 4 planes" in out
    for k in range(4):
        assert _iou(got[k] == 1, np.roll(lab == i, 2 * k, axis=1)) > 0.6
    # the same run from a precomputed store: the same labels, and the store is checked
    for _ in ps.embed_store_iter(ps.load_model("promptseg_demo", device="cpu"), stack, tmp_path / "s.zarr"):
        pass
    rc, _, err = _run("propagate", tmp_path / "stack.npy", "--model", "promptseg_demo", "--device", "cpu",
                      "--prompts", tmp_path / "seeds.json", "--out", tmp_path / "lab2.tif",
                      "--embeddings", tmp_path / "s.zarr")
    assert rc == 0, err
    assert np.array_equal(tifffile.imread(tmp_path / "lab2.tif"), got)
    np.save(tmp_path / "other.npy", stack[::-1].copy())
    rc, _, err = _run("propagate", tmp_path / "other.npy", "--model", "promptseg_demo", "--device", "cpu",
                      "--prompts", tmp_path / "seeds.json", "--out", tmp_path / "lab3.tif",
                      "--embeddings", tmp_path / "s.zarr")
    assert rc == 2 and "other pixels" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_everything_over_files_and_folders_writes_labels_and_resumes(nuclei, tmp_path):
    d, img, lab = nuclei
    folder = tmp_path / "imgs"
    folder.mkdir()
    img2, _ = nuclei_image((96, 96), n=5, seed=4)
    np.save(folder / "b.npy", img2)
    tifffile.imwrite(folder / "stack.tif", np.stack([img2, img2]), photometric="minisblack")
    out_dir = tmp_path / "out"
    args = ["everything", d / "img.tif", folder, "--model", "promptseg_demo", "--device", "cpu",
            "--out", out_dir, "--points-per-side", "12"]
    rc, out, err = _run(*args)
    assert rc == 0, err
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["b_labels.tif", "img_labels.tif", "stack_labels.tif"]
    got = tifffile.imread(out_dir / "img_labels.tif")
    ref = ps.segment_everything(ps.load_model("promptseg_demo", device="cpu"), img, points_per_side=12)
    assert np.array_equal(got, ref.labels)  # the API's labels, the model's own defaults
    stack = tifffile.imread(out_dir / "stack_labels.tif")
    assert stack.shape == (2, 96, 96) and stack.max() > 0
    assert np.array_equal(stack[0], stack[1])  # the same plane twice: one 3D object per nucleus
    mtime = (out_dir / "b_labels.tif").stat().st_mtime_ns
    rc, out, err = _run(*args)
    assert rc == 0 and "3 image(s) skipped" in err
    assert (out_dir / "b_labels.tif").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("prompts,extra,message", [
    ('[{"points": [[10, 10]]}]', ["--axis", "0"], "say on which plane"),
    ('{"9": [{"points": [[10, 10]]}]}', [], "plane 9 is outside the image's 2 planes"),
    ("x,y\n1,2\n", [], "needs coordinate columns axis-0"),
    ('{"0": [{"point": [[10, 10]]}]}', [], "unknown prompt keys ['point']"),
    ('{"0": [{"points": [[10, 10]]}]}', ["--out-suffix", ".png"], "labels are written as .tif or .zarr"),
])
def test_bad_prompts_and_outputs_are_one_clear_line_and_exit_code_2(tmp_path, capsys, prompts, extra,
                                                                   message):
    img, _ = nuclei_image((64, 64), n=3)
    np.save(tmp_path / "s.npy", np.stack([img, img]))
    suffix = ".json" if prompts.startswith(("[", "{")) else ".csv"
    (tmp_path / f"p{suffix}").write_text(prompts)
    out = tmp_path / ("o" + (extra[1] if extra[:1] == ["--out-suffix"] else ".tif"))
    extra = [] if extra[:1] == ["--out-suffix"] else extra
    code = main(["segment", str(tmp_path / "s.npy"), "--model", "promptseg_demo", "--device", "cpu",
                 "--prompts", str(tmp_path / f"p{suffix}"), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
