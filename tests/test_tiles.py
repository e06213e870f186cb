"""Huge images in tiles: only the tiles a prompt needs are embedded, objects cut by a tile border
come out whole, and segment everything merges tiles without duplicates."""

import numpy as np
import pytest

import napari_promptseg as ps
from napari_promptseg.embed.tiles import TiledEmbedding, TileGrid, tile_side, wants_tiles
from napari_promptseg.training.sampling import interior_point
from napari_promptseg.training.synthetic import synthetic_image

from .conftest import mask_iou as _iou


@pytest.fixture(scope="module")
def demo(demo_model):
    return demo_model


class _CountingEncoder:
    """Counts the model's encoder calls (``_embed_rgb``) and the input shapes."""

    def __init__(self, model, monkeypatch):
        self.shapes = []
        orig = model._embed_rgb

        def spy(rgb, *args):
            self.shapes.append(rgb.shape[:2])
            return orig(rgb, *args)

        monkeypatch.setattr(model, "_embed_rgb", spy)


@pytest.mark.parametrize("shape,tile,halo", [((700, 700), 256, 32), ((256, 1000), 256, 32),
                                             ((100, 90), 256, 32), ((1025, 513), 128, 0)])
def test_grid_tiles_are_full_size_and_cores_partition_the_image(shape, tile, halo):
    g = TileGrid(shape, tile, halo)
    cover = np.zeros(shape, int)
    for t in g.tiles:
        r0, c0, r1, c1 = t.box
        assert (r1 - r0, c1 - c0) == (min(tile, shape[0]), min(tile, shape[1]))
        cr0, cc0, cr1, cc1 = t.core
        assert r0 <= cr0 < cr1 <= r1 and c0 <= cc0 < cc1 <= c1
        # a core lies at least halo pixels inside its tile wherever the tile has a neighbour
        assert cr0 == 0 or cr0 - r0 >= halo
        assert cr1 == shape[0] or r1 - cr1 >= halo
        cover[cr0:cr1, cc0:cc1] += 1
    assert (cover == 1).all()
    assert g.at(shape[0] - 1, shape[1] - 1).index == len(g) - 1
    assert g.at(-5, 10_000).core[1] <= shape[1] - 1 < g.at(-5, 10_000).core[3]


def test_bad_grid_and_tiled_inputs_say_what_is_wrong(demo):
    with pytest.raises(ValueError, match="halo"):
        TileGrid((500, 500), 64, 32)
    with pytest.raises(ValueError, match="2D"):
        TiledEmbedding(demo, np.zeros((3, 64, 64, 3), np.uint8))
    t = ps.embed_tiles(demo, np.zeros((300, 300), np.uint8))
    with pytest.raises(ValueError, match="empty prompt"):
        demo.predict(t, points=[(10, 10)], labels=[0])
    with pytest.raises(ValueError, match="does not match"):
        demo.mask_prompt(t, np.zeros((10, 10), bool))


def test_tile_side_follows_the_pixel_scale(demo, tiny_model):
    assert tile_side(demo) == 256  # the demo model's 256 input at 1 input pixel per image pixel
    assert tile_side(tiny_model) == tiny_model.image_size  # SAM: no scale declared -> its input
    assert not wants_tiles(demo, (1024, 1024)) and wants_tiles(demo, (1025, 64))


