"""Which model a checkpoint file is, loading models as session jobs (download progress, cancel,
failures) and the embedding cache setting, all without Qt."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
import torch

from napari_promptseg.core.cancel import Cancelled, CancelToken, cancel_scope
from napari_promptseg.models import checkpoint, registry
from napari_promptseg.models.checkpoint import (
    fingerprint,
    load_checkpoint,
    registry_name_for,
    spec_for_state,
)
from napari_promptseg.models.registry import get_spec
from napari_promptseg.models.weights import WeightsError, packaged_path, weights_path
from napari_promptseg.session import AnnotationSession, run_now
from napari_promptseg.session.models import Download, ModelLoader, default_disk_cache, load_steps, use_model
from tests.component_model import ComponentModel, blob_image
from tests.test_weights import _Server

DEMO = "promptseg_demo"


@pytest.fixture
def demo_path():
    return packaged_path(get_spec(DEMO))


class Recorder:
    """A ModelLoader whose callbacks are recorded; jobs run at once unless ``hold``."""

    def __init__(self, hold: bool = False):
        self.models, self.statuses, self.jobs = [], [], []
        self.loader = ModelLoader(self.jobs.append if hold else run_now, self.models.append,
                                  self.statuses.append)


# ---------------------------------------------------------------- which model a checkpoint is
def test_a_checkpoint_file_names_the_registry_model_it_fits(demo_path):
    assert registry_name_for(demo_path) == DEMO


def test_architecture_by_encoder_shape():
    sam_vit_b = {"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}
    assert spec_for_state(sam_vit_b).name == "vit_b"  # the first of vit_b, vit_b_lm, ...
    hiera_t = {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(96, 3, 7, 7)}
    hiera_t |= {f"image_encoder.trunk.blocks.{i}.norm1.weight": torch.zeros(96) for i in range(12)}
    assert spec_for_state(hiera_t).name == "sam2.1_hiera_tiny"


def test_an_unknown_architecture_is_an_error_naming_the_file_and_the_known_models(tiny_ckpt, tmp_path):
    with pytest.raises(WeightsError) as err:
        registry_name_for(tiny_ckpt)  # vit_tiny: a SAM no registry entry uses
    text = str(err.value)
    assert str(tiny_ckpt) in text and "'vit_tiny' is not that of a registry model" in text
    assert "Known models: vit_b (vit_b)" in text and f"{DEMO} ({DEMO})" in text
    odd = {"image_encoder.patch_embed.proj.weight": torch.zeros(100, 3, 16, 16)}
    with pytest.raises(WeightsError, match="no known architecture has"):
        spec_for_state(odd, "odd.pth")
    other = tmp_path / "classifier.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(WeightsError, match=r"classifier\.pt: it is not a SAM or SAM 2 checkpoint"):
        registry_name_for(other)


def test_a_local_checkpoint_loads_with_one_read(demo_path, monkeypatch):
    reads = []
    read = checkpoint.read_state_dict
    monkeypatch.setattr(checkpoint, "read_state_dict", lambda p: reads.append(p) or read(p))
    model = load_checkpoint(demo_path, device="cpu")
    assert reads == [demo_path] and model.name == DEMO and model.checkpoint_id == fingerprint(demo_path)
    emb = model.embed(np.zeros((64, 64), np.uint8))
    assert emb.model == DEMO


# ---------------------------------------------------------------- loading as a session job
def test_loader_loads_a_registry_model_and_says_so():
    r = Recorder()
    r.loader.load(DEMO, device="cpu")
    assert [m.name for m in r.models] == [DEMO] and r.statuses == [f"loading {DEMO}…"]
    assert not r.loader.loading


def test_loader_reports_an_unknown_architecture(tiny_ckpt):
    r = Recorder()
    with pytest.raises(WeightsError, match="no known model fits"):  # a script sees it (run_now raises)
        r.loader.load(None, checkpoint=tiny_ckpt, device="cpu")
    assert r.models == []
    said = r.statuses[-1]
    assert said.startswith(f"could not load {tiny_ckpt}: no known model fits checkpoint {tiny_ckpt}")


def test_download_progress_then_the_model(monkeypatch, tiny_spec, tiny_ckpt):
    server = _Server(tiny_ckpt.read_bytes())
    try:
        spec = dataclasses.replace(tiny_spec, name="tiny_dl", url=f"{server.url}/good.pth")
        monkeypatch.setitem(registry.REGISTRY, spec.name, spec)
        steps = list(load_steps("tiny_dl", device="cpu"))
        *progress, model = steps
        size = tiny_ckpt.stat().st_size
        assert progress and all(isinstance(p, Download) for p in progress)
        assert progress[-1] == Download("tiny_dl", size, size)  # the end is always reported
        assert str(progress[-1]) == f"downloading tiny_dl: {size / 1e6:.0f} / {size / 1e6:.0f} MB"
        assert model.name == "tiny_dl" and server.hits == {"good": 1}
        assert [type(s) for s in load_steps("tiny_dl", device="cpu")] == [type(model)]  # cached now
        assert server.hits == {"good": 1}
        cut = dataclasses.replace(spec, name="tiny_cut", url=f"{server.url}/cut.pth")
        monkeypatch.setitem(registry.REGISTRY, cut.name, cut)
        r = Recorder()
        with pytest.raises(WeightsError, match="download of model 'tiny_cut'"):
            r.loader.load("tiny_cut", device="cpu")
        assert r.models == [] and "could not load tiny_cut: download of model 'tiny_cut'" in r.statuses[-1]
        assert not weights_path(cut).exists()
    finally:
        server.close()


def test_a_cancelled_download_stops(monkeypatch, tiny_spec):
    from napari_promptseg.models import weights

    spec = dataclasses.replace(tiny_spec, name="tiny_slow")
    monkeypatch.setitem(registry.REGISTRY, spec.name, spec)
    stopped = threading.Event()

    def slow_fetch(spec, progress):
        try:
            for k in range(1, 1000):
                progress(k, 1000)
                time.sleep(0.01)
        except Cancelled:
            stopped.set()
            raise

    monkeypatch.setattr(weights, "fetch_weights", slow_fetch)
    token = CancelToken()
    with cancel_scope(token):
        steps = load_steps("tiny_slow", device="cpu")
        assert next(steps) == Download("tiny_slow", 1, 1000)
        token.cancel()
        with pytest.raises(Cancelled):
            next(steps)
    assert stopped.wait(5)  # the download itself stopped at its next chunk


def test_a_newer_load_replaces_a_waiting_one_and_cancel_is_reported():
    r = Recorder(hold=True)
    first = r.loader.load(DEMO, device="cpu")
    second = r.loader.load(DEMO, device="cpu")
    assert first.token.cancelled and r.loader.job is second
    run_now(first)  # a replaced load says nothing, even when it finishes
    assert r.models == [] and r.statuses == [f"loading {DEMO}…"] * 2
    r.loader.cancel()
    run_now(second)
    assert r.models == [] and r.statuses[-1] == f"could not load {DEMO}: cancelled"
    third = r.loader.load(DEMO, device="cpu")
    r.loader.drop()  # e.g. a loaded model was given meanwhile
    run_now(third)
    assert r.models == [] and r.statuses[-1] == f"loading {DEMO}…" and not r.loader.loading


def test_choosing_a_model_loads_it_only_without_a_download():
    r = Recorder(hold=True)
    assert not r.loader.choose("vit_h")
    assert r.jobs == [] and r.statuses == ["press 'Load model' to download vit_h (2564 MB, once)."]
    assert r.loader.choose(DEMO) and len(r.jobs) == 1
    assert r.loader.load_default() == DEMO and len(r.jobs) == 2  # nothing cached: the packaged model


def test_use_model_says_which_model_and_what_the_session_says():
    image, _ = blob_image()
    s = AnnotationSession(image=image, autosave=False)
    said = use_model(s, ComponentModel())
    assert said == f"model components on cpu. {s.describe()}" and s.model.name == "components"


# ---------------------------------------------------------------- the embedding cache setting
@pytest.mark.parametrize(("value", "max_bytes"), [(None, 10 * 10**9), ("2.5", 25 * 10**8), ("0", None),
                                                   ("0.0", None), (" 0e3 ", None)])
def test_the_cache_setting_is_the_caches_own(monkeypatch, value, max_bytes):
    if value is None:
        monkeypatch.delenv("PROMPTSEG_EMBED_CACHE_GB", raising=False)
    else:
        monkeypatch.setenv("PROMPTSEG_EMBED_CACHE_GB", value)
    disk = default_disk_cache()
    assert (None if disk is None else disk.max_bytes) == max_bytes


def test_a_bad_cache_setting_warns_once_and_keeps_the_default(monkeypatch):
    from napari_promptseg.embed.disk_cache import CacheWarning

    monkeypatch.setenv("PROMPTSEG_EMBED_CACHE_GB", "lots")
    with pytest.warns(CacheWarning) as seen:
        disk = default_disk_cache()
    assert disk.max_bytes == 10 * 10**9 and len(seen) == 1
