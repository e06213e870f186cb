"""The session's preview composes only where objects were or are: a decode on a big plane must not
build and write a whole new plane (issue 28)."""

from __future__ import annotations

import tracemalloc
from types import SimpleNamespace

import numpy as np

from napari_promptseg.session.planes import ObjectDecode, PlaneDecode
from napari_promptseg.session.preview import Preview


def decoded(*masks) -> PlaneDecode:
    pred = [SimpleNamespace(mask=lambda i, m=m: m, logits=None) for m in masks]
    return PlaneDecode({i + 1: ObjectDecode(b"", None, p) for i, p in enumerate(pred)})


def disk(shape, r, c, radius=20) -> np.ndarray:
    rr, cc = np.ogrid[:shape[0], :shape[1]]
    return (rr - r) ** 2 + (cc - c) ** 2 <= radius ** 2


def test_a_decode_on_a_big_plane_composes_its_box_only():
    shape = (4000, 4000)
    view = Preview(shape, 0)
    first, moved = disk(shape, 500, 500), disk(shape, 520, 560)
    view.show((), decoded(first), None, None)
    tracemalloc.start()
    view.show((), decoded(moved), None, None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1_000_000  # a whole plane's compose took 16 MB per array (3 of them)
    assert (view.array == 1).sum() == moved.sum() and not view.array[first & ~moved].any()


def test_paint_and_objects_outside_the_new_box_are_removed_when_a_plane_is_composed_again():
    shape = (300, 400)
    view = Preview(shape, 0)
    view.show((), decoded(disk(shape, 50, 50)), None, None)
    view.array[250:260, 300:320] = 2  # the user paints far from the object
    view.edited({()})
    view.painted.clear()  # as clear() does before composing the plane again
    view.show((), None, None, None)
    assert not view.array.any()


def test_a_stack_plane_and_propagated_objects():
    shape = (3, 200, 300)
    view = Preview(shape, 1)
    prop = np.zeros(shape[1:], np.int32)
    prop[150:170, 200:230] = 4
    view.show((1,), decoded(disk(shape[1:], 40, 40, 10)), prop, None)
    plane = view.plane((1,))
    assert (plane == 4).sum() == 600 and (plane == 1).sum() == disk(shape[1:], 40, 40, 10).sum()
    view.show((1,), None, None, None)
    assert not view.plane((1,)).any() and not view.plane((0,)).any()
