"""The annotation session on z-stacks, without a viewer: propagation, commit and undo, objects
across planes, corrections, cancel. Deterministic backend (tests/component_model.py), synchronous
scheduler unless a test steps a propagation by hand."""

import numpy as np
import pytest

from napari_promptseg.session import AnnotationSession, run_now
from tests.component_model import ComponentModel

BG, FG = 1000, 30000


def sphere_stack(n=20, shape=(120, 160), center=(10, 60, 80), radius=8.0, zscale=4.0):
    """uint16 (n, H, W) stack with a ball (physical radius ``radius`` in x/y pixels, z spacing
    ``zscale``) and a disjoint bright bar on every plane (a second object); truth ids 1 (ball), 2."""
    z, y, x = np.ogrid[:n, : shape[0], : shape[1]]
    ball = ((z - center[0]) * zscale) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2 <= (radius * 4) ** 2
    truth = np.zeros((n, *shape), np.int32)
    truth[ball] = 1
    truth[:, 5:15, 10:150] = 2
    img = np.where(truth > 0, FG, BG).astype(np.uint16)
    return img, truth


def tube_stack(n=20):
    """One bright cylinder through planes 3..16 (a bool truth)."""
    img = np.full((n, 120, 160), BG, np.uint16)
    zz, yy, xx = np.ogrid[:n, :120, :160]
    tube = (zz >= 3) & (zz <= 16) & ((yy - 60) ** 2 + (xx - 80) ** 2 <= 20**2)
    img[tube] = FG
    return img, tube


def two_tubes(n=20):
    """Two bright cylinders through planes 3..16 (ids 1 left, 2 right)."""
    img = np.full((n, 120, 160), BG, np.uint16)
    truth = np.zeros(img.shape, np.int32)
    zz, yy, xx = np.ogrid[:n, :120, :160]
    for i, cx in enumerate((45, 115), 1):
        truth[(zz >= 3) & (zz <= 16) & ((yy - 60) ** 2 + (xx - cx) ** 2 <= 18**2)] = i
    img[truth > 0] = FG
    return img, truth


def iou(a, b):
    return np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum())


def arr(a) -> np.ndarray:
    """A (lazy zarr) preview or labels array read whole."""
    return np.asarray(a[...])


def session(img, model=None, **kwargs) -> AnnotationSession:
    return AnnotationSession(model or ComponentModel(), img, autosave=False, **kwargs)


class StepScheduler:
    """Runs every job at once (as ``run_now``) except propagations, which the test steps by hand:
    ``take(n)`` computes n steps, ``apply(items)`` hands them to the session, ``finish()`` ends the
    job as a worker would (its result handler runs even after a cancel)."""

    def __init__(self) -> None:
        self.job = None
        self._it = None

    def __call__(self, job) -> None:
        if job.on_step is None:
            run_now(job)
        else:
            self.job, self._it = job, job.iterate()

    def take(self, n: int) -> list:
        return [next(self._it) for _ in range(n)]

    def apply(self, items) -> None:
        for item in items:
            self.job.on_step(item)

    def finish(self) -> None:
        for item in self._it:  # stops at once when the job was cancelled
            self.job.on_step(item)
        self.job.on_done(None)


@pytest.mark.parametrize("overwrite", [False, True])
def test_propagation_fills_the_stack_commits_and_undoes(overwrite):
    img, truth = sphere_stack()
    s = session(img)
    target = s.ensure_target()  # the session's own labels: lazy for a stack, nothing allocated
    assert target.nchunks_initialized == 0
    target[15, 50:70, 70:90] = 9  # a committed object inside the ball's plane 15
    before = arr(target)
    s.configure(overwrite=overwrite)
    s.set_plane((10,))
    s.add_point((60, 80))
    assert s.propagate(0)
    assert not s.propagating  # synchronous: done when it returns
    preview = arr(s.preview)
    ball = truth == 1
    expect = ball if overwrite else ball & (before == 0)
    # the default prompt (box + the previous plane's low-res logits) follows the ball; the test
    # backend's coarse logits cells shave its edges, and a tip under min_area pixels is dropped
    assert iou(preview > 0, expect) >= 0.9
    assert not (preview > 0)[~ball].any()  # no bleeding into the bar, nothing past the ball's end
    planes = np.flatnonzero((preview > 0).any(axis=(1, 2)))
    assert planes.min() <= 4 and planes.max() >= 16  # the ball spans planes 2..18
    if not overwrite:
        assert not preview[before > 0].any()  # the committed object is left out of the preview
    np.testing.assert_array_equal(arr(target), before)  # nothing committed yet
    ids = s.commit()
    assert len(ids) == 1 and ids[0] != 9
    labels = arr(target)
    np.testing.assert_array_equal(labels == ids[0], preview > 0)  # one id for the 3D object
    assert (labels[15, 50:70, 70:90] == (ids[0] if overwrite else 9)).all()
    assert not arr(s.preview).any() and not s.prompts  # a commit clears the prompts and the preview
    s.undo()
    np.testing.assert_array_equal(arr(target), before)


