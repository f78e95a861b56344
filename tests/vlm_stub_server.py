"""A scripted fake VLM server on 127.0.0.1 for the tests (offline-assets.md Sec. 5.3, rule 7).

It speaks both dialects of :mod:`llmhdr_basicsr.perception.vlm_client`: OpenAI chat-completions
(``POST /v1/chat/completions``, ``GET /v1/models``) and Ollama's native API (``POST /api/chat``, ``GET /api/tags``).
Every request is recorded; each chat request is answered with the next :class:`Reply` of the script (then with
``default``), or by a ``responder(index, request) -> Reply`` callable.
"""

from __future__ import annotations

import base64
import collections
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

OPENAI_CHAT = '/v1/chat/completions'
OLLAMA_CHAT = '/api/chat'


@dataclass
class Reply:
    """One scripted answer: ``content`` is the assistant text; ``status`` != 200 sends an error; ``delay`` seconds
    are slept first; ``raw`` replaces the whole HTTP body."""

    content: str = '{"artifacts": false, "regions": []}'
    status: int = 200
    delay: float = 0.0
    raw: bytes | None = None


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict
    body: dict | None = None
    extra: dict = field(default_factory=dict)


def regions_reply(*regions: tuple, artifacts: bool | None = True) -> Reply:
    """A valid reply listing ``(label, [x0, y0, x1, y1], confidence)`` regions."""
    obj = {'regions': [{'label': lab, 'box': list(box), 'confidence': conf} for lab, box, conf in regions]}
    if artifacts is not None:
        obj['artifacts'] = artifacts
    return Reply(json.dumps(obj))


def request_image(body: dict) -> np.ndarray:
    """Decode the image of a recorded chat request (either dialect) and check its encoding.

    OpenAI: the user turn is ``[text, image_url]`` (text first) with a ``data:image/png;base64,`` URL. Ollama: raw
    base64 (no ``data:`` prefix) in the user message's ``images``.

    Returns:
        ``(h, w, 3)`` uint8 RGB.
    """
    user = body['messages'][-1]
    assert user['role'] == 'user'
    if isinstance(user['content'], list):
        text_part, image_part = user['content']
        assert text_part['type'] == 'text' and image_part['type'] == 'image_url'
        url = image_part['image_url']['url']
        prefix = 'data:image/png;base64,'
        assert url.startswith(prefix), url[:40]
        data = base64.b64decode(url[len(prefix) :], validate=True)
    else:
        (b64,) = user['images']
        assert not b64.startswith('data:')
        data = base64.b64decode(b64, validate=True)
    assert data[:8] == b'\x89PNG\r\n\x1a\n', 'image is not a PNG'
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    return img[..., ::-1]


class StubVLMServer:
    """``with StubVLMServer() as stub: ... stub.url ...``; ``stub.push(Reply(...))`` scripts the next answers."""

    def __init__(self, replies: list[Reply] | None = None, default: Reply | None = None, responder=None):
        self.script = collections.deque(replies or [])
        self.default = default or Reply()
        self.responder = responder
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control -------------------------------------------------------------------------------------------------------

    def start(self) -> StubVLMServer:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, payload: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header('Content-Type', 'application/json')
                    self.send_header('Content-Length', str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def do_GET(self):
                stub._record(Recorded('GET', self.path, dict(self.headers)))
                if self.path == '/v1/models':
                    self._send(200, json.dumps({'object': 'list', 'data': [{'id': 'stub'}]}).encode())
                elif self.path == '/api/tags':
                    self._send(200, json.dumps({'models': [{'name': 'stub'}]}).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get('Content-Length', 0)))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                rec = Recorded('POST', self.path, dict(self.headers), body)
                index = stub._record(rec)
                if self.path not in (OPENAI_CHAT, OLLAMA_CHAT):
                    self._send(404, b'{"error": "not found"}')
                    return
                reply = stub._next_reply(index, rec)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.raw is not None:
                    self._send(reply.status, reply.raw)
                elif reply.status != 200:
                    self._send(reply.status, json.dumps({'error': f'scripted HTTP {reply.status}'}).encode())
                elif self.path == OPENAI_CHAT:
                    msg = {'role': 'assistant', 'content': reply.content}
                    payload = {'object': 'chat.completion', 'model': (body or {}).get('model'),
                               'choices': [{'index': 0, 'message': msg, 'finish_reason': 'stop'}]}  # fmt: skip
                    self._send(200, json.dumps(payload).encode())
                else:
                    payload = {'model': (body or {}).get('model'), 'done': True,
                               'message': {'role': 'assistant', 'content': reply.content}}  # fmt: skip
                    self._send(200, json.dumps(payload).encode())

        self._httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> StubVLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- script and records --------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (append ``/v1`` for the OpenAI dialect)."""
        host, port = self._httpd.server_address[:2]
        return f'http://{host}:{port}'

    def push(self, *replies: Reply) -> None:
        with self._lock:
            self.script.extend(replies)

    @property
    def chat_requests(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.method == 'POST']

    def _record(self, rec: Recorded) -> int:
        with self._lock:
            index = sum(r.method == 'POST' for r in self.requests) if rec.method == 'POST' else -1
            self.requests.append(rec)
            return index

    def _next_reply(self, index: int, rec: Recorded) -> Reply:
        if self.responder is not None:
            return self.responder(index, rec)
        with self._lock:
            return self.script.popleft() if self.script else self.default
