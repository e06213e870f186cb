"""The prompt method's stop rules on realistic z-stacks (napari_promptseg.propagation.stops), with
the shipped promptseg_demo model on small generated stacks: blurred ends, haze, nuclei stacked
along z. Each rule alone (with the mask rules of earlier releases) stops a front where the nucleus
ends and says why; the old rules stay available; the user's seeds bound an object; SAM 2's
memory tracking stops where its object score says the object is gone (random weights: the
mechanism only, not the quality)."""

from __future__ import annotations

import numpy as np
import pytest

import napari_promptseg as ps
from napari_promptseg.embed.cache import EmbeddingCache, embed_cached
from napari_promptseg.embed.frames import Frames
from napari_promptseg.propagation.options import OLD_STOPS, STOP_RULES
from napari_promptseg.propagation.seeds import parse_prompts, seed_masks
from napari_promptseg.propagation.stops import axis_spacing, mask_contrast
from napari_promptseg.training.fluorescence3d import Nucleus, fluorescence_stack

SHAPE = (16, 40, 40)
Z_STEP = 2.0


def nucleus(z, y=20.0, x=20.0, r=8.0, c=7.0, bright=1.0):
    return Nucleus(z=z, y=y, x=x, a=r, b=r, c=c, theta=0.0, bright=bright)


def scene(model, *nuclei):
    """A generated stack of these nuclei, its truth, scale and a cache holding every plane's
    embedding (made here, once: the tests then only decode)."""
    img, lab, scale = fluorescence_stack(SHAPE, seed=0, z_step=Z_STEP, nuclei=list(nuclei))
    cache = EmbeddingCache(len(img))
    frames = Frames(model, img, cache=cache)
    for k in range(len(img)):
        frames.embedding(k)
    return img, lab, scale, cache


@pytest.fixture(scope="module")
def lone(demo_model):
    """One nucleus in the middle of the stack (truth on planes 5..11)."""
    return scene(demo_model, nucleus(16.0))


@pytest.fixture(scope="module")
def pair(demo_model):
    """Two nuclei of one brightness, one right above the other (touching): a column."""
    return scene(demo_model, nucleus(9.0, c=6.0), nucleus(21.5, y=21.0, c=6.5))


def run(model, data, prompts, stops, **kw):
    """Labels and every front's stop ``{(object, direction): (plane, reason)}``."""
    img, _, scale, cache = data
    frames = Frames(model, img, cache=cache)
    seeds = seed_masks(model, frames.embedding, parse_prompts(prompts, frames.n, frames.plane_shape))
    out = np.zeros(img.shape, np.int32)
    for k, objs in seeds.items():
        for o, m in objs.items():
            out[k][m] = o
    why = {}
    opts = ps.PromptPropagation(stops=stops, **kw)
    for res in ps.propagate_iter(model, frames.embedding, frames.n, seeds, opts, planes=frames.plane,
                                 spacing=axis_spacing(scale, 0)):
        for o, m in res.masks.items():
            out[res.index][m] = o
        for o, r in res.stopped.items():
            why[(o, res.direction)] = (res.index, r)
    return out, why


def click(lab, k, i=1):
    rows, cols = np.nonzero(lab[k] == i)
    return {k: {i: {"points": [[int(rows.mean()), int(cols.mean())]]}}}


def planes_of(lab, i=1):
    return np.flatnonzero((lab == i).any(axis=(1, 2)))


def test_old_rules_run_on_over_the_haze_and_stay_available(demo_model, lone):
    _, lab, _, _ = lone
    z = planes_of(lab)
    old, _ = run(demo_model, lone, click(lab, 8), OLD_STOPS)
    got = planes_of(old)
    assert got[0] <= z[0] - 2 and got[-1] >= z[-1] + 2  # the blurred ends fool the mask rules
    assert ps.PromptPropagation().stops == STOP_RULES
    assert ps.PromptPropagation(stops=OLD_STOPS).stops == OLD_STOPS
    with pytest.raises(ValueError, match="stops must be"):
        ps.PromptPropagation(stops=("score", "psf"))
    with pytest.raises(ValueError, match="stops must be"):
        ps.PromptPropagation(stops="contrast")


