"""Autosave: content keys, round trips, journal, placement, and survival of a real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

from napari_promptseg.core.hashing import image_key
from napari_promptseg.labels.autosave import AnnotationStore, AutosaveWarning


class CountingArray:
    """A lazy array-like that counts how many planes are read."""

    def __init__(self, arr):
        self._arr, self.shape, self.dtype, self.ndim = arr, arr.shape, arr.dtype, arr.ndim
        self.reads = 0

    def __getitem__(self, idx):
        self.reads += 1
        return self._arr[idx]

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("the whole array must never be read")


def test_image_key_tracks_content():
    img = np.arange(24 * 31, dtype=np.uint16).reshape(24, 31)
    key = image_key(img)
    assert len(key) == 32
    assert image_key(img.copy()) == key
    changed = img.copy()
    changed[13, 7] += 1
    assert image_key(changed) != key
    assert image_key(img.astype(np.int32)) != key  # dtype is part of the key
    assert image_key(img.reshape(31, 24)) != key  # and the shape
    rgb = np.zeros((2, 5, 6, 3), np.uint8)
    rgb2 = rgb.copy()
    rgb2[1, 4, 5, 2] = 1
    assert image_key(rgb, rgb=True) != image_key(rgb2, rgb=True)


def test_image_key_reads_16_planes_of_a_large_stack():
    arr = np.random.default_rng(0).integers(0, 255, (200, 32, 32), dtype=np.uint8)
    lazy = CountingArray(arr)
    key = image_key(lazy)
    assert lazy.reads == 16
    assert image_key(arr) == key  # numpy and a lazy array of the same content agree
    small = CountingArray(arr[:10])
    image_key(small)
    assert small.reads == 10
    tz = CountingArray(arr.reshape(20, 10, 32, 32))  # (T, Z, H, W)
    image_key(tz)
    assert tz.reads == 16


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.uint32])
def test_round_trip_2d(tmp_path, dtype):
    store = AnnotationStore(tmp_path / "s")
    assert not store.exists() and not store.root.exists()
    plane = np.zeros((40, 50), dtype)
    plane[5:20, 10:30] = np.iinfo(dtype).max
    plane[30:, :5] = 3
    store.save({(): plane}, {"op": "commit", "ids": [3]}, shape=(40, 50), dtype=dtype)
    assert store.exists()
    shape, dt, planes = store.load()
    assert shape == (40, 50) and dt == np.dtype(dtype)
    assert list(planes) == [()]
    assert planes[()].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(planes[()], plane)


def test_round_trip_3d_and_4d(tmp_path):
    store = AnnotationStore(tmp_path / "s3")
    a, b = np.zeros((8, 9), np.uint16), np.zeros((8, 9), np.uint16)
    a[1:3, 1:3], b[4:, 4:] = 1, 2
    store.save({(2,): a}, {"op": "commit"}, shape=(5, 8, 9), dtype=np.uint16)
    store.save({(4,): b, (0,): a}, {"op": "commit"}, shape=(5, 8, 9), dtype=np.uint16)
    shape, _, planes = store.load()
    assert shape == (5, 8, 9) and sorted(planes) == [(0,), (2,), (4,)]
    np.testing.assert_array_equal(planes[(4,)], b)
    np.testing.assert_array_equal(planes[(2,)], a)

    store4 = AnnotationStore(tmp_path / "s4")
    store4.save({(1, 3): b}, {"op": "commit"}, shape=(2, 4, 8, 9), dtype=np.int32)
    shape, dt, planes = store4.load()
    assert shape == (2, 4, 8, 9) and dt == np.int32 and list(planes) == [(1, 3)]
    np.testing.assert_array_equal(planes[(1, 3)], b)
    with pytest.raises(ValueError, match="does not fit"):
        store4.save({(2, 0): b}, {}, shape=(2, 4, 8, 9), dtype=np.int32)
    with pytest.raises(ValueError, match="shape"):
        store4.save({(0, 0): b[:4]}, {}, shape=(2, 4, 8, 9), dtype=np.int32)


def test_later_saves_replace_and_undo_to_zero_removes(tmp_path):
    store = AnnotationStore(tmp_path / "s")
    kw = {"shape": (3, 10, 10), "dtype": np.uint16}
    first, second = np.zeros((10, 10), np.uint16), np.zeros((10, 10), np.uint16)
    first[:5] = 1
    second[:5], second[7:] = 1, 2
    store.save({(1,): first}, {"op": "commit", "ids": [1]}, **kw)
    store.save({(1,): second}, {"op": "commit", "ids": [2]}, **kw)
    np.testing.assert_array_equal(store.load()[2][(1,)], second)
    store.save({(1,): first}, {"op": "undo"}, **kw)
    np.testing.assert_array_equal(store.load()[2][(1,)], first)
    store.save({(1,): np.zeros((10, 10), np.uint16)}, {"op": "undo"}, **kw)
    assert store.load()[2] == {}
    assert store.exists()  # the journal still says what happened
    assert [r["op"] for r in store.records()] == ["commit", "commit", "undo", "undo"]


def test_records_in_order_with_prompts_and_summary(tmp_path):
    store = AnnotationStore(tmp_path / "s")
    plane = np.zeros((6, 6), np.uint32)
    for k in range(3):
        plane[k, k] = k + 1
        prompts = {"points": np.array([[k, k]]), "labels": [np.int64(1)], "box": None}
        store.save({(k,): plane.copy()}, {"op": "commit", "ids": [k + 1], "prompts": prompts,
                                          "time": time.time()}, shape=(3, 6, 6), dtype=np.uint32)
    recs = store.records()
    assert [r["ids"] for r in recs] == [[1], [2], [3]]
    assert recs[2]["prompts"] == {"points": [[2, 2]], "labels": [1], "box": None}
    assert [r["planes"] for r in recs] == [[[0]], [[1]], [[2]]]
    s = store.summary()
    assert s.startswith("3 commits, 3 labels on 3 planes, last saved ")
    store.clear()
    assert not store.root.exists() and not store.exists()


def test_torn_journal_line_is_ignored(tmp_path):
    store = AnnotationStore(tmp_path / "s")
    plane = np.ones((4, 4), np.uint16)
    store.save({(): plane}, {"op": "commit", "ids": [1]}, shape=(4, 4), dtype=np.uint16)
    with open(store.root / "journal.jsonl", "ab") as f:
        f.write(b'{"op": "commit", "ids": [2], "pro')  # a crash in the middle of a line
    assert [r["ids"] for r in store.records()] == [[1]]
    # the next save ends the torn line first, so its own record stays whole
    store.save({(): plane * 3}, {"op": "commit", "ids": [3]}, shape=(4, 4), dtype=np.uint16)
    assert [r["ids"] for r in store.records()] == [[1], [3]]


def test_a_corrupt_plane_is_reported_and_the_others_restored(tmp_path):
    store = AnnotationStore(tmp_path / "s")
    plane = np.full((6, 6), 4, np.uint16)
    store.save({(0,): plane, (1,): plane}, {"op": "commit"}, shape=(2, 6, 6), dtype=np.uint16)
    path = store.root / "planes" / "plane_1.npz"
    path.write_bytes(path.read_bytes()[:40])
    (store.root / "planes" / ".tmp-plane_0.npz-123").write_bytes(b"half")  # an interrupted write
    with pytest.warns(AutosaveWarning, match="plane_1.npz"):
        planes = store.load()[2]
    assert list(planes) == [(0,)]
    np.testing.assert_array_equal(planes[(0,)], plane)


def test_missing_or_corrupt_meta_says_what_to_delete(tmp_path):
    store = AnnotationStore(tmp_path / "s")
    store.save({(): np.ones((4, 4), np.uint8)}, {"op": "commit"}, shape=(4, 4), dtype=np.uint8)
    (store.root / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="delete the folder"):
        store.load()
    (store.root / "meta.json").unlink()
    with pytest.raises(ValueError, match=str(store.root).replace("\\", "\\\\")):
        store.load()
    assert "labels unreadable" in store.summary()


def test_for_image_placement(tmp_path):
    img = np.arange(64, dtype=np.uint8).reshape(8, 8)
    key = image_key(img)
    default = AnnotationStore.for_image(img)
    assert default.root == tmp_path / "cache" / "annotations" / key
    src = tmp_path / "data" / "cells.tif"
    src.parent.mkdir()
    src.write_bytes(b"")
    beside = AnnotationStore.for_image(img, source_path=str(src))
    assert beside.root == tmp_path / "data" / "cells.tif.promptseg" / key[:16]
    beside.save({(): img}, {"op": "commit"}, shape=(8, 8), dtype=np.uint8)
    assert AnnotationStore.for_image(img.copy(), source_path=str(src)).exists()
    gone = AnnotationStore.for_image(img, source_path=str(tmp_path / "nowhere" / "x.tif"))
    assert gone.root == default.root
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root ignores folder permissions: the read-only fallback cannot be tested")
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "img.tif").write_bytes(b"")
    ro.chmod(0o555)
    try:
        assert AnnotationStore.for_image(img, source_path=str(ro / "img.tif")).root == default.root
    finally:
        ro.chmod(0o755)


CHILD = textwrap.dedent("""
    import numpy as np

    Z, H, W = 50, 256, 256

    def expected(k):
        plane = np.zeros((H, W), np.uint16)
        r, c = (k * 37) % (H - 96), (k * 53) % (W - 96)
        plane[r:r + 96, c:c + 96] = k + 1
        plane[::7, ::5] = np.random.default_rng(k).integers(1, 60000, plane[::7, ::5].shape)
        return plane

    if __name__ == "__main__":
        import sys
        from napari_promptseg.labels.autosave import AnnotationStore

        store = AnnotationStore(sys.argv[1])
        k = 0
        while True:
            store.save({(k % Z,): expected(k)}, {"op": "commit", "commit": k, "prompts":
                        {"points": [[k % H, k % W]], "labels": [1]}}, shape=(Z, H, W), dtype="uint16")
            print(k, flush=True)
            k += 1
