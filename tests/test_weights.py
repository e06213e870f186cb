"""Downloads against a local HTTP server on 127.0.0.1 serving a random-weight checkpoint."""

from __future__ import annotations

import dataclasses
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import napari_promptseg as ps
from napari_promptseg.models.weights import WeightsError, fetch_weights, weights_path


class _Server:
    """Serves ``/good`` (the checkpoint), ``/corrupt`` (same size, other bytes) and ``/cut``
    (announces the full length, sends half, closes). Counts requests per path."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.hits: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.strip("/").split(".")[0]
                outer.hits[name] = outer.hits.get(name, 0) + 1
                body = outer.payload
                if name == "corrupt":
                    body = bytes(reversed(body))
                elif name not in ("good", "cut"):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name == "cut":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server(tiny_ckpt):
    s = _Server(tiny_ckpt.read_bytes())
    yield s
    s.close()


def _spec(base, server, name):
    return dataclasses.replace(base, name=f"tiny_{name}", url=f"{server.url}/{name}.pth")


def _leftovers(path):
    """Files in the weights folder other than the verified checkpoint and its marker."""
    if not path.parent.exists():
        return []
    return sorted(p.name for p in path.parent.iterdir() if not p.name.startswith(path.name))


def test_download_verifies_reports_progress_and_loads(server, tiny_spec):
    spec = _spec(tiny_spec, server, "good")
    seen = []
    path = fetch_weights(spec, progress=lambda done, total: seen.append((done, total)))
    assert path == weights_path(spec) and path.read_bytes() == server.payload
    assert seen and seen[-1] == (len(server.payload), len(server.payload))
    assert all(d <= t for d, t in seen)
    # load_model with checkpoint=None goes through the same download and can segment
    model = ps.load_model(spec, device="cpu", progress=False)
    assert model.checkpoint_id == spec.known_hash
    img = np.zeros((40, 60), np.uint8)
    pred = model.predict(model.embed(img), points=[[20, 30]])
    assert pred.masks.shape == (3, 40, 60)


def test_cache_is_reused_without_network(server, tiny_spec):
    spec = _spec(tiny_spec, server, "good")
    fetch_weights(spec, progress=False)
    hits = server.hits.get("good", 0)
    assert fetch_weights(spec, progress=False) == weights_path(spec)
    assert server.hits.get("good", 0) == hits
    # and offline mode still finds it
    import os

    os.environ["PROMPTSEG_OFFLINE"] = "1"
    try:
        assert fetch_weights(spec, progress=False).is_file()
    finally:
        del os.environ["PROMPTSEG_OFFLINE"]


def test_a_corrupted_cached_file_is_downloaded_again(server, tiny_spec):
    spec = _spec(tiny_spec, server, "good")
    path = fetch_weights(spec, progress=False)
    path.write_bytes(b"garbage")
    hits = server.hits.get("good", 0)
    assert fetch_weights(spec, progress=False).read_bytes() == server.payload
    assert server.hits["good"] == hits + 1


def test_hash_mismatch_removes_the_file(server, tiny_spec):
    spec = _spec(tiny_spec, server, "corrupt")
    with pytest.raises(WeightsError, match="does not match the expected hash") as info:
        fetch_weights(spec, progress=False)
    assert spec.url in str(info.value) and str(weights_path(spec)) in str(info.value)
    assert not weights_path(spec).exists() and _leftovers(weights_path(spec)) == []


def test_interrupted_transfer_leaves_nothing(server, tiny_spec):
    spec = _spec(tiny_spec, server, "cut")
    with pytest.raises(WeightsError, match="interrupted"):
        fetch_weights(spec, progress=False)
    assert not weights_path(spec).exists() and _leftovers(weights_path(spec)) == []


def test_cancel_from_the_progress_callback(server, tiny_spec):
    spec = _spec(tiny_spec, server, "good")

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        raise Cancelled

    with pytest.raises(Cancelled):
        fetch_weights(spec, progress=cancel)
    assert not weights_path(spec).exists() and _leftovers(weights_path(spec)) == []


def test_offline_error_names_url_file_and_place(tiny_spec):
    # port 9 (discard) on loopback: nothing listens, the connection is refused at once
    spec = dataclasses.replace(tiny_spec, name="tiny_offline", url="http://127.0.0.1:9/w.pth")
    with pytest.raises(WeightsError) as info:
        fetch_weights(spec, progress=False)
    msg = str(info.value)
    assert "offline" in msg and spec.url in msg and str(weights_path(spec)) in msg
    assert "checkpoint=" in msg


def test_offline_mode_never_touches_the_network(server, tiny_spec, monkeypatch):
    monkeypatch.setenv("PROMPTSEG_OFFLINE", "1")
    spec = _spec(tiny_spec, server, "good")
    spec = dataclasses.replace(spec, name="tiny_never")
    hits = dict(server.hits)
    with pytest.raises(WeightsError, match="PROMPTSEG_OFFLINE"):
        ps.load_model(spec, device="cpu")
    assert server.hits == hits


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch, tiny_spec):
    monkeypatch.setenv("PROMPTSEG_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert weights_path(tiny_spec) == tmp_path / "elsewhere" / "weights" / "sam_tiny_test.pth"


def test_xxh128_hashes_as_used_by_micro_sam(server, tiny_spec):
    import xxhash

    digest = xxhash.xxh128(server.payload).hexdigest()
    spec = dataclasses.replace(_spec(tiny_spec, server, "good"), name="tiny_xxh",
                               known_hash=f"xxh128:{digest}")
    assert fetch_weights(spec, progress=False).read_bytes() == server.payload
    bad = dataclasses.replace(spec, name="tiny_xxh_bad", known_hash="xxh128:" + "0" * 32)
    with pytest.raises(WeightsError, match="does not match"):
        fetch_weights(bad, progress=False)


def test_micro_sam_models_are_xxh128():
    assert ps.models.get_spec("vit_b_lm").known_hash.startswith("xxh128:")


def test_offline_checks_a_file_placed_by_hand(server, tiny_spec, monkeypatch):
    spec = dataclasses.replace(_spec(tiny_spec, server, "good"), name="tiny_by_hand")
    path = weights_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("PROMPTSEG_OFFLINE", "1")
    hits = dict(server.hits)
    path.write_bytes(b"not the checkpoint")
    with pytest.raises(WeightsError, match="does not match the expected hash"):
        fetch_weights(spec, progress=False)
    path.write_bytes(server.payload)
    assert fetch_weights(spec, progress=False) == path
    assert server.hits == hits  # never downloaded