def test_contrast_stops_at_the_nucleus_end(demo_model, lone):
    _, lab, _, _ = lone
    z = planes_of(lab)
    out, why = run(demo_model, lone, click(lab, 8), OLD_STOPS + ("contrast",))
    got = planes_of(out)
    assert abs(got[0] - z[0]) <= 1 and abs(got[-1] - z[-1]) <= 1
    assert why[(1, 1)] == (got[-1] + 1, "contrast") and why[(1, -1)] == (got[0] - 1, "contrast")


def test_contrast_from_a_seed_near_one_end(demo_model, lone):
    """A seed on the second plane of the nucleus: the peak is looked up beyond the seed, so the
    front towards the near end stops there too."""
    _, lab, _, _ = lone
    z = planes_of(lab)
    out, why = run(demo_model, lone, click(lab, z[1]), OLD_STOPS + ("contrast",))
    got = planes_of(out)
    assert abs(got[0] - z[0]) <= 1 and abs(got[-1] - z[-1]) <= 1
    assert {why[(1, 1)][1], why[(1, -1)][1]} == {"contrast"}


def test_mask_contrast_reads_a_crop_and_is_nan_without_a_ring():
    plane = np.full((30, 30), 100.0)
    plane[10:20, 10:20] = 300
    m = np.zeros((30, 30), bool)
    m[10:20, 10:20] = True
    assert mask_contrast(plane, m) == pytest.approx(200, abs=40)  # the 1-px blur softens the edge
    assert np.isnan(mask_contrast(plane, np.ones((30, 30), bool)))
    assert np.isnan(mask_contrast(plane, np.zeros((30, 30), bool)))
    rgb = np.repeat(plane[..., None], 3, axis=-1)
    assert mask_contrast(rgb, m) == pytest.approx(mask_contrast(plane, m))


def test_extent_cuts_a_column_of_two_nuclei(demo_model, pair):
    """Only the lower nucleus is prompted; no dip between the two: the extent (its depth at most
    max_depth x its width, planes 2 pixel widths apart) ends its front in the column."""
    _, lab, _, _ = pair
    z1, z2 = planes_of(lab, 1), planes_of(lab, 2)
    prompts = click(lab, int(z1.mean()))
    old, _ = run(demo_model, pair, prompts, OLD_STOPS)
    assert planes_of(old)[-1] >= z2[-1] - 1  # the old rules run through the upper nucleus
    out, why = run(demo_model, pair, prompts, OLD_STOPS + ("extent",))
    got = planes_of(out)
    width = 2 * np.sqrt((out[int(z1.mean())] == 1).sum() / np.pi)
    assert len(got) <= round(ps.PromptPropagation().max_depth * width / Z_STEP) + 1  # max_depth x width
    assert got[-1] <= z1[-1] + 3 < z2[-1] and why[(1, 1)] == (got[-1] + 1, "extent")
    assert got[0] <= z1[0]


def test_neighbour_splits_two_prompted_nuclei(demo_model, pair):
    _, lab, _, _ = pair
    z1, z2 = planes_of(lab, 1), planes_of(lab, 2)
    prompts = click(lab, int(z1.mean()), 1)
    prompts.update(click(lab, int(z2.mean()), 2))
    out, why = run(demo_model, pair, prompts, OLD_STOPS + ("neighbour",))
    top, bottom = planes_of(out, 1)[-1], planes_of(out, 2)[0]
    assert abs(top - z1[-1]) <= 1 and abs(bottom - z2[0]) <= 1 and top < bottom
    assert why[(1, 1)] == (top + 1, "neighbour") and why[(2, -1)] == (bottom - 1, "neighbour")