def test_preview_and_labels_of_a_stack_are_lazy():
    img, truth = sphere_stack()
    s = session(img)
    assert s.preview.nchunks_initialized == 0 and s.target is None  # nothing allocated up front
    s.set_plane((10,))
    s.add_point((60, 80))
    assert s.preview.nchunks_initialized == 1  # only the prompted plane
    s.commit()
    assert s.target.nchunks_initialized == 1
    np.testing.assert_array_equal(np.asarray(s.target[10]) > 0, truth[10] == 1)


def test_two_prompted_planes_and_a_correction():
    """Two prompted planes fill the stack between them and beyond; a plane prompted with only a
    negative point says "not here": propagation neither writes it nor runs past it."""
    img, tube = tube_stack()
    # the whole bright object under the previous logits, cropped by the box (see ComponentModel)
    s = session(img, ComponentModel(mask_input="objects"))
    s.add_point((60, 80), plane=(5,))
    s.add_point((60, 80), plane=(14,))  # no O in between: the same object on both planes
    assert set(s.prompts) == {(5,), (14,)} and all(set(o) == {1} for o in s.prompts.values())
    s.propagate(0)
    np.testing.assert_array_equal(arr(s.preview) > 0, tube)  # between the planes, and on to both ends
    assert set(np.unique(arr(s.preview))) == {0, 1}
    s.add_point((60, 80), positive=False, plane=(10,))  # object 1 is not on plane 10
    assert not s.preview_plane((10,)).any()  # its propagated mask leaves that plane at once
    assert s.preview_plane((9,)).any() and s.preview_plane((11,)).any()
    s.propagate(0)
    expect = tube.copy()
    expect[10] = False
    np.testing.assert_array_equal(arr(s.preview) > 0, expect)


def test_an_absent_plane_stops_propagation_before_it():
    img, tube = tube_stack()
    s = session(img, ComponentModel(mask_input="objects"))
    s.add_point((60, 80), plane=(8,))
    s.add_point((60, 80), positive=False, plane=(12,))  # only negative: absent from plane 12
    s.propagate(0)
    got = (arr(s.preview) > 0).any(axis=(1, 2))
    np.testing.assert_array_equal(np.flatnonzero(got), np.arange(3, 12))  # from 8 down to 3, up to 11


@pytest.mark.parametrize("new_object", [False, True])
def test_cells_clicked_on_two_planes_without_propagation(new_object):
    """Objects are explicit: cells clicked on two planes without O are one object (one 3D label);
    with O in between they are two labels. (The old widget made two labels either way.)"""
    img, truth = two_tubes()
    s = session(img, ComponentModel(mask_input="objects"))
    s.add_point((60, 45), plane=(4,))  # cell A on plane 4
    if new_object:
        assert s.new_object() == 2
    s.add_point((60, 115), plane=(12,))  # cell B on plane 12
    ids = s.commit()
    labels = arr(s.target)
    assert len(ids) == (2 if new_object else 1)
    np.testing.assert_array_equal(labels[4] > 0, truth[4] == 1)
    np.testing.assert_array_equal(labels[12] > 0, truth[12] == 2)
    a, b = set(np.unique(labels[4])) - {0}, set(np.unique(labels[12])) - {0}
    assert (a != b) if new_object else (a == b == {ids[0]})
    assert set(np.unique(labels)) == {0, *ids}  # nothing on the planes not prompted


def test_correcting_one_object_keeps_the_other_propagated_objects():
    img, truth = two_tubes()
    sched = StepScheduler()
    s = session(img, ComponentModel(mask_input="objects"), scheduler=sched, prefetch=0)
    s.add_box((40, 25, 80, 65), plane=(5,))  # one box per tube on plane 5: objects 1 and 2
    s.new_object()
    s.add_box((40, 95, 80, 135), plane=(5,))
    s.propagate(0)
    sched.finish()
    assert not s.propagating
    np.testing.assert_array_equal(arr(s.preview), truth)
    # to correct the right tube on plane 12, select it first; the left one stays on plane 12
    s.select_object(2)
    s.add_point((60, 115), plane=(12,))
    assert set(s.prompts[(12,)]) == {2}
    np.testing.assert_array_equal(s.preview_plane((12,)), truth[12])
    # re-propagating from planes 5 and 12 and cancelled midway: the planes it did not reach keep
    # the earlier result
    s.propagate(0)
    sched.apply(sched.take(2))
    assert s.propagating
    s.cancel_propagation()
    sched.finish()
    assert not s.propagating
    np.testing.assert_array_equal(arr(s.preview), truth)
    s.propagate(0)
    sched.finish()
    np.testing.assert_array_equal(arr(s.preview), truth)  # both objects through the whole stack
    ids = s.commit()
    labels = arr(s.target)
    assert len(ids) == 2  # one 3D label per tube
    for i in ids:
        z = np.flatnonzero((labels == i).any(axis=(1, 2)))
        assert (z.min(), z.max()) == (3, 16)


