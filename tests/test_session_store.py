"""The annotation session with a precomputed embeddings store, without a viewer: stored planes are
read (no encoder call) with the store's window, the others embedded; a store for another model,
shape, axis or other pixels is refused with its message and nothing changes; a store beside an
image file is found. The shipped demo model; the encoder calls are counted."""

import json

import numpy as np

import napari_promptseg as ps
from napari_promptseg.sample import nuclei_image
from napari_promptseg.session import AnnotationSession
from napari_promptseg.session.stores import find_store
from tests.component_model import ComponentModel


def nuclei_stack(seed=0, n=4):
    img, lab = nuclei_image((96, 112), n=6, seed=seed)
    return np.stack([np.roll(img, k, axis=1) for k in range(n)]), np.stack(
        [np.roll(lab, k, axis=1) for k in range(n)])


def centre(lab, oid=1):
    return tuple(np.argwhere(lab == oid).mean(axis=0).round().astype(int))


def session(model, img, **kwargs):
    return AnnotationSession(model, img, autosave=False, **kwargs)


def test_stored_planes_are_read_with_the_stores_window_and_others_embedded(demo_model, tmp_path, calls):
    stack, lab = nuclei_stack()
    list(ps.embed_store_iter(demo_model, stack, tmp_path / "s.zarr", planes=[0, 1, 2]))
    store = ps.open_embeddings(tmp_path / "s.zarr")
    s = session(demo_model, stack, window=(0.0, 50.0))  # contrast limits far from the store's window
    statuses = []
    s.events.status.connect(statuses.append)
    calls.clear()
    assert s.use_embeddings(tmp_path / "s.zarr")
    assert s.embeddings_store.path == store.path
    assert "using the embeddings store s.zarr: 3 of 4 planes" in statuses[-1]
    assert f"{store.window[0]:g}–{store.window[1]:g}" in statuses[-1]  # says which window it uses
    assert s.stack.window == store.window and s.window == (0.0, 50.0)
    assert calls == [] and s.ready  # plane 0, shown, came from the store
    s.set_plane((1,))
    assert s.ready and calls == []
    assert "embeddings from s.zarr" in s.describe()
    s.add_point(centre(lab[1]))
    mask = np.asarray(s.preview[1]) > 0
    truth = lab[1] == 1
    assert (mask & truth).sum() / (mask | truth).sum() > 0.5
    # the same mask as from an embedding computed with the store's window
    direct = demo_model.predict(demo_model.embed(stack[1], contrast_limits=store.window),
                                points=[centre(lab[1])], labels=[1])
    assert (direct.masks[direct.best] == mask).mean() > 0.99
    calls.clear()
    s.set_plane((3,))  # not in the store: embedded, with the store's window
    assert s.ready and len(calls) == 1 and s.stack.from_store == 2
    calls.clear()
    stack_before = s.stack
    s.set_window((10.0, 20.0))  # the contrast limits change only the display while a store is used
    assert s.stack is stack_before and calls == []
    assert s.use_embeddings(None)  # back to the model and the contrast limits
    assert s.embeddings_store is None and s.stack.window == (10.0, 20.0)
    assert len(calls) == 2  # the plane shown and plane 1, whose prompt is decoded again
    assert "no longer used" in statuses[-1]


def test_propagation_reads_every_plane_from_the_store(demo_model, tmp_path, calls):
    stack, lab = nuclei_stack()
    list(ps.embed_store_iter(demo_model, stack, tmp_path / "s.zarr"))
    s = session(None, stack)
    calls.clear()
    s.set_model(demo_model, embeddings=ps.open_embeddings(tmp_path / "s.zarr"))  # before any embedding
    assert s.embeddings_store is not None and s.ready and calls == []
    s.set_plane((1,))
    s.add_point(centre(lab[1]))
    assert s.propagate(0)
    assert calls == []
    got = np.asarray(s.preview[...]) > 0
    assert got.sum(axis=(1, 2)).min() > 0  # every plane has the object
    assert s.commit()


