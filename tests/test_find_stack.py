"""ps.find_stack: a concept on every plane of a stack, one id per instance through it; and
`promptseg find` on images, stacks and folders. A stand-in SAM 3 model finds the bright
components of each plane (scores by size), so the linking and the plumbing can be checked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import napari_promptseg as ps

from .component_model import ComponentModel, mask_piece
from .test_sam3 import ConceptStub


class ComponentConcepts(ConceptStub):
    """Finds every bright component of a plane: score 0.9 for the large ones, 0.3 for specks;
    records the prompts of detect() calls."""

    def detect(self, emb, text, boxes, labels):
        self.seen.append((text, np.asarray(boxes).copy(), np.asarray(labels).copy()))
        comps = emb.features["components"]
        n = int(comps.max())
        sizes = np.bincount(comps.ravel(), minlength=n + 1)[1:]
        scores = np.where(sizes >= 30, 0.9, 0.3).astype(np.float32)
        self._comps = comps
        return scores, np.zeros((n, 4), np.float32), torch.arange(n)

    def mask_pieces(self, idx, size):
        return [mask_piece(self._comps == int(i) + 1) for i in idx]


def stack_of_blobs():
    """(8, 48, 64) uint8: a disc drifting right on planes 0-5, a square on planes 3-7, and a 2-px
    speck (a low score) on plane 4."""
    img = np.zeros((8, 48, 64), np.uint8)
    rr, cc = np.mgrid[:48, :64]
    for k in range(6):
        img[k][(rr - 15) ** 2 + (cc - 12 - k) ** 2 < 64] = 200
    img[3:8, 30:40, 40:52] = 200
    img[4, 2, 60:62] = 200
    return img


def test_find_stack_links_instances_through_the_planes():
    model, img = ComponentConcepts(), stack_of_blobs()
    seen = []
    lab = ps.find_stack(model, img, text="nucleus", progress=lambda d, t: seen.append((d, t)))
    assert lab.dtype == np.int32 and lab.shape == img.shape
    assert seen[-1] == (8, 8) and len(seen) == 8
    disc = set(np.unique(lab[:6, 15, 15]))
    square = set(np.unique(lab[3:, 35, 45]))
    assert len(disc) == 1 and len(square) == 1 and disc != square and 0 not in disc | square
    assert set(np.unique(lab)) == {0} | disc | square  # the speck scored 0.3 < 0.5: not kept
    assert (lab[6:] == next(iter(disc))).sum() == 0  # the disc ends on plane 5
    assert model.seen[0][0] == "nucleus"
    low = ps.find_stack(model, img, text="nucleus", threshold=0.1)
    assert low[4, 2, 60] > 0 and len(np.unique(low)) == 4


def test_find_stack_writes_a_zarr_out_plane_by_plane_and_checks_first(tmp_path):
    import zarr

    model, img = ComponentConcepts(), stack_of_blobs()
    out = zarr.open_array(tmp_path / "lab.zarr", mode="w", shape=img.shape, dtype="int32",
                          chunks=(1, 48, 64))
    got = ps.find_stack(model, img, exemplars=[[8, 5, 22, 25]], out=out)
    assert got is out
    np.testing.assert_array_equal(out[...], ps.find_stack(model, img, exemplars=[[8, 5, 22, 25]]))
    np.testing.assert_array_equal(model.seen[-1][1], [[8, 5, 22, 25]])
    with pytest.raises(ValueError, match="shape"):
        ps.find_stack(model, img, text="x", out=np.zeros((8, 48, 63), np.int32))
    with pytest.raises(ValueError, match="nothing to find"):
        ps.find_stack(model, img)
    with pytest.raises(ValueError, match=r"exemplars\[0\]"):
        ps.find_stack(model, img, exemplars=[[100, 100, 120, 120]])
    with pytest.raises(TypeError, match="cannot find concepts"):
        ps.find_stack(ComponentModel(), img, text="x")


@pytest.fixture
def concepts(monkeypatch):
    """`promptseg find` loads the stand-in model whatever --model says."""
    model = ComponentConcepts()
    monkeypatch.setattr("napari_promptseg.cli.find.load_model", lambda args: model)
    return model


def test_cli_find_on_an_image_a_stack_and_a_folder(tmp_path, concepts, capsys):
    import tifffile

    from napari_promptseg.cli.main import main

    folder = tmp_path / "in"
    folder.mkdir()
    img = stack_of_blobs()
    tifffile.imwrite(folder / "plane.tif", img[4])
    np.save(folder / "stack.npy", img)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"exemplars": [[8, 5, 22, 25]], "negative": [[30, 40, 39, 51]]}))
    out = tmp_path / "out"
    assert main(["find", str(folder), "--text", "nucleus", "--exemplars", str(boxes), "--out", str(out),
                 "--format", "zarr"]) == 0
    printed = capsys.readouterr().out
    assert "plane.tif" in printed and "stack.npy" in printed
    import zarr

    plane = np.asarray(zarr.open_array(out / "plane_labels.zarr", mode="r"))
    assert plane.shape == (48, 64) and len(np.unique(plane)) == 3  # disc, square (speck < 0.5)
    text, b, labels = concepts.seen[-1]
    assert text == "nucleus"
    np.testing.assert_array_equal(b, [[8, 5, 22, 25], [30, 40, 39, 51]])
    np.testing.assert_array_equal(labels, [True, False])
    stack = np.asarray(zarr.open_array(out / "stack_labels.zarr", mode="r"))
    want = ps.find_stack(concepts, img, text="nucleus", exemplars=[[8, 5, 22, 25]],
                         negative=[[30, 40, 39, 51]])
    np.testing.assert_array_equal(stack, want)
    assert len(np.unique(stack)) == 3
    # existing outputs are skipped; --threshold keeps the speck
    one = str(folder / "plane.tif")
    assert main(["find", one, "--text", "x", "--out", str(out), "--format", "zarr"]) == 0
    assert "skipped" in capsys.readouterr().err
    assert main(["find", one, "--text", "x", "--out", str(out), "--format", "zarr", "--overwrite",
                 "--threshold", "0.1"]) == 0
    assert len(np.unique(np.asarray(zarr.open_array(out / "plane_labels.zarr", mode="r")))) == 4


def test_cli_find_says_what_is_wrong(tmp_path, concepts, capsys):
    from napari_promptseg.cli.main import main

    np.save(tmp_path / "a.npy", stack_of_blobs()[0])
    out = str(tmp_path / "out")
    assert main(["find", str(tmp_path / "a.npy"), "--out", out]) == 2
    assert "give --text" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("[[1, 2, 3]]")
    assert main(["find", str(tmp_path / "a.npy"), "--exemplars", str(bad), "--out", out]) == 2
    assert "shape (N, 4)" in capsys.readouterr().err
    bad.write_text("{\"positive\": []}")
    assert main(["find", str(tmp_path / "a.npy"), "--exemplars", str(bad), "--out", out]) == 2
    assert "exemplars" in capsys.readouterr().err
    assert main(["find", str(tmp_path / "a.npy"), "--text", "x", "--threshold", "2", "--out", out]) == 2
    assert "threshold" in capsys.readouterr().err
