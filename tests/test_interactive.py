"""Which prompts form which object; decoding rules; the preview; mask prompts."""

import numpy as np
import pytest

from napari_promptseg.embeddings import EmbeddingCache, embed_cached, embedding_key
from napari_promptseg.interactive import bounding_box, compose_preview, decode_objects, group_prompts
from tests.component_model import ComponentModel, blob_image


def test_points_without_boxes_form_one_object_only_with_a_positive_point():
    objs = group_prompts([[1, 2], [3, 4]], [1, 0], np.zeros((0, 4)))
    assert len(objs) == 1 and len(objs[0].points) == 2 and objs[0].box is None
    assert group_prompts([[1, 2]], [0], []) == []
    assert group_prompts(np.zeros((0, 2)), [], []) == []
    assert objs[0].ambiguous is False
    assert group_prompts([[1, 2]], [1], [])[0].ambiguous


def test_one_box_takes_all_points_several_boxes_split_them():
    one = group_prompts([[50, 50], [5, 5]], [1, 0], [[0, 0, 10, 10]])
    assert len(one) == 1 and len(one[0].points) == 2
    boxes = [[0, 0, 10, 10], [20, 20, 30, 30], [5, 5, 25, 25]]
    objs = group_prompts([[5, 5], [25, 25], [100, 100]], [1, 0, 1], boxes)
    assert len(objs) == 3
    np.testing.assert_array_equal(objs[0].points, [[5, 5]])  # first containing box wins
    np.testing.assert_array_equal(objs[1].points, [[25, 25]])
    assert len(objs[2].points) == 0  # the outside point is not used
    with pytest.raises(ValueError, match="labels"):
        group_prompts([[1, 1]], [1, 1], [])


def test_decode_rules_and_preview():
    img, truth = blob_image()
    model = ComponentModel()
    emb = model.embed(img)
    objs = group_prompts([[25, 30]], [1], [])
    (pred,) = decode_objects(model, emb, objs)
    assert len(pred.masks) == 3 and model.calls[-1]["multimask"]
    (pred2,) = decode_objects(model, emb, objs, {0: pred.logits[0]})
    assert len(pred2.masks) == 1 and model.calls[-1]["mask_input"] is not None
    preview = compose_preview([truth == 1, truth > 0], truth.shape)
    assert set(np.unique(preview)) == {0, 1, 2} and (preview[truth == 1] == 1).all()


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
