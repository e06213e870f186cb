"""The public API's shape: ps.segment, registry names wherever a model goes, old names that warn."""

from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pytest

import napari_promptseg as ps
from napari_promptseg._compat import MOVED_MODULES, MOVED_NAMES
from napari_promptseg.core.geometry import bounding_box, extent, interior_point, mask_boxes, mask_iou

from .component_model import ComponentModel, blob_image


def test_public_names_are_few_grouped_and_importable():
    assert 18 <= len(ps.__all__) <= 26
    for name in ps.__all__:
        assert getattr(ps, name) is not None, name
    assert ps.AnnotationSession.__module__.startswith("napari_promptseg.session")
    assert ps.MemoryTracker.__module__ == "napari_promptseg.propagation.memory"
    assert ps.find.__module__ == "napari_promptseg.segmentation.find"  # SAM 3 concept prompts


def test_segment_2d_one_mask_per_object_and_a_lower_id_keeps_its_pixels():
    img, truth = blob_image()
    model = ComponentModel()
    labels = ps.segment(model, img, [{"points": [[20, 20]]}, {"box": [60, 20, 99, 59]}])
    assert labels.dtype == np.int32 and labels.shape == img.shape
    np.testing.assert_array_equal(labels == 1, truth == 1)
    np.testing.assert_array_equal(labels == 2, truth == 2)
    both = ps.segment(model, img, {3: {"box": [10, 10, 39, 49]}, 5: {"points": [[20, 20]]}})
    assert set(np.unique(both)) == {0, 3}  # object 5 claims only pixels that 3 took
    with pytest.raises(ValueError, match="object 1: the prompt gave an empty mask"):
        ps.segment(model, img, [{"points": [[5, 150]]}])
    assert not ps.segment(model, img, [{"points": [[5, 150]]}], skip_empty=True).any()
    with pytest.raises(ValueError, match="unknown prompt keys"):
        ps.segment(model, img, [{"point": [[20, 20]]}])


def test_segment_a_stack_along_an_axis():
    img, truth = blob_image((60, 80))
    stack = np.stack([img] * 5, axis=2)  # (H, W, N): planes across axis 2
    prompts = {1: [{"points": [[20, 20]]}], 3: {2: {"points": [[20, 20]]}}}
    labels = ps.segment(ComponentModel(), stack, prompts, axis=2)
    assert labels.shape == stack.shape
    np.testing.assert_array_equal(labels[:, :, 1] == 1, truth == 1)
    np.testing.assert_array_equal(labels[:, :, 3] == 2, truth == 1)
    assert not labels[:, :, [0, 2, 4]].any()
    with pytest.raises(ValueError, match="outside the image's 5 planes"):
        ps.segment(ComponentModel(), stack, {5: [{"points": [[20, 20]]}]}, axis=2)


def test_a_registry_name_is_a_model_everywhere():
    img = np.zeros((64, 64), np.uint8)
    img[20:40, 20:40] = 200
    labels = ps.segment("promptseg_demo", img, [{"box": [20, 20, 39, 39]}])
    assert labels[30, 30] == 1
    with pytest.raises(TypeError, match="registry name"):
        ps.propagate(42, np.zeros((3, 32, 32), np.uint8), {0: [{"points": [[5, 5]]}]})
    with pytest.raises(ValueError, match="unknown model"):
        ps.segment("vit_nope", img, [{"box": [20, 20, 39, 39]}])


