"""Faults in the viewer (napari with the dock widget, real workers): the dock, the viewer or the
image layer closed during each kind of job; out of memory in the encoder, the decoder and a
propagation step; a model changed during a propagation; a damaged embeddings store chosen. For
each: no exception (pytest-qt fails a test on an exception in a Qt callback), no hang (the
workers stop), the status line and napari's notifications say what happened, committed labels
(in the layer and in the autosave) intact."""

from __future__ import annotations

import contextlib
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from napari_promptseg._napari.demo import WIDGET_NAME
from napari_promptseg.core.cancel import check_cancelled
from tests.component_model import ComponentModel
from tests.faults.helpers import after, raiser
from tests.faults.test_model_change import BAR, GROWN, GrownModel
from tests.test_session_risks import two_bars_stack

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

N = 20  # planes: a commit through all of them is autosaved in a job


@pytest.fixture
def case(request):
    """``with case(kind=...)``: pytest's subtests (pytest >= 9: every case runs and is reported),
    else a plain context that names the failing case."""
    try:
        subtests = request.getfixturevalue("subtests")
    except pytest.FixtureLookupError:
        @contextlib.contextmanager
        def named(**what):
            try:
                yield
            except BaseException as err:
                err.add_note(f"in the case {what}")
                raise

        return named
    return subtests.test


@pytest.fixture(autouse=True)
def _no_default_model(monkeypatch):
    """The dock does not load the default model in the background (each test sets its own)."""
    from napari_promptseg.models.weights import default_model_name
    from napari_promptseg.session.models import ModelLoader

    monkeypatch.setattr(ModelLoader, "load_default", lambda self, device="auto": default_model_name())


def settle(qtbot, w, timeout=10000):
    qtbot.waitUntil(lambda: not w.scheduler.busy and not w.session.decoding, timeout=timeout)


def add_image(viewer, k: int = 0):
    """An n-plane stack; ``k`` makes another image (its own pixels, width and autosave)."""
    return viewer.add_image(two_bars_stack(N, (60, 80 + k)), name=f"img{k}")


def add_dock(viewer):
    return viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)


def with_commit(qtbot, viewer, layer, dock, w, model=None):
    """``model`` (default: a fast test model) on ``layer`` in dock ``w``, object 1 committed on
    plane 0; what is needed to check the faults."""
    model = model or ComponentModel()
    w.set_model(model)
    qtbot.waitUntil(lambda: w.bridge.image_layer is layer and w.ready, timeout=10000)
    w.bridge.points_layer.add([[0, 15, 40]])
    settle(qtbot, w)
    w.commit()
    settle(qtbot, w)
    labels = w.target_labels()
    committed = np.array(labels.data[...])
    assert (committed == 1).sum() == BAR
    return SimpleNamespace(viewer=viewer, layer=layer, dock=dock, w=w, model=model, labels=labels,
                           committed=committed, store=w.session.annotation_store)


def open_viewer(make_napari_viewer, qtbot, model=None):
    viewer = make_napari_viewer()
    layer = add_image(viewer)
    dock, w = add_dock(viewer)
    return with_commit(qtbot, viewer, layer, dock, w, model)


def notifications():
    from napari.utils.notifications import notification_manager

    return notification_manager.records


def wait_workers(qtbot, timeout_ms=10000) -> None:
    """Every worker thread ends (no hang), then the events they left are processed."""
    from qtpy.QtCore import QThreadPool

    t0 = time.monotonic()
    assert QThreadPool.globalInstance().waitForDone(timeout_ms), "a worker outlived the close"
    assert time.monotonic() - t0 < timeout_ms / 1000
    qtbot.wait(50)


# ---- starting each kind of job ------------------------------------------------------------------
class SlowLoad:
    """``load_steps`` that takes until :attr:`release` is set (cancellable meanwhile)."""

    def __init__(self):
        self.release = threading.Event()

    def __call__(self, name, checkpoint=None, device="auto"):
        while not self.release.wait(0.02):
            check_cancelled()
        yield ComponentModel()


def start_embed(e, qtbot, monkeypatch):
    e.w.set_model(ComponentModel(embed_delay=30))  # a minute-long encoder, stopped between steps


def start_decode(e, qtbot, monkeypatch):
    e.model.delay = 0.5
    e.w.bridge.points_layer.add([[0, 40, 40]])


def start_propagate(e, qtbot, monkeypatch):
    e.w.bridge.points_layer.add([[0, 40, 40]])
    settle(qtbot, e.w)
    e.model.delay = 0.1
    e.w.propagate()
    qtbot.waitUntil(lambda: e.w.session._propagation.run is not None and e.w.session._propagation.run.done,
                    timeout=10000)


def start_everything(e, qtbot, monkeypatch):
    e.model.delay = 0.005
    e.w.everything_spins["points_per_side"].setValue(8)
    e.w.scope_combo.setCurrentText("every plane along the axis")
    e.w.segment_everything()


