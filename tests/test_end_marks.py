""""The object ends here" (H): the user's word on where an object stops along a stack wins over
what propagation would do (issue 29)."""

from __future__ import annotations

import numpy as np

from tests.test_session_risks import session, two_bars_stack


def present_on(s, obj):
    return [k for k in range(s.lead_shape[0]) if (s.preview_plane((k,)) == obj).any()]


def test_a_marked_plane_stops_the_propagation_before_it():
    s = session(two_bars_stack(12), autosave=False)
    s.set_plane((2,))
    s.add_point((15, 40))
    s.propagate(0)
    assert present_on(s, 1) == list(range(12))  # the bar runs through every plane
    s.set_plane((8,))
    assert s.mark_end() is True
    assert "object 1 ends before plane 8" in s.statuses[-1]
    assert not (s.preview_plane((8,)) == 1).any()  # the marked plane shows none of it at once
    s.propagate(0)
    assert present_on(s, 1) == list(range(8))  # stops before the mark, the other way runs on


def test_marking_again_unmarks_and_a_positive_point_there_drops_the_mark():
    s = session(two_bars_stack(12), autosave=False)
    s.set_plane((2,))
    s.add_point((15, 40))
    assert s.mark_end((8,)) is True and s.mark_end((8,)) is False
    s.propagate(0)
    assert present_on(s, 1) == list(range(12))
    s.mark_end((8,))
    s.add_point((15, 40), plane=(8,))  # the user says it is there after all
    s.propagate(0)
    assert present_on(s, 1) == list(range(12))
    assert s.mark_end((8,)) is False  # a mark where its point is: refused, with what to do
    assert "delete them first" in s.statuses[-1]


def test_marks_survive_the_layers_prompts_and_belong_to_one_object():
    s = session(two_bars_stack(12), autosave=False)
    s.set_plane((2,))
    s.add_point((15, 40))
    s.new_object()
    s.add_point((40, 40))
    s.select_object(1)
    s.mark_end((6,))
    s.set_prompts(s.prompts)  # the napari bridge replaces the prompts from its layers
    s.propagate(0)
    assert present_on(s, 1) == list(range(6)) and present_on(s, 2) == list(range(12))
    s.clear()
    s.add_point((15, 40))
    s.propagate(0)
    assert present_on(s, 1) == list(range(12))  # clear() forgets the marks


def test_a_2d_image_has_no_end_marks():
    s = session(two_bars_stack(1)[0], autosave=False)
    assert s.mark_end() is False and "needs a z-stack" in s.statuses[-1]


def test_the_status_says_where_and_why_each_object_stopped():
    img = two_bars_stack(12)
    img[7:, 10:20] = 1000  # object 1's bar ends after plane 6
    s = session(img, autosave=False)
    s.set_plane((2,))
    s.add_point((15, 40))
    s.propagate(0)
    assert present_on(s, 1) == list(range(7))
    done = s.statuses[-1]
    assert done.startswith("propagation done (object 1 stopped at 7 (") and "H: the object ends here" in done
    assert np.asarray(s.preview).max() == 1