def test_old_names_and_module_paths_warn_and_are_the_new_objects():
    for name, (module, attr) in MOVED_NAMES.items():
        with pytest.warns(DeprecationWarning, match=f"napari_promptseg.{name} is deprecated"):
            old = getattr(ps, name)
        assert old is getattr(importlib.import_module(f"napari_promptseg.{module}"), attr)
    with pytest.raises(AttributeError):
        ps.no_such_name  # noqa: B018
    # a fresh interpreter: the import system, not a cached module
    code = ("import warnings; warnings.simplefilter('error')\n"
            "try:\n    import napari_promptseg.stack\nexcept DeprecationWarning as w:\n    print(w)\n"
            "warnings.simplefilter('ignore')\n"
            "import napari_promptseg.stack as old, napari_promptseg.embed.stack as new\n"
            "from napari_promptseg.tiles import embed_tiles\n"
            "print(old is new, embed_tiles is __import__('napari_promptseg').embed_tiles)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    warned = "napari_promptseg.stack is deprecated; use napari_promptseg.embed.stack"
    assert out.stdout.splitlines() == [warned, "True True"]
    assert all(importlib.import_module(f"napari_promptseg.{new}") for new in MOVED_MODULES.values())


def test_geometry_one_copy_of_boxes_points_and_iou():
    m = np.zeros((10, 12), bool)
    m[2:5, 3:9] = True
    assert extent(m) == (2, 3, 4, 8) and extent(np.zeros((3, 3), bool)) is None
    np.testing.assert_array_equal(bounding_box(m), [2, 3, 4, 8])
    np.testing.assert_array_equal(mask_boxes(np.stack([m, np.zeros_like(m)])), [[2, 3, 4, 8], [0, 0, 0, 0]])
    np.testing.assert_array_equal(interior_point(m), [3, 4])
    assert mask_iou(m, m) == 1.0 and mask_iou(m, ~m) == 0.0


def test_session_settings_are_validated_when_set():
    s = ps.AnnotationSession(ComponentModel(), np.zeros((2, 20, 20), np.uint16))
    s.configure(min_score=0.8, overwrite=True)
    assert s.propagation_settings.min_score == 0.8 and s.commit_settings.overwrite is True
    for bad, err in ((dict(min_score=1.5), ValueError), (dict(method="tracking"), ValueError),
                     (dict(stop_after=0), ValueError), (dict(overwrite="yes"), TypeError),
                     (dict(min_scor=0.5), TypeError)):
        with pytest.raises(err):
            s.configure(**bad)
    assert s.propagation_settings.min_score == 0.8  # a refused change changes nothing
    assert s.propagation_method == "prompt" and not s.setting_applies("stop_after")
    assert isinstance(s.propagation_settings.options_for(s.model), ps.PromptPropagation)


def test_the_session_store_is_named_for_what_it_holds():
    s = ps.AnnotationSession(ComponentModel(), np.zeros((2, 20, 20), np.uint16))
    with pytest.warns(DeprecationWarning, match="AnnotationSession.store is deprecated; use annotation_st"):
        assert s.store is s.annotation_store
    assert s.embeddings_store is None


def test_registry_names_are_loaded_once_and_work_for_everything_tiles_and_stores(tmp_path):
    from napari_promptseg.models import as_model

    assert as_model("promptseg_demo") is as_model("promptseg_demo")  # loaded once, kept
    img = np.zeros((64, 64), np.uint8)
    img[20:40, 20:40] = 200
    assert ps.segment_everything("promptseg_demo", img, points_per_side=4).labels.shape == (64, 64)
    assert ps.embed_tiles("promptseg_demo", img).model is as_model("promptseg_demo")
    stack = np.stack([img] * 2)
    assert list(ps.embed_store_iter("promptseg_demo", stack, tmp_path / "s.zarr")) == [(1, 2), (2, 2)]


def test_a_store_with_damaged_metadata_says_so(tmp_path):
    import json

    img = np.zeros((2, 32, 32), np.uint8)
    list(ps.embed_store_iter("promptseg_demo", img, tmp_path / "s.zarr"))
    meta_file = tmp_path / "s.zarr" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    del meta["attributes"]["plane_shape"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ps.StoreError, match="lacks 'plane_shape'.*embed it again"):
        ps.open_embeddings(tmp_path / "s.zarr")
    meta["attributes"]["plane_shape"] = "oops"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ps.StoreError, match="damaged"):
        ps.open_embeddings(tmp_path / "s.zarr")


def test_segment_on_a_huge_lazy_image_reads_windows_not_the_slide():
    """A slide more than 4 tiles long is tiled: only the windows the prompts need are read."""
    from napari_promptseg.embed.tiles import wants_tiles
    from napari_promptseg.segmentation.prompted import EmptyMaskError

    full = np.full((1400, 1400), 1000, np.uint16)
    full[600:630, 700:730] = 30000

    class Lazy:  # a zarr-like array that refuses to be read whole
        shape, dtype, ndim = full.shape, full.dtype, 2
        biggest = 0

        def __getitem__(self, key):
            out = full[key]
            Lazy.biggest = max(Lazy.biggest, out.size)
            return out

        def __array__(self, *args, **kwargs):
            raise AssertionError("the whole slide was read")

    model = ComponentModel()
    assert wants_tiles(model, full.shape)
    labels = ps.segment(model, Lazy(), [{"box": [598, 698, 632, 732]}], contrast_limits=(1000, 30000))
    assert labels.shape == full.shape and labels[615, 715] == 1 and labels.sum() == 30 * 30
    assert 0 < Lazy.biggest < full.size // 4
    with pytest.raises(EmptyMaskError):
        ps.segment(model, full, [{"points": [[100, 100]]}])