def start_autosave(e, qtbot, monkeypatch):
    from napari_promptseg.labels.autosave import AnnotationStore

    save = AnnotationStore.save

    def slow_save(self, *args, **kwargs):
        time.sleep(0.4)
        save(self, *args, **kwargs)

    monkeypatch.setattr(AnnotationStore, "save", slow_save)
    s = e.w.session
    s.preview[:, 38:42, 12:68] = 1  # object painted through every plane
    s.preview_edited([(z,) for z in range(N)])
    e.w.commit()
    e.committed[:, 38:42, 12:68] = 2


def start_load(e, qtbot, monkeypatch):
    import napari_promptseg.session.models as models

    e.slow_load = SlowLoad()
    monkeypatch.setattr(models, "load_steps", e.slow_load)
    e.w.set_model("promptseg_demo")


KINDS = {"embed": start_embed, "decode": start_decode, "propagate": start_propagate,
         "everything": start_everything, "autosave": start_autosave, "load": start_load}


def fault(e, kind, close, qtbot, monkeypatch) -> None:
    """Start a job of ``kind``, ``close()`` while it runs; no hang, labels and autosave intact."""
    KINDS[kind](e, qtbot, monkeypatch)
    qtbot.waitUntil(lambda: e.w.scheduler.running(kind), timeout=10000)
    t0 = time.monotonic()
    close()
    assert time.monotonic() - t0 < 3.0  # closing does not wait for the work (a running save aside)
    if kind == "load":
        e.slow_load.release.set()  # a load the close did not stop ends now
    wait_workers(qtbot)
    np.testing.assert_array_equal(np.asarray(e.labels.data[...]), e.committed)
    assert [r["op"] for r in e.store.records()] == ["commit"] * (2 if kind == "autosave" else 1)
    _, _, planes = e.store.load()
    np.testing.assert_array_equal(np.stack([planes.get((z,), 0 * e.committed[0]) for z in range(N)]),
                                  e.committed)  # the autosave holds every commit


@pytest.mark.slow
def test_closing_the_dock_during_each_kind_of_job(make_napari_viewer, qtbot, monkeypatch, case):
    viewer = make_napari_viewer()
    for k, kind in enumerate(KINDS):
        with case(kind=kind), monkeypatch.context() as mp:
            layer = add_image(viewer, k)
            e = with_commit(qtbot, viewer, layer, *add_dock(viewer))
            fault(e, kind, lambda e=e: viewer.window.remove_dock_widget(e.dock), qtbot, mp)
            assert e.w.closed


@pytest.mark.slow
def test_removing_the_image_layer_during_each_kind_of_job(make_napari_viewer, qtbot, monkeypatch, case):
    viewer = make_napari_viewer()
    dock, w = add_dock(viewer)
    for k, kind in enumerate(KINDS):
        with case(kind=kind), monkeypatch.context() as mp:
            e = with_commit(qtbot, viewer, add_image(viewer, k), dock, w)
            fault(e, kind, lambda e=e: viewer.layers.remove(e.layer), qtbot, mp)
            assert w.session.image is None and not w.scheduler.busy
            if kind != "load":  # the load, not stopped, says its model last
                assert f"image 'img{k}' was removed" in w.status.text()
            w.bridge.use_target(None)
    w.set_model(ComponentModel())
    layer = add_image(viewer, 99)  # the dock goes on with the next image
    qtbot.waitUntil(lambda: w.bridge.image_layer is layer and w.ready, timeout=10000)


@pytest.mark.slow
def test_closing_the_viewer_during_each_kind_of_job(make_napari_viewer, qtbot, monkeypatch, case):
    for k, kind in enumerate(KINDS):
        with case(kind=kind), monkeypatch.context() as mp:
            viewer = make_napari_viewer()
            e = with_commit(qtbot, viewer, add_image(viewer, k), *add_dock(viewer))
            fault(e, kind, viewer.close, qtbot, mp)
            assert e.w.closed


# ---- out of memory in the viewer -----------------------------------------------------------------
CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


def _said(e, qtbot, text, before):
    qtbot.waitUntil(lambda: text in e.w.status.text(), timeout=10000)
    settle(qtbot, e.w)
    new = [str(n.message) for n in notifications()[before:]]
    assert any("out of memory" in m.lower() or "MemoryError" in m for m in new), new
    np.testing.assert_array_equal(np.asarray(e.labels.data[...]), e.committed)


def test_encoder_out_of_memory_in_the_viewer(make_napari_viewer, qtbot):
    e = open_viewer(make_napari_viewer, qtbot)
    before = len(notifications())
    failing = ComponentModel()
    failing.checkpoint_id = "components-other"  # another model: nothing of it is cached
    failing._embed_rgb = raiser(MemoryError())
    e.w.set_model(failing)
    _said(e, qtbot, ": out of memory (MemoryError); free memory", before)
    assert e.w.status.text().startswith(f"could not embed plane {e.w.session.plane[0]}: ")


