"""ComfyClient.run's polling: a /history answer slower than one request's socket timeout is asked
for again until the prompt's own deadline (a loaded CPU machine delays the server's answers past
30 s while a prompt runs), not taken for the prompt timing out. The server here stands in for
that one condition (the real ComfyUI cannot be made slow on demand); every other client test
runs against the real ComfyUI server."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fashion_rag.cli.comfy_server import ComfyClient, PromptFailed


class _SlowHistory(BaseHTTPRequestHandler):
    polls: list[float] = []

    def _answer(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on this late answer (its HTTP timeout): the case under test

    def do_POST(self) -> None:  # /prompt
        self.rfile.read(int(self.headers["Content-Length"]))
        self._answer({"prompt_id": "p1", "number": 0, "node_errors": {}})

    def do_GET(self) -> None:  # /history/p1: the first poll answers after 1 s, the next at once
        self.polls.append(time.monotonic())
        if len(self.polls) == 1:
            time.sleep(1.0)
        self._answer({"p1": {"status": {"completed": True, "status_str": "success"}, "outputs": {}}})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_server():
    _SlowHistory.polls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowHistory)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_late_poll_answer_is_polled_again(slow_server):
    client = ComfyClient(slow_server)
    client.HTTP_TIMEOUT = 0.3
    entry = client.run({"1": {"class_type": "X", "inputs": {}}}, timeout=30)
    assert entry["status"]["status_str"] == "success"
    assert len(_SlowHistory.polls) == 2  # the late one, then the one that was answered


def test_the_prompt_deadline_still_holds(slow_server):
    client = ComfyClient(slow_server)
    client.HTTP_TIMEOUT = 0.3
    with pytest.raises(TimeoutError, match="prompt p1 did not finish in 0.2s"):
        client.run({"1": {"class_type": "X", "inputs": {}}}, timeout=0.2)



def test_refused_and_failed_prompts_raise(comfy_server):
    """Against the real server (the suite's shared one): a prompt whose one output validates and
    another does not (ComfyUI answers 200 with node_errors and would run the good one), and a
    prompt that fails while it runs (keypoints that are not JSON). Mutations caught: node_errors
    in a 200 answer ignored (the half-valid prompt run as if accepted); a finished history entry
    returned without looking at its status_str (a failed run taken for a result)."""
    client = ComfyClient(comfy_server.url)
    empty = {"width": 8, "height": 8, "batch_size": 1, "color": 0}
    good = {"1": {"class_type": "EmptyImage", "inputs": empty},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    half = {**good, "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}  # no filename_prefix
    with pytest.raises(PromptFailed) as err:
        client.run(half, timeout=120)
    assert err.value.kind == "validation" and list(err.value.payload["node_errors"]) == ["3"]
    failing = {"1": {"class_type": "FashionRAGPoseFromKeypoints",
                     "inputs": {"keypoints_json": "not json", "width": 64, "height": 64}},
               "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 1]}}}
    with pytest.raises(PromptFailed) as err:
        client.run(failing, timeout=120)
    assert err.value.kind == "execution" and err.value.payload["status_str"] == "error"


def test_ready_means_the_pack_node_is_there(comfy_server):
    """wait_ready on the suite's running server, asking for a node it does not have: the server
    answers, so the error is that the pack did not load (with the log), at once. Mutation
    caught: /object_info's answer not checked for the node (any answering server taken as ready)."""
    comfy_server.wait_ready(timeout=30)  # the pack's index loader is there
    with pytest.raises(RuntimeError, match="ComfyUI runs but the pack did not load:\n"):
        comfy_server.wait_ready(timeout=30, node="FashionRAGNoSuchNode")
