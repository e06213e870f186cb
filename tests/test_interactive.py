"""Prompts per object, refinement rule, preview composition; mask prompts."""

import numpy as np
import pytest

from napari_promptseg.core.geometry import bounding_box
from napari_promptseg.core.prompts import Prompt
from napari_promptseg.embed.cache import EmbeddingCache, embed_cached, embedding_key
from napari_promptseg.session.planes import (
    ObjectDecode,
    PlaneDecode,
    compose,
    extends,
    merge_prompts,
    present,
    signature,
)
from tests.component_model import ComponentModel, blob_image


def test_prompts_are_grouped_by_object_and_negative_only_means_absent():
    pts = np.array([[1, 2], [3, 4], [5, 6]], float)
    objs = merge_prompts(pts, np.array([1, 0, 0]), np.array([1, 1, 2]),
                         np.array([[0, 0, 9, 9], [1, 1, 8, 8]], float), np.array([3, 3]))
    assert sorted(objs) == [1, 2, 3]
    assert len(objs[1].points) == 2 and objs[1].box is None and present(objs[1])
    assert not present(objs[2])  # only a negative point: the object is not on this plane
    np.testing.assert_array_equal(objs[3].box, [1, 1, 8, 8])  # one box per object: the last one
    assert objs[3].ambiguous is False and Prompt(pts[:1], np.ones(1, np.int32)).ambiguous


def test_added_points_refine_a_moved_point_starts_afresh():
    one = Prompt(np.array([[5.0, 5.0]]), np.array([1], np.int32))
    two = Prompt(np.array([[5.0, 5.0], [9.0, 9.0]]), np.array([1, 0], np.int32))
    moved = Prompt(np.array([[6.0, 5.0], [9.0, 9.0]]), np.array([1, 0], np.int32))
    assert extends(two, one) and not extends(moved, one) and not extends(one, two)
    assert signature(two) != signature(moved)


def test_decoded_objects_win_over_propagated_ones_and_absent_objects_leave():
    img, truth = blob_image()
    model = ComponentModel()
    emb = model.embed(img)
    o = Prompt(np.array([[25.0, 30.0]]), np.array([1], np.int32))
    dec = PlaneDecode({2: ObjectDecode(signature(o), o, model.predict(emb, points=o.points))})
    propagated = np.where(truth > 0, truth, 0).astype(np.uint32)  # objects 1, 2, 3 propagated here
    plane = compose(dec, propagated, truth.shape)
    assert (plane[truth == 1] == 2).all()  # object 2 was prompted onto the first blob
    assert not (plane == 2)[truth == 2].any() and (plane[truth == 3] == 3).all()
    gone = Prompt(np.array([[70.0, 30.0]]), np.array([0], np.int32))
    dec.objects[3] = ObjectDecode(signature(gone), gone, None)  # negative only: absent here
    assert not (compose(dec, propagated, truth.shape) == 3).any()


def test_mask_prompt_round_trips_through_the_model():
    img, truth = blob_image()
    model = ComponentModel()
    emb = model.embed(img)
    logits = model.mask_prompt(emb, truth == 3)
    assert logits.shape == model.low_res_shape and logits.dtype == np.float32
    pred = model.predict(emb, mask_input=logits, multimask=False)
    assert (pred.masks[0] & (truth == 3)).sum() / (truth == 3).sum() > 0.9
    assert not pred.masks[0][truth == 1].any()
    with pytest.raises(ValueError, match="shape"):
        model.mask_prompt(emb, np.zeros((5, 5), bool))


def test_mask_prompt_geometry_for_sam(tiny_model):
    img, truth = blob_image((120, 160))
    emb = tiny_model.embed(img)
    logits = tiny_model.mask_prompt(emb, truth == 3)
    h, w = tiny_model.low_res_shape
    # the image fills the top 3/4 of the square input; the padding is background
    assert (logits[int(h * 0.76):] < 0).all()
    r, c = np.argwhere(logits > 0).mean(0)
    assert abs(r / h * 160 - 45) < 4 and abs(c / w * 160 - 115) < 4  # object 3's centre (45, 115)


def test_bounding_box():
    m = np.zeros((10, 10), bool)
    assert bounding_box(m) is None
    m[2:5, 3:8] = True
    np.testing.assert_array_equal(bounding_box(m), [2, 3, 4, 7])


def test_embedding_cache_keys_on_pixels_and_model():
    img, _ = blob_image()
    model = ComponentModel()
    cache = EmbeddingCache(2)
    a = embed_cached(model, img, (1000, 30000), cache)
    assert embed_cached(model, img.copy(), (1000, 30000), cache) is a and model.embed_calls == 1
    b = embed_cached(model, img, (0, 65535), cache)  # another window: other model input
    assert b is not a and model.embed_calls == 2
    rgb_same = embedding_key(model, np.zeros((2, 2, 3), np.uint8))
    other = ComponentModel()
    other.checkpoint_id = "components-v2"
    assert embedding_key(other, np.zeros((2, 2, 3), np.uint8)) != rgb_same
    embed_cached(model, img[:60], (1000, 30000), cache)
    assert len(cache) == 2  # least recently used dropped
