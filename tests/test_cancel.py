"""Cooperative cancellation: tokens, thread-local scopes, encoder block hooks, stack embeddings."""

import threading
import time

import numpy as np
import pytest

from napari_promptseg.core.cancel import (
    Cancelled,
    CancelToken,
    cancel_scope,
    check_cancelled,
    install_cancel_hooks,
)
from napari_promptseg.embed.stack import StackEmbeddings
from tests.component_model import ComponentModel


def test_token():
    token = CancelToken()
    assert not token.cancelled and not token()
    token.check()
    token.cancel()
    assert token.cancelled and token()
    with pytest.raises(Cancelled):
        token.check()
    token.cancel()  # idempotent
    assert token.cancelled
    assert issubclass(Cancelled, Exception)


def test_check_outside_any_scope_is_a_noop():
    check_cancelled()


def test_scope_semantics_and_nesting():
    outer, inner = CancelToken(), CancelToken()
    with cancel_scope(outer):
        check_cancelled()
        with cancel_scope(lambda: inner.cancelled):
            check_cancelled()
            outer.cancel()  # an enclosing scope cancels the inner work too
            with pytest.raises(Cancelled):
                check_cancelled()
        with pytest.raises(Cancelled):
            check_cancelled()
    check_cancelled()  # scopes gone
    with cancel_scope(lambda: False), cancel_scope(lambda: True):
        with pytest.raises(Cancelled):
            check_cancelled()
    check_cancelled()


def test_scope_exits_cleanly_on_cancelled():
    with pytest.raises(Cancelled):
        with cancel_scope(lambda: True):
            check_cancelled()
    check_cancelled()


def test_scope_needs_a_callable():
    with pytest.raises(TypeError, match="callable"):
        with cancel_scope(True):
            pass


def test_scopes_are_thread_local():
    seen = []
    inside, done = threading.Event(), threading.Event()

    def other():
        inside.wait(5)
        try:
            check_cancelled()
            seen.append("ok")
        except Cancelled:
            seen.append("cancelled")
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with cancel_scope(lambda: True):
        inside.set()
        done.wait(5)
        with pytest.raises(Cancelled):
            check_cancelled()
    t.join(5)
    assert seen == ["ok"]


# -- the SAM encoder ----------------------------------------------------------------------------
def _image(shape=(60, 80)):
    return np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)


def test_sam_encoder_has_hooks_once(tiny_model):
    enc = tiny_model.sam.image_encoder
    n = [len(b._forward_pre_hooks) for b in enc.blocks]
    install_cancel_hooks(enc)  # idempotent
    assert [len(b._forward_pre_hooks) for b in enc.blocks] == n and min(n) >= 1


def test_sam_embed_in_a_cancelled_scope_raises(tiny_model):
    img = _image()
    with cancel_scope(lambda: True):
        with pytest.raises(Cancelled):
            tiny_model.embed(img)
    emb = tiny_model.embed(img)  # outside a scope: works
    with cancel_scope(lambda: False):
        emb2 = tiny_model.embed(img)  # inside a scope not cancelled: works, same numbers
    np.testing.assert_array_equal(emb.features["image_embed"].numpy(),
                                  emb2.features["image_embed"].numpy())


def test_cancel_from_another_thread_stops_at_a_block_boundary(tiny_model):
    enc = tiny_model.sam.image_encoder
    blocks = list(enc.blocks)
    assert len(blocks) >= 2
    finished = []
    started = threading.Event()

    def slow(module, args):  # registered after the cancel hook: runs after its check
        started.set()
        time.sleep(0.3)

    handles = [b.register_forward_pre_hook(slow) for b in blocks]
    handles += [b.register_forward_hook(lambda m, a, o: finished.append(m)) for b in blocks]
    token, result = CancelToken(), {}

    def work():
        t0 = time.perf_counter()
        try:
            with cancel_scope(token):
                tiny_model.embed(_image())
            result["outcome"] = "finished"
        except Cancelled:
            result["outcome"] = "cancelled"
        result["seconds"] = time.perf_counter() - t0

    try:
        t = threading.Thread(target=work)
        t.start()
        assert started.wait(10)
        token.cancel()
        t.join(10)
        assert not t.is_alive()
    finally:
        for h in handles:
            h.remove()
    assert result["outcome"] == "cancelled"
    assert len(finished) < len(blocks)  # (took result["seconds"], vs ~0.3 s per block)


# -- the test backend and stacks ----------------------------------------------------------------
def test_component_model_embed_is_cancellable():
    model = ComponentModel(embed_delay=5)
    token, result = CancelToken(), {}

    def work():
        try:
            with cancel_scope(token):
                model.embed(np.zeros((20, 20), np.uint8))
            result["outcome"] = "finished"
        except Cancelled:
            result["outcome"] = "cancelled"

    t = threading.Thread(target=work)
    t.start()
    time.sleep(0.1)
    t0 = time.perf_counter()
    token.cancel()
    t.join(2)
    assert not t.is_alive(), "the embed did not stop within 2 s of the cancel"
    assert result["outcome"] == "cancelled"
    assert time.perf_counter() - t0 < 2


def test_stack_get_cancelled_leaves_no_inflight_entry():
    model = ComponentModel(embed_delay=5)
    img = np.zeros((3, 20, 20), np.uint8)
    img[:, 5:10, 5:10] = 255
    st = StackEmbeddings(model, img)
    token, result = CancelToken(), {}

    def work():
        try:
            with cancel_scope(token):
                st.get(1)
            result["outcome"] = "finished"
        except Cancelled:
            result["outcome"] = "cancelled"

    t = threading.Thread(target=work)
    t.start()
    deadline = time.monotonic() + 5
    while not st._inflight and time.monotonic() < deadline:
        time.sleep(0.005)
    assert st._inflight  # the embedding is running
    token.cancel()
    t.join(2)
    assert not t.is_alive() and result["outcome"] == "cancelled"
    assert st._inflight == {} and st.cached(1) is None and st.computed == 0
    model.embed_delay = 0
    emb = st.get(1)  # a later get computes it
    assert emb.features["components"].max() == 1 and st.cached(1) is emb and st._inflight == {}


def test_stack_waiter_computes_after_the_owner_is_cancelled():
    """A second caller waiting on a cancelled plane (outside the scope) computes it itself."""
    model = ComponentModel(embed_delay=0.5)
    st = StackEmbeddings(model, np.zeros((2, 10, 10), np.uint8))
    token, out = CancelToken(), {}

    def owner():
        try:
            with cancel_scope(token):
                st.get(0)
        except Cancelled:
            out["owner"] = "cancelled"

    def waiter():
        out["waiter"] = st.get(0)

    t1 = threading.Thread(target=owner)
    t1.start()
    deadline = time.monotonic() + 5
    while not st._inflight and time.monotonic() < deadline:
        time.sleep(0.005)
    t2 = threading.Thread(target=waiter)
    t2.start()
    time.sleep(0.05)
    token.cancel()
    t1.join(5)
    t2.join(5)
    assert out["owner"] == "cancelled" and out["waiter"] is st.cached(0)
    assert model.embed_calls == 2 and st._inflight == {}