def test_a_correction_on_an_unselected_object_makes_a_new_object_there():
    """A click on a propagated plane belongs to the current object, not to the one under it:
    here object 2 was never selected, so the click adds to object 1 (behaviour changed on purpose:
    the old widget gave the click the id of the object it landed on)."""
    img, truth = two_tubes()
    s = session(img, ComponentModel(mask_input="objects"))
    s.add_box((40, 25, 80, 65), plane=(5,))
    s.new_object()
    s.add_box((40, 95, 80, 135), plane=(5,))
    s.propagate(0)
    s.select_object(1)
    s.add_point((60, 115), plane=(12,))  # on the right tube, with object 1 current
    plane = s.preview_plane((12,))
    assert set(s.prompts[(12,)]) == {1}
    np.testing.assert_array_equal(plane == 1, truth[12] == 2)  # object 1 is the right tube here
    assert not (plane == 2).any()  # and object 2's propagated mask there is covered by it


def test_cancel_mid_propagation_keeps_labels_and_a_consistent_preview():
    img, truth = sphere_stack()
    sched = StepScheduler()
    # exact masks: a plane is whole or empty
    s = session(img, ComponentModel(mask_input="objects"), scheduler=sched, prefetch=0)
    target = s.ensure_target()
    target[0, :3, :3] = 7  # a committed object elsewhere
    before = arr(target)
    progress = []
    s.events.progress.connect(lambda done, total: progress.append((done, total)))
    s.set_plane((10,))
    s.add_point((60, 80))
    assert s.propagate(0) and s.propagating
    items = sched.take(4)
    sched.apply(items[:3])
    assert [d for d, _ in progress] == [1, 2, 3]
    s.cancel_propagation()
    assert not s.propagating
    assert progress[-1][0] == progress[-1][1]  # the progress bar ends
    shown = arr(s.preview)
    sched.apply(items[3:])  # a step that was in flight must not land after the cancel
    sched.finish()
    preview = arr(s.preview)
    np.testing.assert_array_equal(preview, shown)
    done = (preview > 0).any(axis=(1, 2))
    assert done.sum() == 4  # the prompted plane and the 3 steps
    assert done.sum() < (truth == 1).any(axis=(1, 2)).sum()
    for z in np.flatnonzero(done):  # every written plane is whole
        np.testing.assert_array_equal(preview[z] > 0, truth[z] == 1)
    np.testing.assert_array_equal(arr(target), before)
    ids = s.commit()  # what was propagated before the cancel can be kept
    assert len(ids) == 1
    np.testing.assert_array_equal(arr(target) == ids[0], preview > 0)


def test_commit_is_refused_while_a_propagation_runs():
    img, truth = sphere_stack()
    sched = StepScheduler()
    s = session(img, ComponentModel(mask_input="objects"), scheduler=sched, prefetch=0)
    status = []
    s.events.status.connect(status.append)
    s.set_plane((10,))
    s.add_point((60, 80))
    s.propagate(0)
    sched.apply(sched.take(1))
    assert s.commit() == ()
    assert "propagation is running" in status[-1]
    assert s.target is None
    sched.finish()
    assert len(s.commit()) == 1


def test_status_on_a_propagated_plane_names_its_propagated_objects():
    img, truth = sphere_stack()
    s = session(img)
    status = []
    s.events.status.connect(status.append)
    s.set_plane((10,))
    s.add_point((60, 80))
    s.propagate(0)
    s.set_plane((13,))
    assert s.preview_plane((13,)).any()
    assert "1 propagated object" in status[-1]


def test_2d_image_refuses_propagation():
    img = np.full((40, 40), BG, np.uint16)
    img[10:20, 10:20] = FG
    s = session(img)
    status = []
    s.events.status.connect(status.append)
    s.add_point((15, 15))
    assert s.propagate(0) is False and not s.propagating
    assert "2D" in status[-1]
