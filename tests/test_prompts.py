"""Prompt validation: every bad input is a clear error; documented leniency is tested too."""

import numpy as np
import pytest

from napari_promptseg.core.prompts import make_prompt

SHAPE, LOW = (100, 200), (256, 256)


def test_points_default_to_positive_labels():
    p = make_prompt(SHAPE, LOW, points=[[10, 20], [30, 40]])
    np.testing.assert_array_equal(p.labels, [1, 1])
    assert p.points.shape == (2, 2) and p.box is None and p.mask_input is None


def test_single_point_as_flat_pair():
    p = make_prompt(SHAPE, LOW, points=[10, 20], labels=[0])
    assert p.points.shape == (1, 2) and p.labels.tolist() == [0]


def test_bool_labels_are_accepted():
    p = make_prompt(SHAPE, LOW, points=[[1, 1], [2, 2]], labels=np.array([True, False]))
    assert p.labels.tolist() == [1, 0]


@pytest.mark.parametrize("labels", [[2, 1], [-1, 1], [0.5, 1]])
def test_labels_must_be_0_or_1(labels):
    with pytest.raises(ValueError, match="labels must be 1"):
        make_prompt(SHAPE, LOW, points=[[1, 1], [2, 2]], labels=labels)


def test_label_count_must_match():
    with pytest.raises(ValueError, match="2 points but 1 labels"):
        make_prompt(SHAPE, LOW, points=[[1, 1], [2, 2]], labels=[1])


def test_labels_without_points():
    with pytest.raises(ValueError, match="labels were given without points"):
        make_prompt(SHAPE, LOW, labels=[1], box=[0, 0, 5, 5])


@pytest.mark.parametrize("pt", [[-1, 5], [5, 200], [100, 5], [5, -0.6]])
def test_points_outside_the_image(pt):
    with pytest.raises(ValueError, match="outside the image"):
        make_prompt(SHAPE, LOW, points=[pt])


def test_points_on_the_pixel_edges_are_inside():
    p = make_prompt(SHAPE, LOW, points=[[-0.5, -0.5], [99.5, 199.5]])
    assert len(p.points) == 2


@pytest.mark.parametrize("pts", [[[1, 2, 3]], [[np.nan, 1]], "abc"])
def test_malformed_points(pts):
    with pytest.raises(ValueError, match="points"):
        make_prompt(SHAPE, LOW, points=pts)


def test_box_corners_in_any_order():
    boxes = [[10, 20, 50, 80], [50, 80, 10, 20], [10, 80, 50, 20], [50, 20, 10, 80]]
    out = {tuple(make_prompt(SHAPE, LOW, box=b).box) for b in boxes}
    assert out == {(10, 20, 50, 80)}


def test_box_partly_outside_is_clipped():
    p = make_prompt(SHAPE, LOW, box=[-30, 150, 50, 400])
    np.testing.assert_allclose(p.box, [-0.5, 150, 50, 199.5])


@pytest.mark.parametrize(
    "box, match",
    [([500, 500, 600, 600], "entirely outside"), ([10, 10, 10, 50], "zero height"),
     ([1, 2, 3], "4 numbers"), ([0, 0, np.inf, 4], "NaN or inf")],
)
def test_bad_boxes(box, match):
    with pytest.raises(ValueError, match=match):
        make_prompt(SHAPE, LOW, box=box)


def test_empty_prompt():
    with pytest.raises(ValueError, match="empty prompt"):
        make_prompt(SHAPE, LOW)
    with pytest.raises(ValueError, match="empty prompt"):
        make_prompt(SHAPE, LOW, points=np.zeros((0, 2)))


def test_mask_input_shapes():
    good = np.zeros(LOW, np.float32)
    assert make_prompt(SHAPE, LOW, mask_input=good).mask_input.shape == (1, 256, 256)
    assert make_prompt(SHAPE, LOW, mask_input=good[None]).mask_input.shape == (1, 256, 256)
    with pytest.raises(ValueError, match=r"mask_input must have shape \(256, 256\)"):
        make_prompt(SHAPE, LOW, mask_input=np.zeros((100, 200), np.float32))
    with pytest.raises(ValueError, match="logits"):
        make_prompt(SHAPE, LOW, mask_input=np.zeros(LOW, bool))
    with pytest.raises(ValueError, match="NaN"):
        make_prompt(SHAPE, LOW, mask_input=np.full(LOW, np.nan, np.float32))