def test_decoder_out_of_memory_in_the_viewer(make_napari_viewer, qtbot, monkeypatch):
    e = open_viewer(make_napari_viewer, qtbot)
    before = len(notifications())
    monkeypatch.setattr(e.model, "_predict", raiser(RuntimeError(CUDA_OOM)))
    e.w.bridge.points_layer.add([[0, 40, 40]])
    _said(e, qtbot, "could not decode the prompts: out of memory (RuntimeError: CUDA out of memory", before)


def test_a_propagation_step_out_of_memory_in_the_viewer(make_napari_viewer, qtbot, monkeypatch):
    e = open_viewer(make_napari_viewer, qtbot)
    e.w.bridge.points_layer.add([[0, 40, 40]])
    settle(qtbot, e.w)
    before = len(notifications())
    monkeypatch.setattr(e.model, "_predict", after(5, RuntimeError(CUDA_OOM), e.model._predict))
    e.w.propagate()
    _said(e, qtbot, "propagation failed: out of memory", before)
    assert not e.w.session.propagating and "free memory" in e.w.status.text()
    monkeypatch.undo()
    e.w.propagate()  # memory is free again
    settle(qtbot, e.w)
    assert (np.asarray(e.w.bridge.preview_layer.data) > 0).any(axis=(1, 2)).all()


# ---- the model changed during a propagation ------------------------------------------------------
def test_a_model_change_during_a_propagation_in_the_viewer(make_napari_viewer, qtbot):
    e = open_viewer(make_napari_viewer, qtbot)
    w = e.w
    w.bridge.points_layer.add([[0, 40, 40]])
    settle(qtbot, w)
    e.model.delay = 0.05
    w.propagate()
    qtbot.waitUntil(lambda: w.session._propagation.run is not None and w.session._propagation.run.done >= 2,
                    timeout=10000)
    w.set_model(GrownModel())
    assert not w.session.propagating
    assert "propagation of the previous model was stopped" in w.status.text()
    settle(qtbot, w)
    preview = np.asarray(w.bridge.preview_layer.data)
    areas = [(preview[z] == 1).sum() for z in range(N)]
    assert areas[0] == GROWN and set(areas[1:]) <= {0, BAR}  # no step of the old run after the change
    w.propagate()
    settle(qtbot, w)
    preview = np.asarray(w.bridge.preview_layer.data)
    assert [(preview[z] == 1).sum() for z in range(N)] == [GROWN] * N
    np.testing.assert_array_equal(np.asarray(e.labels.data[...]), e.committed)


# ---- a damaged embeddings store chosen in the dock ------------------------------------------------
def test_a_damaged_store_chosen_in_the_dock_is_refused_with_its_message(make_napari_viewer, qtbot, tmp_path):
    import json

    import napari_promptseg as ps

    e = open_viewer(make_napari_viewer, qtbot)
    path = tmp_path / "img.zarr"
    list(ps.embed_store_iter(e.model, two_bars_stack(N), path))
    meta = json.loads((path / "zarr.json").read_text())
    del meta["attributes"]["plane_shape"]
    (path / "zarr.json").write_text(json.dumps(meta))
    assert e.w.load_embeddings(str(path)) is False
    assert "lacks 'plane_shape'" in e.w.status.text() and "embed it again" in e.w.status.text()
    assert e.w.session.embeddings_store is None and e.w.ready


# ---- a full disk under the embedding cache --------------------------------------------------------
@pytest.mark.filterwarnings("ignore::napari_promptseg.embed.disk_cache.CacheWarning")
def test_a_full_cache_disk_is_said_once_in_the_status_line(make_napari_viewer, qtbot, monkeypatch):
    import errno
    import os

    from tests.faults.test_disk_cache_faults import fail_writes

    fail_writes(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    viewer = make_napari_viewer()
    add_image(viewer)
    _, w = add_dock(viewer)
    said: list[str] = []
    w.session.events.status.connect(said.append)
    w.set_model(ComponentModel())
    qtbot.waitUntil(lambda: "embedding cache" in w.status.text(), timeout=10000)
    assert "is full" in w.status.text() and "PROMPTSEG_CACHE_DIR" in w.status.text()
    z = w.session.plane[0]
    w.set_model(ComponentModel())  # prefetching and other planes fail the same way: not said again
    viewer.dims.set_point(0, z + 2)
    settle(qtbot, w)
    assert len([t for t in said if "embedding cache" in t]) == 1
    w.bridge.points_layer.add([[z + 2, 15, 40]])  # the user works on, from memory
    settle(qtbot, w)
    w.commit()
    assert np.asarray(w.target_labels().data[z + 2, 15, 40]) == 1