def test_first_mask_on_a_big_image_embeds_only_the_tile_it_needs(demo, monkeypatch):
    img, lab = synthetic_image(3, (2048, 2048), style="sparse")
    enc = _CountingEncoder(demo, monkeypatch)
    statuses = []
    tiled = ps.embed_tiles(demo, img, on_embed=statuses.append)
    assert enc.shapes == [] and len(tiled.grid) > 50  # nothing embedded up front
    ids = [i for i in range(1, lab.max() + 1) if (lab == i).sum() >= 40]
    gt = lab == ids[len(ids) // 2]
    p = demo.predict(tiled, points=[interior_point(gt)])
    assert len(enc.shapes) == 1 and enc.shapes[0] == (256, 256)
    assert statuses and statuses[0].startswith("embedding tile ")
    assert p.masks.shape[1:] == (2048, 2048) and _iou(p.masks[p.best], gt) > 0.5
    # a second prompt in the same tile reuses its embedding
    demo.predict(tiled, points=[interior_point(gt)], multimask=False)
    assert len(enc.shapes) == 1


class _Reads(np.ndarray):
    """An image that counts how often its pixels are sliced."""

    reads = 0

    def __getitem__(self, item):
        type(self).reads += 1
        return np.asarray(self).__getitem__(item)


def test_pending_says_which_tile_without_reading_pixels(demo):
    img, lab = synthetic_image(3, (1400, 1400), style="sparse")
    image = img.view(_Reads)
    tiled = ps.embed_tiles(demo, image, contrast_limits=(float(img.min()), float(img.max())))
    gt = lab == [i for i in range(1, lab.max() + 1) if (lab == i).sum() >= 40][0]
    pt = [interior_point(gt)]
    _Reads.reads = 0
    assert tiled.pending(points=pt).startswith("embedding tile ") and _Reads.reads == 0
    demo.predict(tiled, points=pt, multimask=False)
    _Reads.reads = 0
    assert tiled.pending(points=pt) is None and _Reads.reads == 0  # its tile is in memory now


def _cut_objects(lab, tiled, min_area=40):
    """Ids of objects crossing a tile box edge inside the image (a tile sees them cut)."""
    out = []
    for i in range(1, lab.max() + 1):
        m = lab == i
        if m.sum() < min_area:
            continue
        r, c = np.argwhere(m).T
        for t in tiled.grid.tiles:
            r0, c0, r1, c1 = t.box
            inside = (r >= r0) & (r < r1) & (c >= c0) & (c < c1)
            if inside.any() and not inside.all():
                out.append(i)
                break
    return out


def test_prompt_on_an_object_cut_by_a_tile_border_gives_the_whole_object(demo):
    img, lab = synthetic_image(5, (700, 700), style="sparse")
    tiled = ps.embed_tiles(demo, img)
    cut = _cut_objects(lab, tiled)
    assert len(cut) >= 5
    ious, truncated = [], 0
    for i in cut:
        gt = lab == i
        p = demo.predict(tiled, points=[interior_point(gt)])
        m = p.masks[p.best]
        ious.append(_iou(m, gt))
        r0, c0, r1, c1 = p.region
        truncated += bool(m[r0:r1, c0:c1].any() and not gt[r0:r1, c0:c1].sum() == gt.sum())
    assert np.mean(ious) > 0.6, ious
    assert truncated == 0  # every object was decoded in a window that holds all of it


def test_a_box_larger_than_a_tile_is_decoded_in_one_window(demo, monkeypatch):
    img, _ = synthetic_image(4, (900, 900), style="dense")
    tiled = ps.embed_tiles(demo, img)
    enc = _CountingEncoder(demo, monkeypatch)
    box = (200, 150, 619, 699)  # 420 x 550 pixels: larger than a 256-pixel tile
    p = demo.predict(tiled, box=box, multimask=False)
    r0, c0, r1, c1 = p.region
    assert r0 <= 200 and c0 <= 150 and r1 >= 620 and c1 >= 700
    assert len(enc.shapes) == 1
    # the same as the model on that window's pixels, pasted at the window
    ref = demo.predict(demo.embed(img[r0:r1, c0:c1], tiled.contrast_limits),
                       box=np.subtract(box, (r0, c0, r0, c0)), multimask=False)
    assert p.masks.shape == (1, 900, 900) and not p.masks[0][:r0].any() and not p.masks[0][:, :c0].any()
    assert _iou(p.masks[0][r0:r1, c0:c1], ref.masks[0]) > 0.99


def test_mask_input_of_a_tiled_prediction_refines_in_the_same_window(demo):
    img, lab = synthetic_image(5, (700, 700), style="sparse")
    tiled = ps.embed_tiles(demo, img)
    i = _cut_objects(lab, tiled)[0]
    gt = lab == i
    p = demo.predict(tiled, points=[interior_point(gt)])
    q = demo.predict(tiled, points=[interior_point(gt)], mask_input=p.logits[p.best], multimask=False)
    assert q.region == p.region
    logits = demo.mask_prompt(tiled, gt)
    r = demo.predict(tiled, mask_input=logits, points=[interior_point(gt)], multimask=False)
    assert _iou(r.masks[0], gt) > 0.5


def test_tiled_embedding_belongs_to_its_model(demo, tiny_model):
    t = ps.embed_tiles(demo, np.zeros((300, 300), np.uint8))
    with pytest.raises(ValueError, match="promptseg_demo"):
        tiny_model.predict(t, points=[(10, 10)])
    with pytest.raises(ValueError, match="promptseg_demo"):
        ps.segment_everything(tiny_model, t)


def test_tiles_go_through_the_disk_cache(demo, tmp_path, monkeypatch):
    from napari_promptseg.embed.disk_cache import DiskCache

    img, lab = synthetic_image(2, (600, 600), style="sparse")
    gt = lab == np.bincount(lab.ravel())[1:].argmax() + 1
    disk = DiskCache(tmp_path / "cache")
    a = demo.predict(ps.embed_tiles(demo, img, disk=disk), points=[interior_point(gt)])
    enc = _CountingEncoder(demo, monkeypatch)
    b = demo.predict(ps.embed_tiles(demo, img, disk=disk), points=[interior_point(gt)])
    assert enc.shapes == []  # a new session: the tile came from disk
    assert _iou(a.masks[a.best], b.masks[b.best]) > 0.99


EVERYTHING = dict(pred_iou_thresh=0.7, stability_score_thresh=0.85, points_per_side=16)


@pytest.fixture(scope="module")
def tiled_result(demo):
    img, lab = synthetic_image(3, (700, 700), style="sparse")
    tiled = ps.embed_tiles(demo, img)
    return img, lab, tiled, ps.segment_everything(demo, tiled, **EVERYTHING)


@pytest.mark.slow
def test_tiled_everything_finds_objects_cut_by_tiles_without_duplicates(tiled_result, demo):
    img, lab, tiled, res = tiled_result
    assert len(tiled.grid) == 16
    objs = res.objects
    masks = [o.mask for o in objs]
    for a in range(len(masks)):  # an object two tiles see whole is kept once
        for b in range(a + 1, len(masks)):
            if objs[a].crop_box != objs[b].crop_box:
                assert _iou(masks[a], masks[b]) <= 0.5, (a, b)
    # labels hold every object where it is the smallest; ids 1..n
    assert res.labels.dtype == np.int32 and res.labels.shape == (700, 700)
    assert set(np.unique(res.labels)) - {0} <= set(range(1, len(objs) + 1))
    for k, o in enumerate(objs):
        assert (o.mask[res.labels == k + 1]).all()
    cut = _cut_objects(lab, tiled)
    found = [max(_iou(m, lab == i) for m in masks) for i in cut]
    assert len(cut) >= 5 and np.mean(np.asarray(found) > 0.5) >= 0.6, found
    # the untiled generator on the squeezed image finds fewer
    fit = ps.segment_everything(demo, img, tiles=False, **EVERYTHING)
    ids = [i for i in range(1, lab.max() + 1) if (lab == i).sum() >= 40]

    def recall(r):
        return np.mean([max((_iou(o.mask, lab == i) for o in r.objects), default=0) > 0.5 for i in ids])
    assert recall(res) > recall(fit)


@pytest.mark.slow
def test_tiled_everything_is_chosen_for_big_images_and_progress_counts_tiles(demo):
    img, lab = synthetic_image(6, (1100, 300), style="sparse")
    steps = list(ps.segment_everything_iter(demo, img, **EVERYTHING, points_per_batch=128))
    n_tiles = len(ps.embed_tiles(demo, img).grid)
    assert n_tiles == 12 and steps[-1].total == 2 * n_tiles == steps[-1].done == len(steps) - 1
    res = steps[-1].result
    ids = [i for i in range(1, lab.max() + 1) if (lab == i).sum() >= 40]
    assert np.mean([max((_iou(o.mask, lab == i) for o in res.objects), default=0) > 0.5 for i in ids]) >= 0.5
    with pytest.raises(ValueError, match="crop_n_layers"):
        ps.segment_everything(demo, ps.embed_tiles(demo, img), crop_n_layers=1)
    with pytest.raises(ValueError, match="tiles must be"):
        ps.segment_everything(demo, img, tiles="yes")


@pytest.mark.slow
def test_the_session_tiles_a_huge_2d_image_and_says_which_tile_it_embeds(demo, monkeypatch):
    from napari_promptseg.session import AnnotationSession

    img, lab = synthetic_image(8, (1400, 1100), style="sparse")
    enc = _CountingEncoder(demo, monkeypatch)
    s = AnnotationSession(demo, img, autosave=False)
    statuses = []
    s.events.status.connect(statuses.append)
    assert s.ready and s.stack.tiled and enc.shapes == []  # ready at once: nothing embedded yet
    gt = lab == np.bincount(lab.ravel())[1:].argmax() + 1
    s.add_point(interior_point(gt))
    assert len(enc.shapes) == 1 and enc.shapes[0] == (256, 256)
    assert any(t.startswith("embedding tile ") for t in statuses)
    mask = s.preview_plane() > 0
    assert mask.shape == img.shape and _iou(mask, gt) > 0.5
    s.commit()
    assert _iou(np.asarray(s.target) > 0, gt) > 0.5
    # segment everything runs tile by tile into a new array; committed labels stay
    before = np.array(s.target)
    out = s.segment_everything(**EVERYTHING)
    assert np.asarray(out).shape == img.shape and len(np.unique(out)) > 5
    assert np.array_equal(np.asarray(s.target), before)


def test_huge_planes_of_a_stack_are_tiled_but_small_ones_and_stores_not(demo):
    from napari_promptseg.embed.stack import StackEmbeddings

    assert StackEmbeddings(demo, np.zeros((2, 1100, 300), np.uint8), tiles=True).tiled
    assert not StackEmbeddings(demo, np.zeros((2, 1000, 300), np.uint8), tiles=True).tiled  # < 4 tiles
    assert StackEmbeddings(demo, np.zeros((1100, 300), np.uint8), tiles=True).tiled
    assert not StackEmbeddings(demo, np.zeros((1100, 300), np.uint8)).tiled  # the API default


class _PlaneReads(np.ndarray):
    """A stack that records the shape of every read."""

    reads: list = []

    def __getitem__(self, item):
        out = np.asarray(self).__getitem__(item)
        type(self).reads.append(out.shape)
        return out


def test_a_stack_of_huge_planes_is_tiled_and_propagated_window_by_window(demo, monkeypatch):
    """A z-stack of 1400 x 1100 planes: a click embeds one tile of its plane (reading that window
    only), propagation embeds tiles of the other planes, never a squeezed whole plane, and follows
    the nucleus through the stack."""
    from napari_promptseg.session import AnnotationSession

    img, lab = synthetic_image(8, (1400, 1100), style="sparse")
    shifts = [0, 2, 4, 6]  # the nuclei drift 2 px per plane
    stack = np.stack([np.roll(img, s, axis=1) for s in shifts]).view(_PlaneReads)
    truth = np.stack([np.roll(lab, s, axis=1) for s in shifts])
    areas = np.bincount(lab.ravel())
    areas[0] = 0
    oid = int(areas.argmax())
    enc = _CountingEncoder(demo, monkeypatch)
    s = AnnotationSession(demo, stack, autosave=False)
    assert s.stack.tiled and enc.shapes == []
    _PlaneReads.reads = []
    s.set_plane((1,))
    s.add_point(interior_point(truth[1] == oid))
    assert enc.shapes == [(256, 256)]  # one tile of plane 1
    assert _PlaneReads.reads and max(r[0] * r[1] for r in _PlaneReads.reads) < 1400 * 1100 / 4
    assert _iou(s.preview_plane() > 0, truth[1] == oid) > 0.5
    assert s.propagate(0)
    assert all(max(shape) < 1100 for shape in enc.shapes)  # windows, never a whole plane
    preview = np.asarray(s.preview[...])
    for z in range(len(shifts)):
        assert _iou(preview[z] > 0, truth[z] == oid) > 0.5, z
    ids = s.commit()
    assert len(ids) == 1 and (np.asarray(s.target[...]) == ids[0]).any(axis=(1, 2)).all()


@pytest.mark.slow
def test_segment_everything_on_every_huge_plane_runs_tile_by_tile_with_3d_ids(demo, monkeypatch):
    from napari_promptseg.session import AnnotationSession

    img, lab = synthetic_image(4, (1100, 300), style="sparse")
    stack = np.stack([img, np.roll(img, 2, axis=0)])
    enc = _CountingEncoder(demo, monkeypatch)
    s = AnnotationSession(demo, stack, autosave=False)
    assert s.stack.tiled
    out = np.asarray(s.segment_everything("line", **EVERYTHING)[...])
    assert enc.shapes and all(shape == (256, 256) for shape in enc.shapes)  # tiles, at the model's scale
    assert len(enc.shapes) == 2 * len(s.stack.get((0,)).grid)  # every tile of both planes, once
    ids0, ids1 = set(np.unique(out[0])) - {0}, set(np.unique(out[1])) - {0}
    assert len(ids0) > 5 and len(ids0 & ids1) >= 0.8 * len(ids0)  # the same nuclei keep their ids


def test_auto_propagation_keeps_the_tiles_scale_with_a_memory_model():
    from types import SimpleNamespace

    from napari_promptseg.session.settings import PropagationSettings

    sam2_like = SimpleNamespace(name="sam2-like", supports_memory=True)
    auto, memory = PropagationSettings(), PropagationSettings(method="memory")
    assert auto.method_for(sam2_like) == "memory"
    assert auto.method_for(sam2_like, tiled=True) == "prompt"  # memory would squeeze whole frames
    assert memory.method_for(sam2_like, tiled=True) == "memory"  # the user's explicit choice
    assert isinstance(auto.options_for(sam2_like, tiled=True), ps.PromptPropagation)


def test_logits_of_one_plane_refine_the_next_plane_in_the_same_window(demo):
    """Propagation hands a plane's logits to the next plane as mask_input: the planes of a stack
    share the window memory, so they are decoded in the window they belong to."""
    from napari_promptseg.embed.stack import StackEmbeddings

    img, lab = synthetic_image(5, (1100, 1100), style="sparse")
    st = StackEmbeddings(demo, np.stack([img, img]), tiles=True)
    a, b = st.get((0,)), st.get((1,))
    areas = np.bincount(lab.ravel())
    areas[0] = 0
    gt = lab == areas.argmax()
    r, c = np.argwhere(gt).T
    mid = ((r.min() + r.max()) // 2, (c.min() + c.max()) // 2)
    # a box larger than a tile: decoded in a window around it, not in a tile
    p = demo.predict(a, box=[mid[0] - 150, mid[1] - 150, mid[0] + 150, mid[1] + 150])
    assert p.region not in {t.box for t in a.grid.tiles}
    # the next plane: a click (whose own tile differs) with the previous plane's logits
    q = demo.predict(b, points=[interior_point(gt)], mask_input=p.logits[p.best], multimask=False)
    assert q.region == p.region and q.region != b.region_for([interior_point(gt)], [1])


def test_grow_zero_decodes_in_the_prompts_tile_only(demo, monkeypatch):
    img, lab = synthetic_image(5, (700, 700), style="sparse")
    tiled = ps.embed_tiles(demo, img, grow=0)
    boxes = [t.box for t in tiled.grid.tiles]
    enc = _CountingEncoder(demo, monkeypatch)
    for i in _cut_objects(lab, tiled)[:4]:
        gt = lab == i
        assert demo.predict(tiled, points=[interior_point(gt)]).region in boxes
    assert all(s == (256, 256) for s in enc.shapes)


def test_pieces_of_a_bar_starting_inside_a_tile_overlap_are_joined():
    """Two tiles overlapping in columns 44-63 each see a piece of one bar that starts at column 60
    (inside the overlap): the pieces agree there and are one object. (A region starting before a
    piece's box once wrapped around as a negative index, and the pieces stayed apart.)"""
    from napari_promptseg.segmentation.everything_tiles import _join
    from napari_promptseg.segmentation.generator import Candidates

    tiles = [(94, 0, 158, 64), (94, 44, 158, 108)]
    c = Candidates()
    for crop, (c0, c1) in enumerate([(60, 63), (60, 107)]):
        c.score.append(0.9)
        c.stability.append(0.95)
        c.box.append(np.array([150, c0, 157, c1]))
        c.point.append((153.0, 61.0))
        c.piece.append(np.ones((8, c1 - c0 + 1), bool))
        c.crop.append(crop)
    joined = _join(c, tiles, 64)
    assert len(joined.score) == 1
    np.testing.assert_array_equal(joined.box[0], [150, 60, 157, 107])
    assert joined.piece[0].all() and joined.piece[0].shape == (8, 48)
