"""``knowlm web``: request building against the server's own schema, error display over real
HTTP, and the page itself driven in headless Chromium against a running server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from knowlm_ray.clients.web import (
    SERVER_FORMAT,
    SLIDERS,
    TABLE_HEADERS,
    ask,
    ask_extract,
    extract_body,
    generate_body,
    highlights,
    parse_schema,
    slider_bounds,
    table_rows,
)
from knowlm_ray.generation.params import GenerateRequest, GenerationParams

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; `make setup` installs it under CI
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTRUCTION = "介绍一下浙江大学"
# docs/architecture.md's IE record, as /extract answers it (offsets included)
RECORD = {
    "id": "doc-1",
    "text": "鲁迅，原名周树人，1881年出生于浙江绍兴。",
    "lang": "zh",
    "entities": [
        {"text": "鲁迅", "type": "人物", "start": 0, "end": 2},
        {"text": "周树人", "type": "人物", "start": 5, "end": 8},
        {"text": "绍兴府", "type": "地理位置", "start": None, "end": None},  # not in the text
    ],
    "relations": [
        {
            "head": "鲁迅",
            "relation": "出生地",
            "tail": "浙江绍兴",
            "head_start": 0,
            "head_end": 2,
            "tail_start": 17,
            "tail_end": 21,
        }
    ],
    "events": [
        {
            "type": "出生",
            "trigger": "出生",
            "trigger_start": 14,
            "trigger_end": 16,
            "arguments": [{"role": "地点", "text": "浙江绍兴", "start": 17, "end": 21}],
        }
    ],
    "raw": ["..."],
    "dropped": [],
    "unparsed": 0,
}


def test_page_defaults_are_the_servers_defaults_within_its_limits():
    defaults = [slider_bounds(name)[2] for name, _, _ in SLIDERS]
    body = generate_body(INSTRUCTION, "", *map(float, defaults))  # gradio sliders hand back floats
    assert GenerateRequest.model_validate(body).parameters == GenerationParams()  # strict: ints stay ints
    for i, (name, _, _) in enumerate(SLIDERS):
        for end in slider_bounds(name)[:2]:  # both ends of every slider are requests the server accepts
            values = [float(v) for v in defaults]
            values[i] = float(end)
            assert GenerateRequest.model_validate(generate_body("i", "", *values)).parameters.__dict__[name] == end


def test_extract_body_from_the_pages_fields():
    assert extract_body("ner", " 人物\n\n地理位置 \n", SERVER_FORMAT, "鲁迅。", "auto", None) == {
        "task": "ner",
        "text": "鲁迅。",
        "schema": ["人物", "地理位置"],
    }
    body = extract_body("re", '{"出生地": "人出生的地方"}', "oneke", "鲁迅。", "zh", "ie")
    assert body == {
        "task": "re",
        "text": "鲁迅。",
        "schema": {"出生地": "人出生的地方"},
        "lang": "zh",
        "prompt_format": "oneke",
        "model": "ie",
    }
    assert parse_schema('{"出生": ["地点", "时间"]}') == {"出生": ["地点", "时间"]}
    for bad, says in (("  ", "give the labels"), ('{"人物": ', "not valid JSON"), ("[]", "empty")):
        with pytest.raises(ValueError, match=says):
            parse_schema(bad)


def test_highlights_follow_the_records_offsets():
    text = RECORD["text"]
    ner = highlights({**RECORD, "relations": [], "events": []})
    assert "".join(piece for piece, _ in ner) == text  # the whole text, in order
    assert [(p, label) for p, label in ner if label] == [("鲁迅", "人物"), ("周树人", "人物")]  # no offsets: not shown
    re_ = highlights({**RECORD, "entities": [], "events": []})
    assert [(p, label) for p, label in re_ if label] == [("鲁迅", "出生地 (head)"), ("浙江绍兴", "出生地 (tail)")]
    ee = highlights({**RECORD, "entities": [], "relations": []})
    assert [(p, label) for p, label in ee if label] == [("出生", "出生 (trigger)"), ("浙江绍兴", "地点")]
    both = highlights(RECORD)  # overlapping mentions: the first (then the longer) one shows
    assert "".join(p for p, _ in both) == text and ("鲁迅", "人物") in both


def test_tables_have_a_row_per_item():
    assert table_rows("ner", RECORD) == [
        ["鲁迅", "人物", "0–2"],
        ["周树人", "人物", "5–8"],
        ["绍兴府", "地理位置", "not in the text"],
    ]
    assert table_rows("re", RECORD) == [["鲁迅", "出生地", "浙江绍兴", "0–2", "17–21"]]
    assert table_rows("ee", RECORD) == [["出生", "出生 (14–16)", "地点", "浙江绍兴", "17–21"]]
    no_args = {"events": [{"type": "出生", "trigger": "出生", "trigger_start": None, "arguments": []}]}
    assert table_rows("ee", no_args) == [["出生", "出生 (not in the text)", "", "", ""]]
    assert all(len(r) == len(TABLE_HEADERS[t]) for t in TABLE_HEADERS for r in table_rows(t, RECORD))


@pytest.mark.slow
def test_server_errors_become_a_readable_status(server, api_key, free_port):
    answer, status = ask(server, {"instruction": "   "}, api_key)
    assert answer == "" and status.startswith("**Error:** HTTP 422 (invalid_request_error)") and "blank" in status
    answer, status = ask(server, {"instruction": INSTRUCTION}, None)
    assert answer == "" and "HTTP 401 (authentication_error)" in status
    dead = f"http://127.0.0.1:{free_port()}"
    assert ask(dead, {"instruction": INSTRUCTION}) == (
        "",
        f"**Error:** cannot reach {dead}/generate: no server answers there (is it running?)",
    )
    body = {"task": "ner", "text": "鲁迅。", "schema": ["人物", "人物"]}
    marked, table, record, status = ask_extract(server, "ner", body, api_key)
    assert (marked, table["data"], record) == (None, [], None)
    assert status.startswith("**Error:** HTTP 400 (invalid_request_error)") and "twice" in status
    marked, table, record, status = ask_extract(server, "ner", {**body, "schema": ["人物"]}, api_key)
    assert re.match(r"\d+ entit(y|ies) in \d", status), status
    assert "".join(p for p, _ in marked) == "鲁迅。" and record["raw"] and table["headers"] == TABLE_HEADERS["ner"]


@contextmanager
def _knowlm_web(server, api_key, port):
    """``knowlm web`` in its own process against ``server`` (key from $KNOWLM_API_KEY)."""
    env = {**os.environ, "KNOWLM_API_KEY": api_key, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "knowlm_ray.cli", "web", "--server", server, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"knowlm web exited with {proc.returncode}:\n{proc.stdout.read()}")
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail("knowlm web did not answer within 60 s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def web(server, api_key, free_port):
    with _knowlm_web(server, api_key, free_port()) as url:
        yield url


def _chromium():
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing under CI: `make setup` installs Debian's chromium package")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); `make setup` does it as root")


@pytest.mark.slow
def test_page_in_chromium_answers_like_generate_and_shows_errors(web, server, server_post):
    _chromium()
    from playwright.sync_api import sync_playwright

    defaults = [float(slider_bounds(name)[2]) for name, _, _ in SLIDERS]  # what the page sends untouched
    expected = server_post("/generate", generate_body(INSTRUCTION, "", *defaults))["generated_text"]
    base_id = requests.get(f"{server}/healthz", timeout=10).json()["model"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(web)
            answer, status = page.locator("#answer textarea"), page.locator("#status")
            # The model list came from /v1/models, which needs the key: the page has it.
            assert page.locator("#model input").input_value() == base_id
            page.locator("#instruction textarea").fill(INSTRUCTION)
            page.locator("#submit").click()
            page.wait_for_function("document.querySelector('#answer textarea').value.length > 0")
            assert answer.input_value() == expected  # the page's default sliders == /generate's defaults
            page.wait_for_function("document.querySelector('#status').innerText.includes('tokens in')")

            page.locator("#instruction textarea").fill("   ")  # the server answers 422
            page.locator("#submit").click()
            page.wait_for_function("document.querySelector('#status').innerText.includes('Error')")
            assert "HTTP 422" in status.inner_text() and "blank" in status.inner_text()
            assert answer.input_value() == ""
        finally:
            browser.close()


def _open_extraction_tab(page, url):
    page.goto(url)
    page.get_by_role("tab", name="Extraction").click()
    page.locator("#x-text textarea").wait_for()


@pytest.mark.slow
def test_extraction_page_in_chromium_against_the_server(web, server, server_post):
    """Fill the extraction tab, submit to the tiny model's /extract: the text comes back with its
    mentions (a model with random weights rarely finds any), the table's headers, the raw JSON
    equal to /extract's own answer; a schema the server refuses shows its message."""
    _chromium()
    from playwright.sync_api import sync_playwright

    text, labels = "浙江大学位于杭州市。", ["人物", "地理位置", "组织机构"]
    want = server_post("/extract", {"task": "ner", "text": text, "schema": labels})
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            _open_extraction_tab(page, web)
            status = page.locator("#x-status")
            page.locator("#x-schema textarea").fill("\n".join(labels))
            page.locator("#x-text textarea").fill(text)
            page.locator("#x-submit").click()
            page.wait_for_function("/in [0-9.]+ s/.test(document.querySelector('#x-status').innerText)")
            n = len(want["entities"])
            assert f"{n} {'entity' if n == 1 else 'entities'} in" in status.inner_text()
            assert text in page.locator("#x-highlight").inner_text().replace("\n", "")
            assert "offsets" in page.locator("#x-table").inner_text()  # the NER table's headers
            page.get_by_text("Raw JSON").click()  # the collapsed accordion opens
            assert want["raw"][0][:20].strip() in page.locator("#x-raw").inner_text().replace("\\", "")

            page.locator("#x-schema textarea").fill("人物\n人物")  # the server answers 400
            page.locator("#x-submit").click()
            page.wait_for_function("document.querySelector('#x-status').innerText.includes('Error')")
            assert "HTTP 400" in status.inner_text() and "twice" in status.inner_text()
            page.locator("#x-schema textarea").fill('{"人物": ')  # not JSON: no request at all
            page.locator("#x-submit").click()
            page.wait_for_function("document.querySelector('#x-status').innerText.includes('not valid JSON')")
        finally:
            browser.close()


