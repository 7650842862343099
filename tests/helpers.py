"""Helpers shared by a unit test module and its integration twin (tests/unit/…, tests/integration/…)."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from instructedit_utils.config.method import MethodConfig
from instructedit_utils.methods.mend import MendEditor


def tiny_editor(model, instructions=True, edit_lr=3.0):
    cfg = MethodConfig(name="tiny", rank=8, normalize=False, norm_warmup=0, edit_lr=edit_lr,
                       use_instructions=instructions)
    torch.manual_seed(0)
    return MendEditor.for_model(model, cfg, (2, 3))


class Stub:
    """A local HTTP server answering POST /v1/chat/completions from a list of (status, body, delay, headers)."""

    def __init__(self, answers):
        self.answers, self.requests = list(answers), []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                status, reply, delay, headers = stub.answers.pop(0) if len(stub.answers) > 1 else stub.answers[0]
                time.sleep(delay)
                data = reply(body) if callable(reply) else reply
                data = data if isinstance(data, bytes) else json.dumps(data).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def tiny_method_config(**over):
    base = dict(name="tiny", tasks=("counterfact", "convsent"), rank=8, steps=6, val_every=3, norm_warmup=3,
                log_every=1, patience=0, lr=1e-3, lr_lr=1e-3, edit_lr=1e-3)
    return MethodConfig(**{**base, **over})


def editor_state(editor: MendEditor):
    return {k: v.clone() for k, v in editor.state_dict().items()}