""")


@pytest.mark.parametrize(("kill_after", "delay"), [(5, 0.0), (12, 0.0005), (30, 0.001), (57, 0.0015)])
def test_survives_sigkill_mid_save(tmp_path, kill_after, delay):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    ns: dict = {}
    exec(compile(CHILD, str(script), "exec"), ns)
    expected, Z = ns["expected"], ns["Z"]
    root = tmp_path / "store"
    env = {**os.environ, "PROMPTSEG_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, str(script), str(root)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    printed = []
    try:
        deadline = time.monotonic() + 30
        while len(printed) <= kill_after and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            printed.append(int(line))
        time.sleep(delay)  # a save takes ~2 ms: the delays land the kill at different steps of it
        os.kill(proc.pid, signal.SIGKILL)  # while it is busy with the next saves
        rest, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    printed += [int(s) for s in rest.split()]
    last = printed[-1]
    assert printed == list(range(last + 1)) and last >= kill_after

    store = AnnotationStore(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutosaveWarning)  # a torn plane file would be reported
        shape, dtype, planes = store.load()
    assert shape == (Z, 256, 256) and dtype == np.uint16
    for z in range(Z):
        touched = [k for k in range(last + 1) if k % Z == z]
        if not touched:
            # a commit after the last print may or may not have landed, but never half of it
            if (z,) in planes:
                assert any(np.array_equal(planes[(z,)], expected(k)) for k in range(last + 1, last + 3))
            continue
        got = planes[(z,)]
        ok = [expected(touched[-1])] + [expected(k) for k in range(last + 1, last + 3) if k % Z == z]
        assert any(np.array_equal(got, e) for e in ok), f"plane {z} is not a committed state"
    recs = store.records()
    assert [r["commit"] for r in recs[: last + 1]] == list(range(last + 1))
    assert all(r["planes"] == [[r["commit"] % Z]] for r in recs)
    assert len(recs) <= last + 3
    assert json.loads((root / "meta.json").read_text())["shape"] == [Z, 256, 256]


# nothing dropped: failed saves are retried, flush, image switch (issue 28) ------------------------
def _flaky(store, fails=1, error="disk full"):
    """Make ``store.save`` raise OSError(``error``) ``fails`` times, then save; returns the calls."""
    real, calls = store.save, []

    def save(*a, **k):
        calls.append(a[0].keys())
        if len(calls) <= fails:
            raise OSError(error)
        return real(*a, **k)

    store.save = save
    return calls


def _saved_planes(store):
    return sorted(store.load()[2])


def test_a_failed_save_keeps_its_commits_and_the_next_save_writes_them():
    from tests.test_session_risks import session, two_bars_stack

    s = session(two_bars_stack(6))
    store = s.annotation_store
    _flaky(store)
    s.set_plane((1,))
    s.add_point((15, 40))
    assert s.commit() == (1,)
    said = s.statuses[-1]
    assert not store.exists()
    s.set_plane((3,))
    s.add_point((40, 40))
    assert s.commit() == (2,)  # this save writes the failed commit first, then its own
    assert "failed" not in s.statuses[-1]
    assert [(r["op"], r["ids"], r["planes"]) for r in store.records()] == [
        ("commit", [1], [[1]]), ("commit", [2], [[3]])]
    assert _saved_planes(store) == [(1,), (3,)]
    assert not s._labels._queue
    # what the failure said: what was not saved, that it is tried again, what to do meanwhile
    assert "autosave failed (disk full)" in said and "1 commit on 1 plane" in said
    assert "tried again" in said and "File > Save" in said


def test_a_failed_autosave_job_keeps_its_planes_for_the_next_save():
    from tests.test_session_risks import propagated_through_40_planes

    s, sch = propagated_through_40_planes()
    s.commit()
    _flaky(s.annotation_store)
    sch.run("autosave")
    said = s.statuses[-1]
    s.undo()  # 40 planes wait now with the undo's: saved in a job again, not on this thread
    assert not s.annotation_store.exists()
    sch.run_all("autosave")
    assert [r["op"] for r in s.annotation_store.records()] == ["commit", "undo"]
    assert _saved_planes(s.annotation_store) == []  # the undo emptied them again
    assert "autosave failed (disk full): 1 commit on 40 planes" in said


def test_flush_saves_everything_queued_and_says_what_it_could_not():
    from tests.test_session_risks import propagated_through_40_planes

    s, sch = propagated_through_40_planes()
    s.commit()  # 40 planes: queued for a job
    store = s.annotation_store
    assert not store.exists()
    calls = _flaky(store)
    problem = s._labels.flush()
    assert "autosave failed (disk full): 1 commit on 40 planes not in the autosave" in problem
    assert "tried again" not in problem and "File > Save" in problem
    assert s._labels.flush() is None  # the queue was kept: this flush saves it
    assert len(calls) == 2 and _saved_planes(store) == [(k,) for k in range(40)]
    sch.run_all("autosave")  # the job finds nothing left to save
    assert [r["op"] for r in store.records()] == ["commit"]
    assert s._labels.flush() is None


def test_a_running_autosave_job_and_a_flush_do_not_race():
    import threading

    from tests.test_session_risks import propagated_through_40_planes

    s, sch = propagated_through_40_planes()
    s.commit()
    store = s.annotation_store
    real, entered, go, saves = store.save, threading.Event(), threading.Event(), []

    def slow_save(planes, record, **kw):
        saves.append(sorted(planes))
        entered.set()
        go.wait(10)
        real(planes, record, **kw)

    store.save = slow_save
    job = sch.pop("autosave")
    worker = threading.Thread(target=job.compute)  # as in a worker thread
    worker.start()
    assert entered.wait(10)
    flushed = []
    flusher = threading.Thread(target=lambda: flushed.append(s._labels.flush()))
    flusher.start()
    flusher.join(0.3)
    assert flusher.is_alive()  # waits for the job's save instead of saving the same commit again
    go.set()
    worker.join(10)
    flusher.join(10)
    assert flushed == [None] and len(saves) == 1
    assert [r["op"] for r in store.records()] == ["commit"]


def test_switching_images_flushes_the_old_images_queue():
    from tests.test_session_risks import propagated_through_40_planes, two_bars_stack

    s, sch = propagated_through_40_planes()
    s.commit()  # its autosave job has not run when the image changes
    old = s.annotation_store
    s.set_image(two_bars_stack(40) + 7)
    assert s.annotation_store is not old
    assert _saved_planes(old) == [(k,) for k in range(40)]
    assert [r["op"] for r in old.records()] == ["commit"]
    sch.run_all("autosave")  # the old job, if it still runs, saves nothing twice
    assert [r["op"] for r in old.records()] == ["commit"]


def test_switching_images_says_what_the_old_image_did_not_save():
    from tests.test_session_risks import propagated_through_40_planes, two_bars_stack

    s, sch = propagated_through_40_planes()
    s.commit()
    _flaky(s.annotation_store, fails=10)
    s.set_image(two_bars_stack(40) + 7)
    assert any("previous image's autosave failed (disk full)" in t and "File > Save" in t
               for t in s.statuses)


# the summary of an earlier session: from the journal, in a job ------------------------------------
def test_summary_is_read_from_the_journal_without_reading_a_plane(tmp_path, monkeypatch):
    store = AnnotationStore(tmp_path / "s")
    kw = {"shape": (4, 6, 6), "dtype": np.uint16}
    a, b = np.zeros((6, 6), np.uint16), np.zeros((6, 6), np.uint16)
    a[0, :3], a[1, :2], b[4:, 4:] = 1, 2, 3
    store.save({(0,): a, (1,): a}, {"op": "commit", "ids": [1, 2]}, **kw)
    store.save({(2,): b}, {"op": "commit", "ids": [3]}, **kw)
    store.save({(3,): b}, {"op": "commit", "ids": [3]}, **kw)
    store.save({(3,): np.zeros((6, 6), np.uint16)}, {"op": "undo", "ids": [3]}, **kw)
    assert store.records()[0]["plane_ids"] == [[1, 2], [1, 2]]

    def no_plane_reads(*a, **k):
        raise AssertionError("a plane was read")

    monkeypatch.setattr(AnnotationStore, "load", no_plane_reads)
    monkeypatch.setattr(np, "load", no_plane_reads)
    assert store.summary().startswith("3 commits, 1 undo, 3 labels on 3 planes, last saved ")
    # a journal written before the ids were journaled: the planes are counted from the folder
    lines = [json.loads(raw) for raw in (store.root / "journal.jsonl").read_text().splitlines()]
    old = "".join(json.dumps({k: v for k, v in r.items() if k != "plane_ids"}) + "\n" for r in lines)
    (store.root / "journal.jsonl").write_text(old)
    assert store.summary().startswith("3 commits, 1 undo, labels on 3 planes, last saved ")


def test_the_summary_is_read_in_a_job_and_offered_when_it_comes():
    from napari_promptseg.session import AnnotationSession
    from tests.component_model import ComponentModel
    from tests.test_session_risks import ManualScheduler, session, two_bars_stack

    stack = two_bars_stack(4)
    s = session(stack)
    s.add_point((15, 40))
    s.commit()
    sch, offered = ManualScheduler(), []
    s2 = AnnotationSession(ComponentModel(), stack, scheduler=sch)
    s2.events.restorable.connect(offered.append)
    assert [j.kind for j in sch.jobs if j.kind == "summary"] == ["summary"]
    assert offered == []  # nothing read on the caller's thread
    sch.run("summary")
    assert len(offered) == 1 and offered[0].startswith("1 commit, 1 label on 1 plane")

    s3 = AnnotationSession(ComponentModel(), stack, scheduler=sch)
    s3.events.restorable.connect(offered.append)
    s3.set_image(stack + 1)  # another image before the summary came back: not offered for it
    sch.run_all("summary")
    assert len(offered) == 1