def test_between_two_seeds_of_one_object_no_image_rule_applies(demo_model, lone):
    """The user's word wins: seeded on both end planes, the object fills the span even where its
    contrast is low, and its fronts beyond the span stop where the image says."""
    _, lab, _, _ = lone
    z = planes_of(lab)
    prompts = click(lab, z[0])
    prompts.update(click(lab, z[-1]))
    out, why = run(demo_model, lone, prompts, STOP_RULES, min_contrast=0.95)  # only the peak passes
    got = planes_of(out)
    assert set(range(z[0], z[-1] + 1)) <= set(got)  # the whole span
    assert got[0] >= z[0] - 1 and got[-1] <= z[-1] + 1
    assert all(k < z[0] or k > z[-1] for k, _ in why.values())


def test_absent_planes_bound_an_object(demo_model, lone):
    _, lab, _, _ = lone
    out, _ = run(demo_model, lone, click(lab, 8), OLD_STOPS)
    img, _, scale, cache = lone
    cut = ps.propagate(demo_model, img, click(lab, 8), options=ps.PromptPropagation(stops=OLD_STOPS),
                       absent={1: [6, 11]}, cache=cache, scale=scale)
    assert set(planes_of(cut)) == {7, 8, 9, 10} and len(planes_of(out)) > 4


def test_the_defaults_reach_the_truth_on_the_lone_nucleus(demo_model, lone):
    img, lab, scale, cache = lone
    out = ps.propagate(demo_model, img, click(lab, 8), cache=cache, scale=scale)
    t, r = lab == 1, out == 1
    assert (t & r).sum() / (t | r).sum() >= 0.65
    with pytest.raises(ValueError, match="scale must be"):
        axis_spacing((2, 1), 0)
    assert axis_spacing((3.0, 1.5, 1.5), 0) == 2.0 and axis_spacing(None, 0) is None


# ---- SAM 2: the object score decides absence (random weights: the mechanism only) -------------
def test_memory_tracking_stops_where_the_object_score_says_it_is_gone(sam2_model, monkeypatch):
    """Random weights cannot find where a nucleus ends, so the object score is forced: absent on
    frame 3, present again on 4 and 5 (a track that would jump onto the next nucleus above). The
    default stop_after=1 ends the track on frame 3; None (Meta's behaviour) tracks on."""
    import torch

    run_one = sam2_model.net._run_single_frame_inference

    def score(**k):
        out, pred = run_one(**k)
        value = -5.0 if k["frame_idx"] == 3 else 5.0
        out["object_score_logits"] = torch.full_like(out["object_score_logits"], value)
        return out, pred

    monkeypatch.setattr(sam2_model.net, "_run_single_frame_inference", score)
    frames = np.zeros((6, 64, 64, 3), np.uint8)
    frames[:, 20:44, 20:44] = 200
    cache = EmbeddingCache(6)

    def emb(k):
        return embed_cached(sam2_model, frames[k], None, cache)
    assert ps.MemoryTracking().stop_after == 1
    seed = np.zeros((64, 64), np.int32)
    seed[22:42, 22:42] = 1
    steps = list(ps.propagate_iter(sam2_model, emb, 6, {0: {1: seed > 0}}))
    forward = {r.index: r for r in steps if r.direction == 1}
    assert forward[3].stopped == {1: "absent"} and 1 not in forward[3].masks
    assert 4 not in forward or 1 not in forward[4].masks
    assert 5 not in forward or 1 not in forward[5].masks
    never = ps.MemoryTracking(stop_after=None)
    steps = list(ps.propagate_iter(sam2_model, emb, 6, {0: {1: seed > 0}}, never))
    forward = {r.index: r for r in steps if r.direction == 1}
    assert not forward[3].stopped and 1 in forward[4].scores and 1 in forward[5].scores


