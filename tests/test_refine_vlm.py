"""The VLM policy against a scripted fake OpenAI-compatible server on 127.0.0.1.

Every reply the fake gives is hostile or broken in one way; the loop must run only what the
action language allows, leave the scene unchanged on every rejection, and report each one.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

pytest.importorskip("openai")

from sam3d_addon.refine import loop as L  # noqa: E402
from sam3d_addon.refine import policy_vlm as PV  # noqa: E402
from sam3d_addon.refine import synthetic as Y  # noqa: E402


def completion(content: str) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "fake",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content}}]}).encode()


class FakeVLM:
    """Replies from a script, one entry per request: bytes, or ('sleep', seconds, bytes)."""

    def __init__(self):
        self.script: list = []
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.requests.append({"path": self.path, "json": json.loads(body),
                                      "auth": self.headers.get("Authorization")})
                item = fake.script.pop(0) if fake.script else completion('[{"action": "done"}]')
                if isinstance(item, tuple):
                    time.sleep(item[1])
                    item = item[2]
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(item)))
                    self.end_headers()
                    self.wfile.write(item)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    server = FakeVLM()
    yield server
    server.close()


def scene():
    v, f = Y.box_mesh((0.6, 0.6, 0.8))
    st = Y.make_scene([dict(name="chair", vertices=v, faces=f, xy=(0.0, 0.3))])
    st.objects["chair"].matrix_world[2, 3] += 0.3  # floating: a good program drops it
    return st


def run(fake, replies, tmp_path, rounds=1, **kw):
    fake.script = list(replies)
    policy = PV.VLMPolicy(fake.url, "fake-model", api_key="sk-secret-123", timeout_s=kw.pop("timeout_s", 5.0),
                          max_retries=0, **kw)
    st = scene()
    before = st.objects["chair"].matrix_world.copy()
    kept = []
    result = L.refine(st, policy, rounds=rounds, candidates=1, prompt="put the chair on the floor",
                      log_dir=tmp_path / "log", on_keep=lambda i, s: kept.append(i),
                      observe=lambda s: [("photo_camera", b"\x89PNG fake")])
    np.testing.assert_array_equal(st.objects["chair"].matrix_world, before)  # input never mutated
    return result, kept


def test_valid_program_is_kept_and_the_request_is_well_formed(fake, tmp_path):
    prog = [{"action": "place_on", "object": "chair", "support": "ground"}]
    result, kept = run(fake, [completion("```json\n" + json.dumps(prog) + "\n```")], tmp_path)
    assert kept == [0] and result.final.unsupported == []
    req = fake.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["json"]["model"] == "fake-model"
    assert req["auth"] == "Bearer sk-secret-123"
    system, user = req["json"]["messages"]
    assert "place_on" in system["content"] and "Examples" in system["content"]
    parts = user["content"]
    assert "put the chair on the floor" in parts[0]["text"] and '"name":"chair"' in parts[0]["text"]
    assert parts[-1]["image_url"]["url"].startswith("data:image/png;base64,")
    log = (tmp_path / "log" / "refine.jsonl").read_text()
    assert "sk-secret-123" not in log and "sk-secret" not in repr(PV.VLMPolicy(fake.url, "m", api_key="sk-secret-123"))
    assert (tmp_path / "log" / "round00_photo_camera.png").read_bytes() == b"\x89PNG fake"


@pytest.mark.parametrize("reply, reason", [
    (completion("[{'action': 'move'"), "no JSON program"),
    (completion('[{"action": "move", "object": "sofa", "delta": [0, 0, -0.3]}]'), "unknown object 'sofa'"),
    (completion('[{"action": "move", "object": "chair", "delta": [0, 0, -300]}]'), "outside [-10, 10]"),
    (completion('[{"action": "move", "object": "chair", "delta": [0, 0, NaN]}]'), "finite"),
    (completion("import os\nos.system('touch {sentinel}')\n"), "no JSON program"),
    (completion('[{"action": "move", "object": "__import__(\'os\').system(\'touch {sentinel}\')", '
                '"delta": [0, 0, -0.3]}]'), "unknown object"),
    (completion('[{"action": "exec", "code": "open(\'{sentinel}\', \'w\')"}]'), "unknown action 'exec'"),
    (completion('[{"action": "move", "object": "chair", "delta": [0, 0, -0.3], "then": "rm -rf /"}]'), "unexpected field"),
])
def test_rejected_replies_change_nothing_and_are_reported(fake, tmp_path, reply, reason):
    sentinel = tmp_path / "pwned"
    reply = reply.replace(b"{sentinel}", str(sentinel).encode())
    result, kept = run(fake, [reply], tmp_path)
    assert kept == [] and result.kept_rounds == 0 and result.stop_reason == "no improvement"
    cand = result.rounds[0].candidates[0]
    assert any(reason in r for r in cand.rejections), cand.rejections
    assert not sentinel.exists()


def test_python_in_a_free_text_field_stays_text(fake, tmp_path):
    sentinel = tmp_path / "pwned"
    prog = [{"action": "set_material", "object": "chair", "base_color": [0.8, 0.1, 0.1],
             "description": f"__import__('os').system('touch {sentinel}')"},
            {"action": "place_on", "object": "chair", "support": "ground"}]
    result, kept = run(fake, [completion(json.dumps(prog))], tmp_path)
    assert kept == [0] and not sentinel.exists()
    assert result.state.objects["chair"].material.description.startswith("__import__")


def test_huge_reply_is_refused_without_changes(fake, tmp_path):
    big = completion('[{"action": "done"}]' + " " * 2_000_000)
    result, kept = run(fake, [big], tmp_path)
    assert kept == [] and "larger than" in result.stop_reason and result.state.objects["chair"]


def test_slow_server_times_out_and_the_scene_is_unchanged(fake, tmp_path):
    t0 = time.perf_counter()
    result, kept = run(fake, [("sleep", 3.0, completion('[{"action": "done"}]'))], tmp_path, timeout_s=0.5)
    assert time.perf_counter() - t0 < 2.9
    assert kept == [] and "did not answer within 0.5 s" in result.stop_reason
    assert "did not answer" in result.rounds[0].note


def test_remote_endpoints_need_online_access_and_a_key(monkeypatch):
    with pytest.raises(PV.VLMError, match="online access is off"):
        PV.VLMPolicy("https://api.example.com/v1", "m", api_key="k", online_access=False)
    for name in PV.API_KEY_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(PV.VLMError, match="No API key"):
        PV.VLMPolicy("https://api.example.com/v1", "m", online_access=True)
    monkeypatch.setenv("SAM3D_VLM_API_KEY", "env-key")
    assert PV.resolve_api_key() == "env-key"
    assert PV.VLMPolicy("https://api.example.com/v1", "m", online_access=True)
    for url in ("http://localhost:1234/v1", "http://127.0.0.1/v1", "http://[::1]:80/v1"):
        assert PV.is_loopback(url)
    with pytest.raises(PV.VLMError, match="must be http"):
        PV.check_endpoint("file:///etc/passwd", True)
