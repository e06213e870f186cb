"""ps.find on huge images, tile by tile: every instance once and whole (small ones cut by a tile
edge are found whole in a neighbour, large ones spanning tiles are joined), exemplar boxes encoded
where they lie and prompting every tile, labels painted into a zarr block by block, the masks kept
as pieces. A stand-in concept model (every bright component is an instance) makes the truth
exact; a tiny random-weight SAM 3 checks that one tile equals the untiled search."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import napari_promptseg as ps
from napari_promptseg.embed.tiles import TiledEmbedding

from .component_model import ConceptComponents

TILE = 64  # ConceptComponents.image_size: 64-pixel tiles, halo 8 (overlaps of at least 16)


def slide() -> np.ndarray:
    """(300, 420) uint16: 40 bright small discs (radius 4-6) scattered, some across tile edges, a
    few touching the others; a bar 12 x 300 starting inside a tile overlap and spanning seven
    tiles; an L shape spanning a tile corner."""
    rng = np.random.default_rng(3)
    img = np.full((300, 420), 800, np.uint16)
    rr, cc = np.mgrid[:300, :420]
    taken = np.zeros(img.shape, bool)
    placed = 0
    while placed < 40:
        r, c, rad = rng.uniform(8, 292), rng.uniform(8, 412), rng.uniform(4, 6)
        disc = (rr - r) ** 2 + (cc - c) ** 2 <= rad ** 2
        if (ndimage.binary_dilation(disc, iterations=3) & taken).any() or (r > 140 and r < 180):
            continue
        img[disc] = rng.integers(40000, 60000)
        taken |= disc
        placed += 1
    img[150:162, 60:360] = 50000  # the bar
    img[200:290, 110:122] = 40000  # the L: down, then right
    img[278:290, 110:200] = 40000
    return img


def truth(img) -> list[np.ndarray]:
    comps, n = ndimage.label(img > img.min())
    return [comps == k for k in range(1, n + 1)]


def test_a_tiled_search_finds_every_instance_once_and_whole():
    model, img = ConceptComponents(), slide()
    ticks = []
    found = ps.find(model, img, text="nucleus", tiles=True, progress=lambda d, t: ticks.append((d, t)))
    tiles = TiledEmbedding(model, img).grid
    assert len(tiles) > 20 and ticks[-1] == (len(tiles), len(tiles))
    assert len(model.detects) == len(tiles) and all(d[2] == (TILE, TILE) for d in model.detects)
    want = truth(img)
    assert len(found) == len(want) and len(want) >= 35
    got = [o.mask for o in found.objects]
    for m in want:  # each true object is one found object, pixel for pixel
        assert sum(np.array_equal(m, g) for g in got) == 1
    assert list(found.scores) == sorted(found.scores, reverse=True)
    bar = next(o for o in found.objects if o.mask[155, 200])
    assert bar.window == (150, 60, 162, 360) and bar.piece.all()
    assert bar.box == (150.0, 60.0, 162.0, 360.0)  # joined across tiles: its mask's extent
    lab = found.labels
    assert lab.dtype == np.int32 and np.array_equal(lab > 0, img > img.min())


def test_exemplar_boxes_are_encoded_where_they_lie_and_prompt_every_tile():
    model, img = ConceptComponents(), slide()
    boxes = [[150, 60, 161, 100], [10, 300, 30, 330]]  # two windows: each encoded once
    found = ps.find(model, img, exemplars=boxes[:1], negative=boxes[1:], tiles=True)
    assert len(found) == len(truth(img))
    assert len(model.prompts) == 2
    for (text, local, labels, size), box, label in zip(model.prompts, boxes, (True, False), strict=True):
        assert text is None and size[0] >= TILE and labels.tolist() == [label]
        r0, c0 = np.asarray(box[:2]) - local[0][:2]  # the window's corner
        np.testing.assert_allclose(local[0] + (r0, c0, r0, c0), box)
    assert {d[1] for d in model.detects} == {("joined", (0, 1))}  # every tile: both encodings


def test_labels_are_painted_into_a_zarr_block_by_block():
    zarr = pytest.importorskip("zarr")
    model, img = ConceptComponents(), slide()
    out = zarr.zeros(img.shape, chunks=(128, 128), dtype=np.int32)
    found = ps.find(model, img, text="nucleus", tiles=True, out=out)
    assert found.labels is out
    np.testing.assert_array_equal(out[:], ps.find(model, img, text="nucleus", tiles=True).labels)
    with pytest.raises(ValueError, match="has shape"):
        ps.find(model, img, text="nucleus", out=np.zeros((5, 5), np.int32))


def test_auto_tiles_only_huge_images_and_one_tile_equals_no_tiles():
    model = ConceptComponents()
    small = slide()[:60, :60]
    model.detects.clear()
    plain = ps.find(model, small, text="x")
    assert model.detects[-1][2] == (60, 60)  # 60 px: not tiled
    one = ps.find(model, small, text="x", tiles=True)
    assert [(o.score, o.window) for o in one.objects] == [(o.score, o.window) for o in plain.objects]
    np.testing.assert_array_equal(one.labels, plain.labels)
    big = np.zeros((4 * TILE + 1, 10), np.uint8)  # longer than 4 tiles: tiled by default
    big[5:9, 2:6] = 255
    model.detects.clear()
    assert len(ps.find(model, big, text="x")) == 1
    assert len(model.detects) > 4 and {d[2] for d in model.detects} == {(TILE, 10)}
    with pytest.raises(ValueError, match="tiles must be 'auto', True or False"):
        ps.find(model, small, text="x", tiles="yes")


@pytest.fixture(scope="module")
def sam3():
    from .test_session_find import SAM3_MISSING, tiny_sam3

    if SAM3_MISSING:
        pytest.skip(f"Meta's sam3 package cannot be imported: {SAM3_MISSING}")
    return tiny_sam3()


def test_sam3_in_one_tile_equals_the_untiled_search(sam3):
    """Exemplar boxes through the tiled path (encoded in their window, then detect with those
    tokens) give exactly the untiled ``find`` when the image is one tile."""
    img = ps.sample.nuclei_image((200, 300))[0]
    boxes = dict(text="nucleus", exemplars=[[40, 60, 80, 110]], negative=[[150, 200, 190, 260]])
    plain = ps.find(sam3, img, threshold=0.0, tiles=False, **boxes)
    tiled = ps.find(sam3, img, threshold=0.0, tiles=True, **boxes)
    assert len(plain) == len(tiled) == 200
    np.testing.assert_allclose(tiled.scores, plain.scores, atol=1e-5)
    for a, b in zip(plain.objects[:20], tiled.objects[:20], strict=True):
        assert a.window == b.window and np.array_equal(a.piece, b.piece)


@pytest.mark.slow
def test_sam3_searches_two_tiles_with_an_exemplar_of_one(sam3):
    img = ps.sample.nuclei_image((336, 600))[0]
    found = ps.find(sam3, img, exemplars=[[40, 60, 80, 110]], threshold=0.0, tiles=True)
    assert len(found) > 0 and found.labels.shape == img.shape[:2]
    assert all(0 <= o.window[1] < o.window[3] <= 600 for o in found.objects)
    assert list(found.scores) == sorted(found.scores, reverse=True)


def test_the_session_finds_on_a_huge_plane_tile_by_tile():
    from napari_promptseg.session import AnnotationSession
    from napari_promptseg.session.find import TILED_FLOOR

    model, img = ConceptComponents(), slide()
    s = AnnotationSession(model, img, autosave=False)
    assert not isinstance(s.stack.get(()), ps.Embedding)  # the plane is tiled
    statuses, steps = [], []
    s.events.status.connect(statuses.append)
    s.events.progress.connect(lambda d, t: steps.append((d, t)))
    out = s.find("nucleus", threshold=0.5)
    ref = ps.find(model, img, text="nucleus", threshold=TILED_FLOOR, tiles=True)
    np.testing.assert_array_equal(out, ref.labels)
    assert len(model.detects) == 2 * len(s.stack.get(()).grid)  # the session's run and ref's
    assert len({t for _d, t in steps}) >= 1 and len(steps) > 10  # a step per tile
    assert f"none below {TILED_FLOOR:.2f} on tiled planes" in statuses[-1]


def test_find_stack_searches_huge_planes_tile_by_tile():
    model, img = ConceptComponents(), slide()
    stack = np.stack([img, img[:, ::-1]])
    lab = ps.find_stack(model, stack, text="nucleus")
    assert {d[2] for d in model.detects} == {(TILE, TILE)}
    for k in range(2):
        np.testing.assert_array_equal(lab[k] > 0, stack[k] > img.min())
        assert len(np.unique(lab[k])) - 1 == len(truth(stack[k]))


def test_cli_find_tiles_a_huge_image_into_a_zarr(tmp_path, monkeypatch, capsys):
    import tifffile
    import zarr

    from napari_promptseg.cli.main import main

    model, img = ConceptComponents(), slide()
    monkeypatch.setattr("napari_promptseg.cli.find.load_model", lambda args: model)
    tifffile.imwrite(tmp_path / "slide.tif", img)
    assert main(["find", str(tmp_path / "slide.tif"), "--text", "nucleus", "--out", str(tmp_path / "out"),
                 "--format", "zarr"]) == 0
    n = len(truth(img))
    assert f"{n} instance(s)" in capsys.readouterr().out
    lab = np.asarray(zarr.open_array(tmp_path / "out" / "slide_labels.zarr", mode="r"))
    np.testing.assert_array_equal(lab, ps.find(model, img, text="nucleus", tiles=True).labels)
    assert {d[2] for d in model.detects} == {(TILE, TILE)}