# ---- the session (P in napari) passes the planes and the voxel size --------------------------
def test_the_session_stops_with_the_image_rules_and_the_voxel_size(demo_model, lone):
    """An AnnotationSession given the stack's scale stops the nucleus near its ends, as
    ``ps.propagate`` does; a NaN (time) axis or no scale leaves the extent rule out."""
    from napari_promptseg.session import AnnotationSession
    from napari_promptseg.session.propagation import check_scale, plane_spacing

    img, lab, scale, _ = lone
    s = AnnotationSession(demo_model, autosave=False)
    s.set_image(img, scale=scale)
    assert s.scale == tuple(float(v) for v in scale)
    s.set_plane((8,))
    rows, cols = np.nonzero(lab[8] == 1)
    s.add_point((int(rows.mean()), int(cols.mean())))
    assert s.propagate()
    got = np.asarray(s.preview[...]) > 0
    reached = np.flatnonzero(got.any(axis=(1, 2)))
    truth = planes_of(lab)
    assert set(truth) - set(reached) <= {truth[0], truth[-1]}  # the nucleus' planes are reached
    assert len(set(reached) - set(truth)) <= 2  # and the mask stops near its ends, not in the haze
    assert plane_spacing(check_scale((2, 0.5, 0.5), 3), 0) == 4.0
    assert plane_spacing(check_scale((float("nan"), 1, 1), 3), 0) is None and plane_spacing(None, 0) is None
    with pytest.raises(ValueError, match="scale must hold 3 numbers"):
        s.set_image(img, scale=(2, 1))
    with pytest.raises(ValueError, match="scale must hold"):
        check_scale((0, 1, 1), 3)


def test_a_front_that_climbs_out_of_a_dip_has_reached_another_object():
    """Contrast 1, 0.8, 0.6, 0.5, then 0.75 (the next nucleus above, never below min_contrast):
    the front stops where it climbs again after falling below FALL of its highest; a front from
    a seed near an end, climbing towards the middle, is not stopped."""
    from napari_promptseg.propagation.stops import ImageStops

    rr, cc = np.mgrid[:40, :40]
    disc = (rr - 20) ** 2 + (cc - 20) ** 2 < 36
    levels = [1.0, 0.8, 0.6, 0.5, 0.75, 1.0]

    def plane(k):
        return (100 + 1000 * levels[k] * disc).astype(np.float32)

    stops = ImageStops(("contrast",), plane, None, {0: {1: disc}}, len(levels), 0.4, None)
    assert [stops.after(1, k, disc) for k in range(1, 6)][:4] == [None, None, None, "contrast"]
    levels[:] = [0.5, 0.6, 0.8, 1.0, 1.0, 0.9]  # seeded near the low end: contrast rises, never falls
    stops = ImageStops(("contrast",), plane, None, {0: {1: disc}}, len(levels), 0.4, None)
    assert [stops.after(1, k, disc) for k in range(1, 6)] == [None] * 5


@pytest.fixture(scope="module")
def gap(demo_model):
    """A bright nucleus (planes 2-6) and, above it after a one-plane gap, a dimmer one (8-12)."""
    return scene(demo_model, nucleus(8.0, c=5.0), nucleus(19.5, c=5.0, bright=0.5))


def test_the_extent_ends_near_the_profile_so_the_dim_nucleus_above_is_not_taken(demo_model, gap):
    """Only the lower nucleus is prompted: its fronts end within BEYOND planes of where its
    intensity profile ends (the blur lets it reach the neighbour's first planes, not further;
    without that limit the contrast stops it one plane later)."""
    from napari_promptseg.propagation.stops import BEYOND

    img, lab, scale, cache = gap
    first = planes_of(lab, 1)
    k = int(first[len(first) // 2])
    out, why = run(demo_model, gap, click(lab, k), None)
    got = planes_of(out, 1)
    assert set(first) - set(got) <= {first[0], first[-1]}
    assert got.max() <= first[-1] + BEYOND + 1 and why[(1, 1)][1] == "extent"
