"""StackEmbeddings: lazy per-plane embeddings, one window, prefetch order, disk streaming and resume."""

import threading

import numpy as np
import pytest

from napari_promptseg.core.image import stack_window
from napari_promptseg.embed.cache import DiskCache, EmbeddingCache
from napari_promptseg.embed.stack import StackEmbeddings, embed_stack_iter
from tests.component_model import ComponentModel


def volume(n=10, shape=(40, 50)):
    img = np.full((n, *shape), 1000, np.uint16)
    for z in range(n):
        img[z, 5 + z : 15 + z, 10:20] = 30000 - 100 * z  # distinct pixels per plane
    return img


def test_planes_are_embedded_on_demand_once():
    model = ComponentModel(embed_delay=0.05)
    st = StackEmbeddings(model, volume())
    assert model.embed_calls == 0 and st.cached(3) is None
    threads = [threading.Thread(target=st.get, args=(3,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert model.embed_calls == 1  # four callers, one computation
    assert st.get((3,)) is st.cached(3)
    assert st.get(3).features["components"].max() == 1


def test_one_window_for_the_stack_not_per_plane():
    img = volume()
    img[7] = 1000
    img[7, 0:5, 0:5] = 1400  # a dim plane: per-plane min-max would make this square bright
    st = StackEmbeddings(ComponentModel(), img)
    lo, hi = st.window
    assert lo == pytest.approx(1000) and hi > 20000
    assert st.get(7).features["components"].max() == 0
    # a sampled window on a deep stack stays close to the full one
    deep = np.concatenate([img] * 8)
    lo2, hi2 = stack_window(deep)
    assert lo2 == pytest.approx(lo) and hi2 == pytest.approx(hi, rel=0.05)
    assert stack_window(np.zeros((3, 4, 4), np.uint8)) is None


def test_prefetch_order_follows_the_movement_and_skips_cached():
    st = StackEmbeddings(ComponentModel(), volume(n=20))
    assert st.prefetch_order(10, direction=1, count=3) == [(11,), (12,), (13,), (9,)]
    assert st.prefetch_order(10, direction=-1, count=2) == [(9,), (8,), (11,)]
    st.get(12)
    assert (12,) not in st.prefetch_order(10, direction=1, count=3)
    assert st.prefetch_order(19, direction=1, count=3) == [(18,)]  # clipped at the end
    with pytest.raises(IndexError, match="outside"):
        st.get(20)


def test_4d_planes_and_lines():
    img = np.stack([volume(n=4), volume(n=4)])  # (T, Z, Y, X)
    st = StackEmbeddings(ComponentModel(), img)
    assert st.lead_shape == (2, 4)
    assert st.line((1, 2), axis=1) == [(1, 0), (1, 1), (1, 2), (1, 3)]
    assert st.prefetch_order((1, 2), axis=0, direction=-1, count=2) == [(0, 2)]
    assert st.get((1, 3)).original_size == (40, 50)


def test_rgb_stack():
    rgb = np.repeat((volume(n=3) > 2000).astype(np.uint8)[..., None] * 200, 3, axis=-1)
    st = StackEmbeddings(ComponentModel(), rgb, rgb=True)
    assert st.lead_shape == (3,) and st.window is None
    assert st.get(1).features["components"].max() == 1


def test_embed_stack_streams_to_disk_and_resumes(tmp_path):
    img = volume()
    disk = DiskCache(tmp_path / "emb")
    model = ComponentModel()
    run = embed_stack_iter(model, img, disk=disk)
    for done, _total in run:
        if done == 4:
            break  # interrupted
    run.close()
    assert model.embed_calls == 4
    progress = list(embed_stack_iter(model, img, disk=disk))
    assert progress[-1] == (10, 10) and model.embed_calls == 10  # only the 6 missing planes
    fresh = ComponentModel()  # a new session: every plane comes from disk
    st = StackEmbeddings(fresh, img, disk=disk)
    assert all(st.get(z).features["components"].max() == 1 for z in range(10))
    assert fresh.embed_calls == 0


def test_propagate_finds_a_stack_precomputed_on_disk(tmp_path):
    import napari_promptseg as ps

    img = volume()
    disk = DiskCache(tmp_path / "emb")
    list(embed_stack_iter(ComponentModel(), img, disk=disk))  # e.g. on a cluster node
    fresh = ComponentModel()
    labels = ps.propagate(fresh, img, {3: [{"points": [[10, 15]]}]}, disk=disk,
                          options=ps.PromptPropagation(strategy="box+point"))
    assert fresh.embed_calls == 0  # every plane came from the disk cache (same default window)
    assert (labels[3] > 0).sum() == 100 and (labels > 0).any(axis=(1, 2)).sum() >= 5


def test_uint8_gray_stack_uses_the_given_window():
    """A dim 8-bit stack: the window the user sees (napari's contrast limits) reaches the model."""
    img = np.full((3, 30, 40), 5, np.uint8)
    img[:, 10:20, 10:20] = 40  # dim object: below the test model's threshold of 127 as is
    plain = StackEmbeddings(ComponentModel(), img)
    assert plain.window is None and plain.get(1).features["components"].max() == 0
    cache = EmbeddingCache()
    full = StackEmbeddings(ComponentModel(), img, (0, 255), cache=cache)
    assert full.get(1).features["components"].max() == 0  # (0, 255): identity
    model = ComponentModel()
    st = StackEmbeddings(model, img, (0, 60), cache=cache)  # shared cache: no stale reuse
    comps = st.get(1).features["components"]
    assert model.embed_calls == 1 and comps.max() == 1
    assert comps[10:20, 10:20].all() and not comps[:10].any()
