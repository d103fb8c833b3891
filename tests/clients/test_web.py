"""``knowlm web``: request building against the server's own schema, error display over real
HTTP, and the page itself driven in headless Chromium against a running server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from knowlm_ray.clients.web import SLIDERS, ask, generate_body, slider_bounds
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


def test_page_defaults_are_the_servers_defaults_within_its_limits():
    defaults = [slider_bounds(name)[2] for name, _, _ in SLIDERS]
    body = generate_body(INSTRUCTION, "", *map(float, defaults))  # gradio sliders hand back floats
    assert GenerateRequest.model_validate(body).parameters == GenerationParams()  # strict: ints stay ints
    for i, (name, _, _) in enumerate(SLIDERS):
        for end in slider_bounds(name)[:2]:  # both ends of every slider are requests the server accepts
            values = [float(v) for v in defaults]
            values[i] = float(end)
            assert GenerateRequest.model_validate(generate_body("i", "", *values)).parameters.__dict__[name] == end


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


@pytest.fixture(scope="module")
def web(server, api_key, free_port):
    """``knowlm web`` in its own process against the test server (key from $KNOWLM_API_KEY)."""
    port = free_port()
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


@pytest.mark.slow
def test_page_in_chromium_answers_like_generate_and_shows_errors(web, server, server_post):
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing under CI: `make setup` installs Debian's chromium package")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); `make setup` does it as root")
    from playwright.sync_api import sync_playwright

    expected = server_post("/generate", {"instruction": INSTRUCTION})["generated_text"]
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