def test_a_store_that_does_not_fit_is_refused_with_its_message(demo_model, tmp_path, calls):
    stack, _ = nuclei_stack()
    other, _ = nuclei_stack(seed=3)
    list(ps.embed_store_iter(demo_model, other, tmp_path / "other.zarr", planes=[0]))  # same shape
    list(ps.embed_store_iter(demo_model, stack[:3], tmp_path / "short.zarr", planes=[0]))
    list(ps.embed_store_iter(demo_model, stack, tmp_path / "axis1.zarr", axis=1, planes=[0]))
    list(ps.embed_store_iter(demo_model, stack, tmp_path / "good.zarr", planes=[0]))
    s = session(demo_model, stack)
    statuses = []
    s.events.status.connect(statuses.append)
    assert s.use_embeddings(tmp_path / "good.zarr")
    before, n_calls = s.stack, len(calls)
    for name, words in [("other.zarr", "other pixels"), ("short.zarr", "shape (3, 96, 112)"),
                        ("axis1.zarr", "axis 1"),
                        ("nothing.zarr", "not an embeddings store")]:
        assert not s.use_embeddings(tmp_path / name)
        assert words in statuses[-1] and str(tmp_path / name) in statuses[-1]
        assert s.stack is before and s.embeddings_store.path.name == "good.zarr"  # nothing changed
    assert len(calls) == n_calls
    s2 = session(ComponentModel(), stack)
    said = []
    s2.events.status.connect(said.append)
    assert not s2.use_embeddings(tmp_path / "good.zarr") and s2.embeddings_store is None
    assert "made with model 'promptseg_demo'" in said[-1] and "not with 'components'" in said[-1]


def test_a_store_is_dropped_with_its_image_or_model_and_pixels_changed_later_are_embedded(
        demo_model, tmp_path, calls):
    stack, _ = nuclei_stack()
    list(ps.embed_store_iter(demo_model, stack, tmp_path / "s.zarr", planes=[0, 2]))
    s = session(demo_model, stack.copy())
    statuses = []
    s.events.status.connect(statuses.append)
    assert s.use_embeddings(tmp_path / "s.zarr")
    s.image[2] = s.image[2][::-1]  # edited in place after the store was taken into use
    calls.clear()
    s.set_plane((2,))
    assert s.ready and len(calls) == 1  # its stored embedding belongs to other pixels: embedded
    assert any("other pixels" in t and "embedded with the model instead" in t for t in statuses)
    assert "this plane's pixels differ from the stored ones" in statuses[-1]
    s.set_model(ComponentModel())
    assert s.embeddings_store is None and "no longer used" in " ".join(statuses[-3:])
    s.set_model(demo_model)
    assert not s.use_embeddings(tmp_path / "s.zarr")  # checked on the plane shown: edited
    assert "other pixels" in statuses[-1]
    s.set_plane((0,))
    assert s.use_embeddings(tmp_path / "s.zarr")
    s.set_image(stack[:3])
    assert s.embeddings_store is None


def test_a_store_beside_the_image_file_is_found(demo_model, tmp_path):
    stack, _ = nuclei_stack()
    (tmp_path / "plain.zarr").mkdir()  # a zarr folder, not a store
    (tmp_path / "plain.zarr" / "zarr.json").write_text(json.dumps({"zarr_format": 3, "attributes": {}}))
    list(ps.embed_store_iter(demo_model, stack[:2], tmp_path / "b_short.zarr", planes=[0]))
    list(ps.embed_store_iter(demo_model, stack, tmp_path / "c_axis.zarr", axis=2, planes=[0]))
    image = tmp_path / "stack.tif"
    assert find_store(image, demo_model, stack.shape, False) is None
    list(ps.embed_store_iter(demo_model, stack, tmp_path / "d_other_name.zarr", planes=[0]))
    assert find_store(image, demo_model, stack.shape, False) == tmp_path / "d_other_name.zarr"
    list(ps.embed_store_iter(demo_model, stack, tmp_path / "stack.zarr", planes=[0]))
    assert find_store(image, demo_model, stack.shape, False) == tmp_path / "stack.zarr"  # its own name first
    assert find_store(image, ComponentModel(), stack.shape, False) is None  # made by another model
    assert find_store(image, demo_model, stack.shape, True) is None
    assert find_store(None, demo_model, stack.shape, False) is None
