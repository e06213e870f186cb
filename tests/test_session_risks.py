"""The session's "nothing lost" rules, without a viewer: each test is one of the risks found in the
old widget (issue 13), and fails on the old design."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from napari_promptseg.session import AnnotationSession, run_now
from tests.component_model import ComponentModel, blob_image

BG, FG = 1000, 30000


def two_bars_stack(n=12, shape=(60, 80)):
    """uint16 (n, H, W): two disjoint bars on every plane (objects at rows 10-20 and 35-45)."""
    img = np.full((n, *shape), BG, np.uint16)
    img[:, 10:20, 10:70] = FG
    img[:, 35:45, 10:70] = FG
    return img


class ManualScheduler:
    """Collects jobs; the test decides when each runs (deterministic asynchrony, no Qt)."""

    def __init__(self):
        self.jobs = []
        self.steps = {}

    def __call__(self, job):
        self.jobs.append(job)

    def pop(self, kind):
        job = next(j for j in self.jobs if j.kind == kind)
        self.jobs.remove(job)
        return job

    def run(self, kind):
        job = self.pop(kind)
        try:
            result = job.compute()
        except Exception as err:  # noqa: BLE001 - handed to the session like a worker does
            job.on_error(err)
            return
        job.on_done(result)

    def run_all(self, kind):
        while any(j.kind == kind for j in self.jobs):
            self.run(kind)

    def step(self, n):
        """Run ``n`` steps of the (first) propagation job."""
        job = next(j for j in self.jobs if j.kind == "propagate")
        it = self.steps.setdefault(id(job), job.iterate())
        for _ in range(n):
            try:
                job.on_step(next(it))
            except StopIteration:
                self.jobs.remove(job)
                job.on_done(None)
                return

    def finish(self):
        self.step(10**6)


def session(stack=None, scheduler=None, **kw):
    s = AnnotationSession(ComponentModel(), two_bars_stack() if stack is None else stack,
                          scheduler=scheduler or run_now, **kw)
    s.statuses = []
    s.events.status.connect(s.statuses.append)
    return s


def labels_of(s):
    return np.asarray(s.target[...])


# risk 1 -------------------------------------------------------------------------------------------
def test_window_or_model_change_keeps_a_propagated_object_one_3d_label():
    s = session()
    s.set_plane((5,))
    s.add_point((15, 40))
    s.new_object()
    s.add_point((40, 40))
    assert s.propagate(0)
    s.set_window((0, 40000))  # the user moved the contrast sliders: new embeddings
    s.set_model(ComponentModel())  # and picked another model
    ids = s.commit()
    assert len(ids) == 2  # two objects, each one label through the whole stack
    lab = labels_of(s)
    for k in range(lab.shape[0]):
        assert set(np.unique(lab[k])) == {0, *ids}
    assert (lab[:, 15, 40] == lab[0, 15, 40]).all()


def test_correction_after_a_window_change_keeps_the_other_propagated_objects():
    s = session()
    s.set_plane((5,))
    s.add_point((15, 40))
    s.new_object()
    s.add_point((40, 40))
    s.propagate(0)
    s.set_window((0, 40000))
    s.set_plane((9,))
    s.select_object(1)
    s.add_point((15, 40), positive=False)  # object 1 is not on plane 9
    plane = s.preview_plane((9,))
    assert not (plane == 1).any() and (plane == 2).sum() > 0  # object 2 stays


# risk 2 -------------------------------------------------------------------------------------------
def test_prompts_added_during_a_propagation_stay_and_are_committed():
    sch = ManualScheduler()
    s = session(scheduler=sch)
    sch.run_all("embed")
    s.set_plane((2,))
    s.add_point((15, 40))
    sch.run_all("decode")
    assert s.propagate(0)
    sch.step(3)  # planes 3, 4, 5 of the forward pass
    s.set_plane((9,))
    s.new_object()
    s.add_point((40, 40))  # a new object, prompted on a plane the run has not reached
    sch.run_all("decode")
    assert (s.preview_plane((9,)) == 2).any()
    sch.finish()
    plane9 = s.preview_plane((9,))
    assert (plane9 == 2).any() and (plane9 == 1).any()  # the run's object and the user's
    assert 2 in s.prompts[(9,)]
    ids = s.commit()
    lab = labels_of(s)
    assert len(ids) == 2 and lab[9, 40, 40] != 0 and lab[9, 40, 40] != lab[9, 15, 40]


# risk 4 -------------------------------------------------------------------------------------------
class FailingPlane(ComponentModel):
    """Its encoder fails (once ``fail`` is set) on planes whose top-left pixel is bright."""

    def _embed_rgb(self, rgb):
        if rgb[0, 0, 0] == 255 and getattr(self, "fail", False):
            raise RuntimeError("out of memory (test)")
        return super()._embed_rgb(rgb)


def test_a_failed_embedding_does_not_leave_commit_or_propagate_waiting():
    sch = ManualScheduler()
    stack = two_bars_stack()
    stack[6, 0, 0] = FG  # plane 6 will fail
    model = FailingPlane()
    s = AnnotationSession(model, stack, scheduler=sch, window=(BG, FG))
    sch.run_all("embed")
    s.add_point((15, 40))  # plane 0
    sch.run_all("decode")
    model.fail = True
    s.set_plane((6,))
    s.new_object()
    s.add_point((40, 40))
    assert s.commit() == ()  # waits for the decode of plane 6
    assert s.decoding
    sch.run_all("embed")
    sch.run_all("decode")  # its embedding fails
    assert not s.decoding
    assert s.commit() != ()  # what is shown can be committed: K does not wait forever
    s.set_plane((0,))
    s.add_point((15, 40))
    sch.run_all("decode")
    assert s.propagate(0)  # P is not refused either


# risk 5 -------------------------------------------------------------------------------------------
def test_objects_are_explicit_across_planes():
    s = session()
    s.set_plane((2,))
    s.add_point((15, 40))  # a cell on plane 2
    s.set_plane((8,))
    s.new_object()
    s.add_point((15, 40))  # another cell at the same place on plane 8: the user said "new object"
    assert len(s.commit()) == 2
    s.set_plane((2,))
    s.add_point((40, 40))
    s.set_plane((8,))
    s.add_point((40, 40))  # no new object: the same object on both planes
    assert len(s.commit()) == 1


def test_time_by_z_objects_at_two_times_stay_two_labels():
    tz = np.stack([two_bars_stack(4), two_bars_stack(4)])  # (T, Z, H, W)
    s = session(tz)
    s.set_plane((0, 1))
    s.add_point((15, 40))
    s.new_object()
    s.set_plane((1, 1))
    s.add_point((15, 40))
    ids = s.commit()
    lab = labels_of(s)
    assert len(ids) == 2 and lab[0, 1, 15, 40] != lab[1, 1, 15, 40]


# risk 6 -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_more_than_255_objects_and_lazy_planes():
    img = np.full((2, 64, 1300), BG, np.uint16)
    for k in range(300):
        img[1, 10:20, 4 * k + 1:4 * k + 3] = FG
    s = session(img)
    assert s.preview.nchunks_initialized == 0 and s.target is None  # nothing allocated up front
    s.set_plane((1,))
    for k in range(300):
        s.select_object(k + 1)
        s.add_point((15, 4 * k + 1))
    assert len(set(np.unique(s.preview_plane((1,))))) == 301
    assert s.preview.dtype == np.uint32  # widened from uint8 at object 256
    assert s.preview.nchunks_initialized == 1
    ids = s.commit()
    assert len(ids) == 300 and labels_of(s)[1].max() == max(ids)


# nothing lost: undo vs brush, autosave ------------------------------------------------------------
def test_undo_refuses_to_erase_a_brush_edit():
    img, _ = blob_image()
    s = session(img)
    s.add_point((25, 30))
    s.commit()
    s.target[25, 30] = 99  # the user painted over the committed object
    assert s.undo() is None
    assert "brush" in s.statuses[-1] and s.target[25, 30] == 99


def test_autosave_restores_the_labels_of_a_killed_session(tmp_path):
    """A real SIGKILL between two commits loses at most the uncommitted preview."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path])}
    child = textwrap.dedent("""
        import sys, time
        import numpy as np
        from napari_promptseg.session import AnnotationSession, run_now
        from tests.component_model import ComponentModel
        from tests.test_session_risks import two_bars_stack
        s = AnnotationSession(ComponentModel(), two_bars_stack())
        s.set_plane((3,)); s.add_point((15, 40)); s.propagate(0); s.commit()
        s.set_plane((5,)); s.add_point((40, 40))      # previewed, never committed
        print("committed", flush=True)
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, env=env, text=True)
    assert p.stdout.readline().strip() == "committed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    assert p.returncode == -signal.SIGKILL
    s = session()
    assert s.annotation_store.exists()
    ids = s.restore_autosave()
    lab = labels_of(s)
    assert ids == (1,) and (lab[:, 15, 40] == 1).all()  # the committed 3D object
    assert not lab[:, 40, 40].any()  # the uncommitted preview is not there
    s.undo()  # restoring is an ordinary, undoable write
    assert not labels_of(s).any()


@pytest.mark.parametrize("backing", ["zarr", "dask", "multiscale"])
def test_commit_into_lazy_and_multiscale_labels_writes_in_place(tmp_path, backing):
    import zarr

    stack = two_bars_stack(6)
    s = session(stack)
    if backing == "zarr":
        target = zarr.create_array(tmp_path / "l.zarr", shape=stack.shape, chunks=(1, 60, 80), dtype=np.int32)
    elif backing == "dask":
        import dask.array as da

        target = da.zeros(stack.shape, chunks=(1, 60, 80), dtype=np.int32)
    else:
        target = [np.zeros(stack.shape, np.int32), np.zeros((6, 30, 40), np.int32)]
    s.set_target(target)
    s.set_plane((2,))
    s.add_point((15, 40))
    assert s.commit() == (1,)
    level0 = target[0] if backing == "multiscale" else target
    assert s.target is target and int(np.asarray(level0[2, 15, 40])) == 1
    if backing == "zarr":
        again = zarr.open_array(tmp_path / "l.zarr")
        assert again[2, 15, 40] == 1 and again[3].max() == 0
    if backing == "multiscale":
        assert target[1][2, 7, 20] == 1
    s.undo()
    assert int(np.asarray(level0[2, 15, 40])) == 0


def test_an_autosave_that_was_not_restored_is_set_aside_not_mixed():
    stack = two_bars_stack(4)
    s = session(stack)
    s.add_point((15, 40))  # plane 0
    s.commit()
    same = session(stack)  # opened again in this process: its own autosave is continued
    assert same._labels._earlier_store is False and same.annotation_store.exists()
    from napari_promptseg.session import labels

    labels._OURS.clear()  # as in a new process (e.g. after a crash)
    s2 = session(stack)  # the image opened again; the user does not restore
    s2.set_plane((3,))
    s2.add_point((40, 40))
    s2.commit()
    _, _, planes = s2.annotation_store.load()
    assert sorted(planes) == [(3,)]  # only this session's labels
    root = s2.annotation_store.root
    earlier = [p for p in root.parent.iterdir() if p.name.startswith(root.name + ".earlier-")]
    assert len(earlier) == 1  # the earlier session's autosave is kept aside, not lost
    from napari_promptseg.labels.autosave import AnnotationStore

    assert sorted(AnnotationStore(earlier[0]).load()[2]) == [(0,)]
    s3 = session(stack)
    assert s3.restore_autosave() == (1,) and labels_of(s3)[3, 40, 40] == 1


# found in review ------------------------------------------------------------------------------------
def test_a_commit_waiting_for_a_decode_never_fires_on_its_own_later():
    sch = ManualScheduler()
    s = session(two_bars_stack(4), scheduler=sch, autosave=False)
    sch.run_all("embed")
    s.add_point((15, 40))
    assert s.commit() == ()  # waits for the decode
    s.set_image(two_bars_stack(4) + 1)  # another image before the decode came back
    sch.run_all("embed")
    s.add_point((40, 40))
    sch.run_all("decode")
    assert s.target is None  # nothing was committed without a K on this image
    s.add_point((15, 40))
    s.commit()
    s.preview_edited([(0,)])  # the user paints while K waits: the waiting K is off
    sch.run_all("decode")
    assert s.target is None and "again" in s.statuses[-1]


def test_prompts_placed_before_the_model_are_decoded_when_it_comes():
    s = AnnotationSession(None, two_bars_stack(3), autosave=False)
    s.add_point((15, 40))
    assert not s.preview_plane().any()
    s.set_model(ComponentModel())
    assert (s.preview_plane() == 1).sum() == 10 * 60


def test_a_failed_refine_does_not_leave_the_session_waiting():
    sch = ManualScheduler()
    s = session(two_bars_stack(3), scheduler=sch, autosave=False)
    sch.run_all("embed")
    s.preview[0, 15, 40] = 1
    s.preview_edited([(0,)])
    s.refine_from_preview()
    job = sch.pop("decode")
    job.on_error(RuntimeError("boom"))
    assert not s.decoding and "refine failed" in s.statuses[-1]


def test_objects_refined_from_paint_survive_a_propagation():
    s = session(two_bars_stack(6), autosave=False)
    s.set_plane((4,))
    s.preview[4, 36:44, 12:68] = 9  # the user paints object 9 (no prompts) on plane 4, then G
    s.preview_edited([(4,)])
    s.refine_from_preview()
    refined = s.preview_plane((4,)) == 9
    assert refined.sum() > 300
    s.set_plane((0,))
    s.add_point((15, 40))
    s.propagate(0)
    plane = s.preview_plane((4,))
    assert ((plane == 9) == refined).all() and (plane == 1).any()


def test_restore_never_overwrites_labels_already_there():
    stack = two_bars_stack(3)
    s = session(stack)
    s.add_point((15, 40))
    s.commit()
    s2 = session(stack)
    mine = np.zeros(stack.shape, np.int32)
    mine[0, 12:14, 20:30] = 7  # the user's own labels, where the autosave has object 1
    s2.set_target(mine)
    s2.restore_autosave()
    assert (mine[0, 12:14, 20:30] == 7).all() and (mine[0, 15, 40] == 1)


def propagated_through_40_planes():
    """A session on a 40-plane stack with object 1 propagated through it; the test runs the jobs."""
    sch = ManualScheduler()
    s = session(two_bars_stack(40), scheduler=sch)
    sch.run_all("embed")
    s.add_point((15, 40))
    sch.run_all("decode")
    s.propagate(0)
    sch.finish()
    return s, sch


def test_a_commit_of_many_planes_is_autosaved_in_a_job_in_order():
    s, sch = propagated_through_40_planes()
    assert len(s.commit()) == 1
    assert not s.annotation_store.exists()  # 40 planes: not on the caller's thread
    sch.run("autosave")
    _, _, planes = s.annotation_store.load()
    assert sorted(planes) == [(k,) for k in range(40)]


def test_a_small_commit_after_a_big_one_is_autosaved_after_it_and_failures_are_reported():
    s, sch = propagated_through_40_planes()
    s.commit()  # 40 planes: saved by a job
    s.set_plane((5,))
    s.new_object()
    s.add_point((40, 40), plane=(5,))
    sch.run_all("decode")
    s.commit()  # one plane, but behind the job: queued, not saved before it
    assert not s.annotation_store.exists()
    sch.run_all("autosave")
    assert [r["op"] for r in s.annotation_store.records()] == ["commit", "commit"]
    assert s.annotation_store.records()[1]["planes"] == [[5]]
    s.annotation_store.save = lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))
    s.undo()  # one plane, no job pending: saved at once, and the failure is said
    assert "autosave failed (disk full)" in s.statuses[-1]


def test_a_failed_autosave_job_is_reported():
    s, sch = propagated_through_40_planes()
    s.commit()
    s.annotation_store.save = lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))
    sch.run("autosave")
    assert "autosave failed (disk full)" in s.statuses[-1]


def test_a_failing_candidates_job_is_said_not_swallowed():
    """J's other masks are prepared in a job after the decode; its error reaches the status line
    (it was ignored), and J still works."""
    import dataclasses

    img, _ = blob_image()
    said, kinds = [], []

    def scheduler(job):
        kinds.append(job.kind)
        if job.kind == "candidates":  # the fault: this job's work fails
            job = dataclasses.replace(job, work=lambda: (_ for _ in ()).throw(RuntimeError("no memory")))
        try:
            run_now(job)  # raises to the caller after on_error (a script sees it)
        except RuntimeError:
            assert job.kind == "candidates"

    s = AnnotationSession(ComponentModel(), img, scheduler=scheduler, autosave=False)
    s.events.status.connect(said.append)
    s.add_point((25, 30))
    assert "candidates" in kinds
    assert any("candidate masks could not be prepared (RuntimeError: no memory)" in t for t in said), said
    before = dict(s.choices)
    s.next_mask()
    assert s.choices != before  # J still cycles


def test_a_script_sees_a_decoder_error_and_the_status_line_says_it():
    """Without a viewer (the default synchronous scheduler) a failing decode raises to the caller
    after the session has said it: before, add_point returned as if nothing had happened."""
    img, _ = blob_image()
    model = ComponentModel()
    s = AnnotationSession(model, img, autosave=False)
    said = []
    s.events.status.connect(said.append)

    def out_of_memory(*a, **k):
        raise MemoryError("no memory for the decoder")

    model.predict = out_of_memory
    with pytest.raises(MemoryError, match="no memory for the decoder"):
        s.add_point((25, 30))
    assert said and "no memory for the decoder" in said[-1], said


def test_a_script_sees_an_encoder_error():
    img, _ = blob_image()
    model = ComponentModel()

    def out_of_memory(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    model.embed = out_of_memory
    with pytest.raises(RuntimeError, match="out of memory"):
        AnnotationSession(model, img, autosave=False)


def test_closing_saves_what_autosave_has_queued():
    """close() used to drop the queue of a big commit whose autosave job had not run (a viewer
    closed right after committing a propagation)."""
    s, sch = propagated_through_40_planes()
    s.commit()
    assert not s.annotation_store.exists()  # its job waits
    store = s.annotation_store
    s.close()
    _, _, planes = store.load()
    assert sorted(planes) == [(k,) for k in range(40)]
