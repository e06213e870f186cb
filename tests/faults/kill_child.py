"""A session that commits and autosaves, stopping at an injected step for its parent to SIGKILL it.

Usage: ``python kill_child.py SCENARIO STEP [K]`` with the cache under ``$PROMPTSEG_CACHE_DIR``.
SCENARIO: ``small`` (commit 1, then a one-plane commit 2, the victim), ``big`` (commit 1, then
commit 2 propagated through every plane: autosaved in a job), ``first`` (commit 1 is the
victim), ``switch`` (two big commits of image A, the second queued behind a job that finished
but was not applied yet, then image B's big commit: the napari worker rules, see
:class:`~tests.faults.helpers.KindScheduler`). STEP: where the victim commit stops (see
:data:`STEPS`); K: the plane file of the save to stop at (1-based). The child prints ``at STEP``
when it stops there (it then sleeps until killed) and ``idle`` when it ran through.
"""

from __future__ import annotations

import os
import sys
import time

STEPS = (
    "commit:written",  # the labels are written, the autosave not started
    "job:scheduled",  # a big commit's autosave job is handed to the scheduler, not run yet
    "save:meta",  # the store's meta.json written to its temporary file, not renamed
    "save:plane-tmp",  # plane file K written and fsynced to its temporary file, not renamed
    "save:plane-renamed",  # plane file K renamed into place, the next ones not
    "save:journal",  # every plane in place, the journal line not written
    "save:journal-torn",  # half of the journal line written
    "save:after-journal",  # the journal line written and fsynced, the queue not popped yet
    "none",  # no stop: the commits are saved, the child says idle
)


#: planes of the stack: a commit through all of them is autosaved in a job (> SYNC_PLANES)
N_PLANES = 24


def stack(n=N_PLANES):
    from tests.test_session_risks import two_bars_stack

    return two_bars_stack(n)


def paint_all_planes(s, where, oid: int = 1) -> None:
    """The user paints one object through every plane of the preview (as a propagation would)."""
    s.preview[(slice(None), *where)] = oid
    s.preview_edited([(z,) for z in range(s.lead_shape[0])])


def expected(scenario: str):
    """(labels after the commits before the victim, labels after the victim) of ``scenario``."""
    from napari_promptseg.session import AnnotationSession
    from tests.component_model import ComponentModel

    s = AnnotationSession(ComponentModel(), stack(), autosave=False)
    states = [s.ensure_target()[...].copy()]
    for commit in commits(scenario):
        commit(s)
        states.append(s.target[...].copy())
    return states


def commits(scenario: str):
    def small1(s):
        s.set_plane((5,))
        s.add_point((15, 40))
        assert s.commit()

    def small2(s):
        s.set_plane((7,))
        s.add_point((40, 40))
        assert s.commit()

    def big(s):
        paint_all_planes(s, (slice(36, 44), slice(12, 68)))
        assert s.commit()

    return {"small": [small1, small2], "big": [small1, big], "first": [small1]}[scenario]


def main() -> None:
    scenario, step = sys.argv[1], sys.argv[2]
    k_stop = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    assert step in STEPS, step
    from napari_promptseg.labels import autosave
    from napari_promptseg.session import AnnotationSession, run_now
    from napari_promptseg.session import labels as session_labels
    from tests.component_model import ComponentModel

    victim = [False]
    planes_written = [0]

    def stop(name: str) -> None:
        if victim[0] and name == step:
            print("at", name, flush=True)
            time.sleep(600)  # the parent kills us here

    orig_autosave = session_labels.CommitLog._autosave

    def _autosave(self, *args):
        stop("commit:written")
        return orig_autosave(self, *args)

    session_labels.CommitLog._autosave = _autosave

    real_replace = os.replace

    def replace(src, dst):
        name = os.path.basename(dst)
        if name == "meta.json":
            stop("save:meta")
        if name.startswith("plane"):
            planes_written[0] += 1
            if planes_written[0] == k_stop:
                stop("save:plane-tmp")
        real_replace(src, dst)
        if name.startswith("plane") and planes_written[0] == k_stop:
            stop("save:plane-renamed")

    os.replace = replace  # autosave's _write_atomic renames through os.replace

    class Torn:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            os.fsync(self.f.fileno())
            stop("save:journal-torn")
            return self.f.write(data[len(data) // 2:])

        def __getattr__(self, name):
            return getattr(self.f, name)

    def journal_open(path, mode="r", *args, **kw):
        f = open(path, mode, *args, **kw)
        if str(path).endswith("journal.jsonl") and "a" in mode:
            stop("save:journal")
            return Torn(f)
        return f

    autosave.open = journal_open  # the module's own name shadows the builtin

    orig_save = autosave.AnnotationStore.save

    def save(self, *args, **kw):
        orig_save(self, *args, **kw)
        stop("save:after-journal")

    autosave.AnnotationStore.save = save

    def scheduler(job):
        if job.kind == "autosave":
            stop("job:scheduled")
        run_now(job)

    s = AnnotationSession(ComponentModel(), stack(), scheduler=scheduler, prefetch=0)
    steps = commits(scenario)
    for i, commit in enumerate(steps):
        victim[0] = i == len(steps) - 1
        planes_written[0] = 0
        commit(s)
    print("idle", flush=True)
    time.sleep(600)


def switch() -> None:
    """Image A: a big commit whose autosave job finished its work but was not applied yet, a
    second big commit queued behind it; then image B and its big commit; every job is then run
    and applied (the napari worker rules). Prints ``idle``."""
    from napari_promptseg.session import AnnotationSession
    from tests.component_model import ComponentModel
    from tests.faults.helpers import KindScheduler

    sch = KindScheduler()
    a = stack()
    s = AnnotationSession(ComponentModel(), a, scheduler=sch, prefetch=0)
    sch.drain("embed")

    def big(where):
        paint_all_planes(s, where)
        assert s.commit()

    upper, lower = (slice(12, 18), slice(12, 68)), (slice(38, 42), slice(12, 68))
    big(upper)
    sch.compute("autosave")  # the worker saved commit 1; its 'finished' is not applied yet
    big(lower)  # commit 2 of A: its autosave job waits behind the running one
    b = a.copy()
    b[:, 50:, :] += 7  # other pixels: another image, another autosave
    s.set_image(b)
    sch.drain("embed")
    big(lower)  # image B's big commit: its autosave job waits too
    sch.drain()
    print("idle", flush=True)
    time.sleep(600)


if __name__ == "__main__":
    if sys.argv[1] == "switch":
        switch()
    else:
        main()
