"""`knowlm extract`: schema arguments, --server client (routes present and missing), --model path."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from knowlm_ray.cli import main
from knowlm_ray.clients.extract import parse_schema_args


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append((self.path, body))
        if self.path != "/extract" or not self.server.has_extract:
            self._send(404, {"detail": "Not Found"})
        elif body["task"] == "kg":
            self._send(400, {"error": {"message": "task: bad", "type": "invalid_request_error"}})
        else:
            self._send(
                200,
                {
                    "id": "x",
                    "text": body["text"],
                    "entities": [{"text": "鲁迅", "type": "人物"}],
                    "relations": [],
                    "events": [],
                    "raw": ["(鲁迅,人物)"],
                },
            )

    def _send(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    def start(has_extract: bool):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        srv.has_extract, srv.bodies = has_extract, []
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv, f"http://127.0.0.1:{srv.server_address[1]}"

    servers: list = []
    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_schema_arguments():
    assert parse_schema_args("ner", ["人物", "地点"]) == ["人物", "地点"]
    assert parse_schema_args("ee", ["获奖=获奖者,奖项", "地震"]) == {"获奖": ["获奖者", "奖项"], "地震": None}
    assert parse_schema_args("ee", ['{"获奖": ["获奖者"]}']) == {"获奖": ["获奖者"]}
    assert parse_schema_args("re", ['["出生地"]']) == ["出生地"]


def test_server_client(server, capsys, tmp_path):
    srv, url = server(True)
    main(["extract", "--task", "ner", "--schema", "人物", "--lang", "zh", "--text", "鲁迅是作家。", "--server", url])
    out = json.loads(capsys.readouterr().out)
    assert out["entities"] == [{"text": "鲁迅", "type": "人物"}]
    assert srv.bodies == [("/extract", {"task": "ner", "text": "鲁迅是作家。", "schema": ["人物"], "lang": "zh"})]
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "a", "text": "鲁迅"}\n\n{"text": "周树人"}\n', encoding="utf-8")
    main(
        [
            "extract",
            "--task",
            "ner",
            "--schema",
            "人物",
            "--file",
            str(docs),
            "--server",
            url + "/",
            "--max-tokens",
            "32",
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and srv.bodies[1][1]["id"] == "a" and srv.bodies[2][1]["parameters"] == {"max_tokens": 32}


def test_server_without_extract_route_is_one_clear_error(server, capsys):
    _, url = server(False)
    with pytest.raises(SystemExit) as exc:
        main(["extract", "--task", "ner", "--schema", "人物", "--text", "鲁迅", "--server", url])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no POST /extract route" in err and "404" in err
    with pytest.raises(SystemExit):
        main(["extract", "--task", "ner", "--schema", "人物", "--text", "x", "--server", "http://127.0.0.1:9"])
    assert "cannot reach" in capsys.readouterr().err


def test_request_errors_before_any_model(capsys, tmp_path):
    for argv, msg in [
        (["--schema", "人物", "人物", "--text", "x"], "twice"),
        (["--schema", "人物", "--text", "  "], "text"),
        (["--schema", "人物", "--file", str(tmp_path / "nope.txt")], "not found"),
    ]:
        with pytest.raises(SystemExit):
            main(["extract", "--task", "ner", *argv, "--model", str(tmp_path / "no-model")])
        assert msg in capsys.readouterr().err


def test_show_prompts_with_a_server_names_the_format(server, capsys):
    """The prompts /extract sends depend on the server's prompt_format, which the client does not
    know: --show-prompts with --server needs --prompt-format, and then sends nothing."""
    srv, url = server(True)
    argv = ["extract", "--task", "ner", "--schema", "人物", "--text", "鲁迅。", "--server", url, "--show-prompts"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--prompt-format" in err and err.count("\n") == 1
    main([*argv, "--prompt-format", "oneke"])
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line).startswith("[INST] <<SYS>>") and srv.bodies == []


@pytest.mark.slow
def test_model_in_process(tiny_model, capsys, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("鲁迅，原名周树人。" * 3, encoding="utf-8")
    main(
        [
            "extract",
            "--task",
            "re",
            "--schema",
            "出生地",
            "作者",
            "--file",
            str(doc),
            "--model",
            str(tiny_model),
            "--max-tokens",
            "6",
            "--format",
            "tuple",
        ]
    )
    rec = json.loads(capsys.readouterr().out)
    assert set(rec) >= {"id", "text", "entities", "relations", "events", "raw", "dropped"}
    assert rec["text"] == doc.read_text(encoding="utf-8") and len(rec["raw"]) == 1
    assert all(r["relation"] in ("出生地", "作者") for r in rec["relations"])
