"""Instruction generation over real HTTP: a small local OpenAI-style server written here (to inject
429 / 5xx / malformed answers), and the real ``knowlm serve`` on the tiny model, killed mid-run and
re-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from knowlm_ray.config import GenerateConfig
from knowlm_ray.curate.generate import StateMismatch, read_inputs, run
from knowlm_ray.curate.generate_client import EndpointError
from knowlm_ray.curate.records import view
from knowlm_ray.errors import MissingPathError

REPO = Path(__file__).resolve().parents[2]

SEEDS = [
    "Write a short poem about the autumn wind.",
    "List three cities in China and one fact about each.",
    "Explain why the sky looks blue during the day.",
    "请用一句话介绍长江。",
    "Translate the sentence into French: I like green tea.",
]


class Fake:
    """What the test server answers: ``script`` (a list, used up first) then ``default``."""

    NEW = [
        "Describe how volcanoes form beneath the ocean floor.",
        "Compose a haiku celebrating morning tea rituals in Hangzhou.",
        "Compare glaciers with rivers as agents of erosion.",
        "Suggest four names for a bakery that sells rye bread.",
        "Outline a weekly budget for a student living alone.",
        "Summarize the rules of chess for a curious child.",
    ]

    def __init__(self):
        self.generated = 0
        self.script: list = []
        self.calls: list[dict] = []
        self.lock = threading.Lock()

    def default(self, body: dict, n: int):
        prompt = body["messages"][0]["content"] if "messages" in body else body["prompt"]
        if prompt.startswith("Come up with a series of tasks:"):
            # one new task, one near-copy of a seed (ROUGE drops it), one too short
            with self.lock:
                new, self.generated = self.NEW[self.generated % len(self.NEW)], self.generated + 1
            text = f" {new}\n7. Explain why the sky looks blue during the day time.\n8. Say hi"
        else:
            text = f"answer {n}"
        return 200, {}, {"id": f"req-{n}", "choices": [{"message": {"content": text}, "finish_reason": "stop"}]}

    def answer(self, body: dict):
        with self.lock:
            n = len(self.calls)
            self.calls.append(body)
            step = self.script.pop(0) if self.script else None
        if step is None:
            return self.default(body, n)
        return step(body, n) if callable(step) else step


@pytest.fixture(scope="module")
def fake():
    state = Fake()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, status, headers, payload):
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            try:
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                pass

        def do_GET(self):
            self._send(200, {}, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.headers.get("Authorization") != "Bearer k":
                return self._send(401, {}, {"error": {"message": "bad key"}})
            self._send(*state.answer(body))

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    yield state
    srv.shutdown()


def _seeds(path: Path) -> Path:
    lines = [json.dumps({"id": f"seed{i}", "instruction": s, "input": "", "output": ""}) for i, s in enumerate(SEEDS)]
    lines.insert(2, '{"instruction": ')  # a malformed line: quarantined, counted
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _cfg(tmp_path: Path, url: str, **kw) -> GenerateConfig:
    base = {
        "generator": "self_instruct",
        "inputs": [str(_seeds(tmp_path / "seeds.jsonl"))],
        "out_dir": str(tmp_path / "out"),
        "base_url": url,
        "api_key": "k",
        "num_tasks": 4,
        "num_prompt_instructions": 3,
        "concurrency": 2,
        "retry_backoff_s": 0.01,
        "timeout_s": 10,
    }
    return GenerateConfig.model_validate({**base, **kw})


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _adds_up(m: dict) -> None:
    t, i = m["tasks"], m["instructions"]
    assert t["planned"] == t["answered"] + t["malformed"] + t["failed"] + t["pending"]
    assert t["asked"] == t["answered"] + t["malformed"] + t["failed"]
    assert i["candidates"] == i["kept"] + sum(i["dropped"].values())


def test_self_instruct_keeps_novel_answered_instructions_with_provenance(tmp_path, fake):
    fake.script.clear()
    cfg = _cfg(tmp_path, fake.url)
    m = run(cfg)
    recs = _lines(tmp_path / "out" / "generated.jsonl")
    _adds_up(m)
    assert m["inputs"] == {"read": 6, "malformed": 1, "skipped_long": 0, "used": 5}
    assert m["tasks"] == {"planned": 4, "asked": 4, "answered": 4, "malformed": 0, "failed": 0, "pending": 0}
    # per task: the new one kept; the seed's near-copy dropped by ROUGE-L; "Say hi" too short
    assert m["instructions"] == {"candidates": 12, "kept": 4, "dropped": {"length": 4, "rouge": 4}}
    assert sorted(r["id"] for r in recs) == [f"self_instruct-{i:06d}-0" for i in range(4)]
    assert all(view(r)[0] == "alpaca" for r in recs)  # the curation job reads them as alpaca records
    r = recs[0]
    assert set(r) >= {"instruction", "input", "output", "generator", "task_id", "seed_tasks", "model", "endpoint"}
    assert r["instruction"] in Fake.NEW and r["output"].startswith("answer ")
    assert r["model"] == "fake-model" and r["endpoint"] == fake.url and r["request_id"].startswith("req-")
    assert len(r["seed_tasks"]) == 3 and all(s.startswith("seed") for s in r["seed_tasks"])
    ledger = _lines(tmp_path / "out" / "tasks.jsonl")
    assert {d["reason"] for e in ledger for d in e["dropped_instructions"]} == {"rouge"}
    assert all(d["rouge_l"] > 0.7 for e in ledger for d in e["dropped_instructions"])
    q = _lines(tmp_path / "out" / "quarantine.jsonl")
    assert len(q) == 1 and q[0]["line"] == 3
    # the request EasyInstruct sends: the prompt as one user message, its sampling
    gen = next(c for c in fake.calls if c["messages"][0]["content"].startswith("Come up with"))
    assert gen["model"] == "fake-model" and gen["temperature"] == 0.5 and gen["presence_penalty"] == 2
    # a re-run has nothing left to ask and leaves the output as it was
    before, n_calls = (tmp_path / "out" / "generated.jsonl").read_bytes(), len(fake.calls)
    assert run(cfg)["instructions"]["kept"] == 4 and len(fake.calls) == n_calls
    assert (tmp_path / "out" / "generated.jsonl").read_bytes() == before
    with pytest.raises(StateMismatch, match="num_tasks"):
        run(cfg.model_copy(update={"num_tasks": 5}))
    with pytest.raises(StateMismatch, match="rouge_threshold"):
        run(cfg.model_copy(update={"rouge_threshold": 0.5}))


def test_retries_on_429_and_5xx_then_failed_tasks_are_asked_again(tmp_path, fake):
    busy = (503, {"Retry-After": "0"}, {"error": {"message": "overloaded"}})
    fake.script[:] = [busy, (429, {}, {"error": {}}), (502, {}, b"bad gateway")]
    cfg = _cfg(
        tmp_path,
        fake.url,
        generator="backtranslation",
        text_field=["instruction"],
        num_tasks=0,
        concurrency=1,
        max_retries=3,
    )
    m = run(cfg)
    assert m["tasks"]["answered"] == 5 and m["requests"]["retried_this_run"] == 3
    recs = _lines(tmp_path / "out" / "generated.jsonl")
    assert recs[0]["attempts"] == 4 and all(r["attempts"] == 1 for r in recs[1:])
    assert recs[0]["output"] == SEEDS[0]  # backtranslation's output is the text itself

    # retries used up: the task fails (counted), the run goes on; the next run asks it again
    out2 = tmp_path / "second"
    cfg2 = cfg.model_copy(update={"out_dir": str(out2), "max_retries": 1})
    fake.script[:] = [(500, {}, b"")] * 2
    m = run(cfg2)
    _adds_up(m)
    assert m["tasks"]["failed"] == 1 and m["tasks"]["answered"] == 4 and m["instructions"]["kept"] == 4
    m = run(cfg2)
    assert m["tasks"]["failed"] == 0 and m["tasks"]["answered"] == 5 and m["requests"]["task_tries"] == 6
    assert sorted(r["id"] for r in _lines(out2 / "generated.jsonl")) == [f"backtranslation-{i:06d}-0" for i in range(5)]


def test_a_timed_out_request_is_retried(tmp_path, fake):
    def slow(body, n):
        time.sleep(1.0)  # past timeout_s: the client gives up on this try
        return fake.default(body, n)

    fake.script[:] = [slow]
    cfg = _cfg(tmp_path, fake.url, generator="backtranslation", text_field=["instruction"], num_tasks=1)
    m = run(cfg.model_copy(update={"timeout_s": 0.3, "concurrency": 1}))
    assert m["tasks"]["answered"] == 1 and m["requests"]["retried_this_run"] == 1
    assert _lines(tmp_path / "out" / "generated.jsonl")[0]["attempts"] == 2


def test_malformed_answers_are_counted_not_fatal(tmp_path, fake):
    fake.script[:] = [
        (200, {}, b"<html>not json</html>"),
        (200, {}, {"id": "x", "choices": []}),
        (200, {}, {"choices": [{"message": {"content": None}}]}),
        (400, {}, {"error": {"message": "context_length_exceeded"}}),
    ]
    cfg = _cfg(tmp_path, fake.url, generator="evol_instruct", num_tasks=0, concurrency=1, answer=False)
    m = run(cfg)
    _adds_up(m)
    assert m["tasks"] == {"planned": 5, "asked": 5, "answered": 1, "malformed": 3, "failed": 1, "pending": 0}
    reasons = {e["reason"] for e in _lines(tmp_path / "out" / "tasks.jsonl") if e["status"] == "malformed"}
    assert reasons == {"body is not JSON", "no choices[0]", "choices[0].message.content is not a string"}
    (rec,) = _lines(tmp_path / "out" / "generated.jsonl")
    assert rec["evolution"] in {"breadth", "constraints", "deepen", "concretizing", "reasoning"}
    assert rec["output"] == "" and rec["parent"] == SEEDS[4]


def test_a_refused_key_or_a_missing_input_stops_the_run_as_a_user_error(tmp_path, fake):
    with pytest.raises(EndpointError, match="401"):
        run(_cfg(tmp_path, fake.url, api_key="wrong", model="m"))
    with pytest.raises(MissingPathError, match="nope.jsonl"):
        run(_cfg(tmp_path, fake.url).model_copy(update={"inputs": [str(tmp_path / "nope.jsonl")]}))


def test_backtranslation_reads_the_first_text_field_and_skips_long_texts(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        '{"content": "短文本。"}\n{"text": "' + "x" * 50 + '"}\n{"title": "no text"}\n[1]\n', encoding="utf-8"
    )
    cfg = GenerateConfig(generator="backtranslation", inputs=[str(docs)], out_dir=str(tmp_path / "o"), max_chars=20)
    got = read_inputs(cfg)
    assert [i["text"] for i in got.items] == ["短文本。"] and got.skipped_long == 1
    assert [q["reason"] for q in got.quarantine] == [
        "no text in any of ['text', 'content', 'output']",
        "not a JSON object",
    ]


# ---------------------------------------------------------------------------- the real server
@pytest.fixture(scope="module")
def knowlm_server(ray_local, tiny_model, free_port_fn):
    from ray import serve

    from knowlm_ray.serve import launch

    serve.shutdown()  # Serve keeps the port of its first start; another module may have left one
    url = launch.start(
        str(tiny_model), port=free_port_fn(), num_replicas=1, timeout_s=120, api_key="gen-key", request_timeout_s=60
    )
    yield url
    launch.stop()


@pytest.fixture(scope="module")
def free_port_fn():
    import socket

    def free() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return free


@pytest.mark.slow
def test_killed_and_rerun_against_knowlm_serve_yields_each_record_once(tmp_path, knowlm_server):
    docs = tmp_path / "docs.jsonl"
    texts = [f"The bridge number {i} crosses the river near the old mill." for i in range(16)]
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "gen"
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(
        f"generator: backtranslation\ninputs: [{docs}]\nout_dir: {out}\nbase_url: {knowlm_server}/v1\n"
        "api_key_env: KNOWLM_API_KEY\nnum_tasks: 0\nmax_tokens: 12\nconcurrency: 2\n"
    )
    cmd = [sys.executable, str(REPO / "jobs" / "generate_instructions.py"), "--config", str(cfg)]
    env = {**os.environ, "KNOWLM_API_KEY": "gen-key", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ledger = out / "tasks.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if ledger.exists() and ledger.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_first = set()
    for line in ledger.read_text().splitlines():
        try:
            done_first.add(json.loads(line)["task_id"])
        except ValueError:  # the kill tore it
            pass
    assert 3 <= len(done_first) < 16
    vouched = b"".join(
        line
        for line in (out / "generated.jsonl").read_bytes().splitlines(keepends=True)
        if line.endswith(b"\n") and json.loads(line)["task_id"] in done_first
    )
    with (out / "generated.jsonl").open("ab") as f:  # a write the kill tore
        f.write(b'{"instruction": "half a rec')

    # the re-run through the other door: `knowlm generate-instructions` (the same JobSpec)
    again = [sys.executable, "-m", "knowlm_ray.cli", "generate-instructions", "--config", str(cfg)]
    r = subprocess.run(again, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "16 tasks" in r.stdout and "generated.jsonl" in r.stdout
    recs = _lines(out / "generated.jsonl")
    entries = _lines(ledger)
    m = json.loads((out / "manifest.json").read_text())
    _adds_up(m)
    assert m["tasks"]["answered"] == 16 and m["tasks"]["pending"] == 0
    assert m["repaired"]["records_bytes"] >= len(b'{"instruction": "half a rec')
    assert sorted(e["task_id"] for e in entries) == [f"backtranslation-{i:06d}" for i in range(16)]
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)) == m["instructions"]["kept"] == sum(e["records"] for e in entries)
    assert vouched and (out / "generated.jsonl").read_bytes().startswith(vouched)
    for rec in recs:
        assert rec["output"] == texts[int(rec["seed_tasks"][0][1:])] and rec["endpoint"] == f"{knowlm_server}/v1"
        assert rec["model"] and rec["request_id"] and rec["attempts"] == 1


@pytest.mark.slow
def test_self_instruct_through_knowlm_serve_completions(tmp_path, knowlm_server):
    cfg = _cfg(
        tmp_path,
        f"{knowlm_server}/v1",
        api="completions",
        api_key="gen-key",
        num_tasks=3,
        max_tokens=24,
        answer_max_tokens=8,
        concurrency=3,
        rouge_threshold=0.5,
    )
    m = run(cfg)
    _adds_up(m)
    # the route took Self-Instruct's sampling (presence_penalty 2, top_p 0.5); what the tiny model
    # writes decides how many survive the filters, the counts add up whatever it is
    assert m["tasks"]["failed"] == 0 and m["tasks"]["asked"] == 3 and m["instructions"]["candidates"] >= 3
    assert m["model"] and m["api"] == "completions"
    for rec in _lines(tmp_path / "out" / "generated.jsonl"):
        assert rec["rouge_l"] <= 0.5 and rec["answer_request_id"] and rec["model"] == m["model"]


def test_backtranslation_self_curation_keeps_pairs_rated_at_least_min_score(tmp_path, fake):
    def rated(text):
        return 200, {}, {"id": "rate", "choices": [{"message": {"content": text}, "finish_reason": "stop"}]}

    # per task (one at a time): the instruction (the server's default answer), then its rating
    fake.script[:] = [None, rated("Clear.\nScore: 5"), None, rated("Vague.\nScore: 2"), None, (200, {}, b"{")]
    fake.script += [None, rated("I cannot rate this."), None, rated("Good.\nScore: 4")]
    cfg = _cfg(tmp_path, fake.url, generator="backtranslation", text_field=["instruction"], num_tasks=0)
    m = run(cfg.model_copy(update={"concurrency": 1, "min_score": 4}))
    _adds_up(m)
    assert m["instructions"] == {
        "candidates": 5,
        "kept": 2,
        "dropped": {"low_score": 1, "no_score": 1, "score_malformed": 1},
    }
    recs = _lines(tmp_path / "out" / "generated.jsonl")
    assert [(r["seed_tasks"], r["score"]) for r in recs] == [(["seed0"], 5), (["seed4"], 4)]
    rating = fake.calls[-1]["messages"][0]["content"]
    assert rating.startswith("Below is an instruction from an user and a candidate answer.")
    assert rating.endswith(f"\n\nInstruction: {recs[1]['instruction']}\n\n Response:{SEEDS[4]}")