class _StubExtract(BaseHTTPRequestHandler):
    """A server that answers every /extract with ``RECORD`` (for the task asked), so the page's
    rendering of found mentions can be seen without a trained model."""

    bodies: list = []

    def log_message(self, *args):
        pass

    def _json(self, obj):
        data = json.dumps(obj, ensure_ascii=False).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._json({"object": "list", "data": [{"id": "stub"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.bodies.append(body)
        keep = {"ner": "entities", "re": "relations", "ee": "events"}[body["task"]]
        self._json({**RECORD, **{k: [] for k in ("entities", "relations", "events") if k != keep}})


@pytest.fixture(scope="module")
def stub_web(free_port):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _StubExtract)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with _knowlm_web(f"http://127.0.0.1:{httpd.server_port}", "stub-key", free_port()) as url:
            yield url
    finally:
        httpd.shutdown()


@pytest.mark.slow
def test_extraction_page_highlights_mentions_and_fills_tables(stub_web):
    _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            _open_extraction_tab(page, stub_web)
            marked, table = page.locator("#x-highlight"), page.locator("#x-table")
            page.locator("#x-task").get_by_label("re", exact=True).check()
            page.locator("#x-schema textarea").fill('{"出生地": "人出生的地方"}')
            # pick the option as a person does (typed text + Enter could reach gradio after the click)
            page.locator("#x-format input").click()
            page.get_by_role("option", name="oneke", exact=True).click()
            page.wait_for_function("document.querySelector('#x-format input').value === 'oneke'")
            page.locator("#x-text textarea").fill(RECORD["text"])
            page.locator("#x-submit").click()
            page.wait_for_function("document.querySelector('#x-status').innerText.includes('1 relation in')")
            shown = marked.inner_text()
            assert "出生地 (head)" in shown and "出生地 (tail)" in shown and "鲁迅" in shown
            assert "浙江绍兴" in table.inner_text() and "17–21" in table.inner_text()
            sent = _StubExtract.bodies[-1]
            assert sent == {
                "task": "re",
                "text": RECORD["text"],
                "schema": {"出生地": "人出生的地方"},
                "prompt_format": "oneke",
                "model": "stub",
            }, json.dumps(sent, ensure_ascii=False)

            page.locator("#x-task").get_by_label("ee", exact=True).check()
            page.locator("#x-schema textarea").fill('{"出生": ["地点"]}')
            page.locator("#x-submit").click()
            page.wait_for_function("document.querySelector('#x-status').innerText.includes('1 event in')")
            assert "出生 (trigger)" in marked.inner_text() and "地点" in marked.inner_text()
            assert "event type" in table.inner_text() and "浙江绍兴" in table.inner_text()
        finally:
            browser.close()
