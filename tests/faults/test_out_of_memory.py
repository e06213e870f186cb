"""Out of memory (a host ``MemoryError``, a device's ``RuntimeError("CUDA out of memory...")``)
injected into the encoder, the decoder and one propagation step, in scripts: the caller gets the
error (a session without a viewer raises it after its status line said what happened and what to
do), committed labels stay as they were, and the session works again once memory is free."""

from __future__ import annotations

import numpy as np
import pytest

import napari_promptseg as ps
from napari_promptseg.session import AnnotationSession
from tests.component_model import ComponentModel, blob_image
from tests.faults.helpers import after, raiser
from tests.test_session_risks import two_bars_stack

OOM = {
    "host": lambda: MemoryError(),  # numpy's is often bare: it says nothing by itself
    "device": lambda: RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB "
                                   "total capacity; 5.12 GiB already allocated)"),
}
ERRORS = (MemoryError, RuntimeError)


def says_out_of_memory(text: str) -> bool:
    """What happened and what to do."""
    return "out of memory" in text and "free memory" in text


def committed(model, image):
    """A session (run_now) with object 1 committed on the image; its labels so far."""
    s = AnnotationSession(model, image, autosave=False)
    s.said = []
    s.events.status.connect(s.said.append)
    s.add_point((15, 40) if image.ndim == 3 else (25, 30))
    assert s.commit() == (1,)
    return s, np.array(s.target[...])


@pytest.mark.parametrize("oom", OOM, ids=list(OOM))
def test_encoder_out_of_memory_reaches_the_script(oom, monkeypatch):
    model = ComponentModel()
    s, labels = committed(model, blob_image()[0])
    monkeypatch.setattr(model, "_embed_rgb", raiser(OOM[oom]()))
    with pytest.raises(ERRORS):
        s.set_window((0.0, 40000.0))  # the image is embedded again: the encoder runs out of memory
    assert says_out_of_memory(s.said[-1]) and "could not embed" in s.said[-1], s.said[-1]
    np.testing.assert_array_equal(s.target, labels)
    monkeypatch.undo()
    s.set_window((0.0, 30000.0))  # memory is free again: the session goes on
    assert s.ready
    s.new_object()
    s.add_point((80, 40))
    assert s.commit() == (2,) and (np.asarray(s.target) == 1).sum() == (labels == 1).sum()


@pytest.mark.parametrize("oom", OOM, ids=list(OOM))
def test_decoder_out_of_memory_reaches_the_script(oom, monkeypatch):
    model = ComponentModel()
    s, labels = committed(model, blob_image()[0])
    monkeypatch.setattr(model, "_predict", raiser(OOM[oom]()))
    with pytest.raises(ERRORS):
        s.add_point((80, 40))
    assert not s.decoding and not s.preview_plane().any()
    np.testing.assert_array_equal(s.target, labels)
    monkeypatch.undo()
    s.add_point((80, 41))
    assert s.commit() == (2,)


@pytest.mark.parametrize("oom", OOM, ids=list(OOM))
def test_decoder_out_of_memory_says_what_to_do(oom, monkeypatch):
    model = ComponentModel()
    s, _ = committed(model, blob_image()[0])
    monkeypatch.setattr(model, "_predict", raiser(OOM[oom]()))
    with pytest.raises(ERRORS):
        s.add_point((80, 40))
    assert says_out_of_memory(s.said[-1]), s.said[-1]


@pytest.mark.parametrize("oom", OOM, ids=list(OOM))
def test_a_propagation_step_out_of_memory_reaches_the_script(oom, monkeypatch):
    model = ComponentModel()
    s, labels = committed(model, two_bars_stack(8))
    s.set_plane((2,))
    s.new_object()
    s.add_point((40, 40))
    monkeypatch.setattr(model, "_predict", after(4, OOM[oom](), model._predict))  # the 4th plane fails
    with pytest.raises(ERRORS):
        s.propagate(0)
    assert not s.propagating
    assert says_out_of_memory(s.said[-1]) and "propagation failed" in s.said[-1], s.said[-1]
    done = [z for z in range(8) if (s.preview_plane((z,)) == 2).any()]
    assert 2 in done and 1 < len(done) < 8  # the prompted plane and the planes done stay shown
    np.testing.assert_array_equal(s.target, labels)
    monkeypatch.undo()
    assert s.propagate(0) and all((s.preview_plane((z,)) == 2).any() for z in range(8))
    assert s.commit() == (2,)
    np.testing.assert_array_equal(np.asarray(s.target)[labels == 1], 1)


@pytest.mark.parametrize("oom", OOM, ids=list(OOM))
def test_segment_everything_out_of_memory_reaches_the_script(oom, monkeypatch):
    model = ComponentModel()
    s, labels = committed(model, two_bars_stack(4))
    monkeypatch.setattr(model, "_predict", raiser(OOM[oom]()))
    with pytest.raises(ERRORS):
        s.segment_everything("line", points_per_side=4)
    assert not s.segmenting_everything
    assert says_out_of_memory(s.said[-1]) and "segment everything failed" in s.said[-1], s.said[-1]
    np.testing.assert_array_equal(s.target, labels)


@pytest.mark.parametrize("where", ["encoder", "decoder"])
@pytest.mark.parametrize("oom", OOM, ids=list(OOM))
def test_ps_propagate_raises_an_out_of_memory_step(where, oom, monkeypatch):
    model = ComponentModel()
    fn = "_embed_rgb" if where == "encoder" else "_predict"
    monkeypatch.setattr(model, fn, after(3, OOM[oom](), getattr(model, fn)))
    with pytest.raises(ERRORS):
        ps.propagate(model, two_bars_stack(6), {0: [{"points": [[15, 40]], "labels": [1]}]})


# ---- a real SAM network (tiny, random weights): the fault in the torch modules themselves --------
@pytest.mark.parametrize("oom", OOM, ids=list(OOM))
def test_sam_encoder_forward_out_of_memory(tiny_model, oom, monkeypatch):
    img = blob_image()[0]
    s = AnnotationSession(tiny_model, None, autosave=False)
    said = []
    s.events.status.connect(said.append)
    monkeypatch.setattr(tiny_model.sam.image_encoder, "forward", raiser(OOM[oom]()))
    with pytest.raises(ERRORS):
        s.set_image(img)
    assert says_out_of_memory(said[-1]), said[-1]
    monkeypatch.undo()
    s.set_image(img)
    assert s.ready


@pytest.mark.parametrize("oom", OOM, ids=list(OOM))
def test_sam_decoder_out_of_memory(tiny_model, oom, monkeypatch):
    from napari_promptseg.models.sam.decoder import FastMaskDecoder

    s = AnnotationSession(tiny_model, blob_image()[0], autosave=False)
    monkeypatch.setattr(FastMaskDecoder, "__call__", raiser(OOM[oom]()))
    with pytest.raises(ERRORS):
        s.add_point((25, 30))
    monkeypatch.undo()
    s.add_point((25, 31))
    assert s.predictions
