"""``knowlm web``: KnowLM's gradio page (instruction, input, decoding sliders) over a server's ``/generate``.

KnowLM's ``generate_lora_web.py`` loaded the model into the UI process; here the page only
talks HTTP to a knowlm server, so one server feeds any number of pages and the UI needs no
GPU. Slider ranges and defaults are ``GenerationParams``' own (the server's, not KnowLM's
beam-search defaults, which are slow on a CPU). A server error (4xx/503 JSON, or no server)
shows as a readable message under the answer instead of a crash.
"""

from __future__ import annotations

import os
import time
from typing import Any

from knowlm_ray.clients.http import ServerError, headers, post
from knowlm_ray.generation.params import GenerationParams

# Upper ends for fields the server leaves open (top_k, max_tokens); KnowLM's UI stopped at 2000.
OPEN_BOUNDS = {"top_k": 100, "max_tokens": 2048}
SLIDERS = (  # (field, label, step)
    ("temperature", "Temperature (0 = greedy)", 0.05),
    ("top_p", "Top-p", 0.01),
    ("top_k", "Top-k (0 = off)", 1),
    ("num_beams", "Beams", 1),
    ("max_tokens", "Max new tokens", 1),
    ("repetition_penalty", "Repetition penalty", 0.05),
)


def slider_bounds(name: str) -> tuple[float, float, Any]:
    """(minimum, maximum, default) of a ``GenerationParams`` field, from its pydantic constraints."""
    info = GenerationParams.model_fields[name]
    step = {f: s for f, _, s in SLIDERS}[name]
    lo = hi = None
    for m in info.metadata:
        if getattr(m, "ge", None) is not None:
            lo = m.ge
        if getattr(m, "gt", None) is not None:  # top_p > 0: one step above
            lo = m.gt + step
        if getattr(m, "le", None) is not None:
            hi = m.le
    return lo, OPEN_BOUNDS.get(name, hi), info.default


def generate_body(instruction: str, input_text: str, *values: float, model: str | None = None) -> dict[str, Any]:
    """The ``/generate`` request for the page's fields (``values`` in ``SLIDERS`` order)."""
    params = {}
    for (name, _, _), v in zip(SLIDERS, values, strict=True):
        default = GenerationParams.model_fields[name].default
        params[name] = int(v) if isinstance(default, int) else float(v)  # sliders give floats
    body: dict[str, Any] = {"instruction": instruction, "input": input_text or "", "parameters": params}
    if model:
        body["model"] = model
    return body


def ask(server: str, body: dict[str, Any], api_key: str | None = None, timeout: float = 300.0) -> tuple[str, str]:
    """(answer, status line) for one ``/generate`` call; errors become the status line."""
    t0 = time.perf_counter()
    try:
        data = post(server.rstrip("/") + "/generate", body, api_key, timeout).json()
    except ServerError as exc:
        return "", f"**Error:** {exc}"
    except ValueError:
        return "", "**Error:** the server's answer is not JSON"
    if data.get("error"):
        return "", f"**Error:** {data['error']}"
    return (
        data.get("generated_text", ""),
        f"{data.get('num_output_tokens_cf', '?')} tokens in {time.perf_counter() - t0:.1f} s",
    )


def list_models(server: str, api_key: str | None, timeout: float = 10.0) -> list[str]:
    """Base model and adapters from ``/v1/models``; empty when the server cannot say (yet)."""
    import requests

    try:
        r = requests.get(server.rstrip("/") + "/v1/models", headers=headers(api_key), timeout=timeout)
        r.raise_for_status()
        return [m["id"] for m in r.json()["data"]]
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return []


def build_ui(server: str, api_key: str | None = None, timeout: float = 300.0):
    """The gradio Blocks page; element ids (instruction, input, submit, answer, status) are stable."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    import gradio as gr

    models = list_models(server, api_key)
    with gr.Blocks(title="KnowLM", analytics_enabled=False) as page:
        gr.Markdown(f"# KnowLM\nAnswers come from `{server}` (`POST /generate`).")
        with gr.Row():
            with gr.Column():
                instruction = gr.Textbox(
                    label="Instruction", lines=3, elem_id="instruction", placeholder="e.g. 请介绍一下浙江大学"
                )
                input_text = gr.Textbox(
                    label="Input", lines=3, elem_id="input", placeholder="optional: the text the instruction is about"
                )
                model = gr.Dropdown(
                    choices=models,
                    value=models[0] if models else None,
                    label="Model",
                    allow_custom_value=True,
                    elem_id="model",
                    info="base model or a LoRA adapter configured on the server",
                )
                sliders = []
                for name, label, step in SLIDERS:
                    lo, hi, default = slider_bounds(name)
                    sliders.append(
                        gr.Slider(minimum=lo, maximum=hi, value=default, step=step, label=label, elem_id=name)
                    )
                submit = gr.Button("Submit", variant="primary", elem_id="submit")
            with gr.Column():
                answer = gr.Textbox(label="Answer", lines=12, elem_id="answer", interactive=False)
                status = gr.Markdown(elem_id="status")

        def on_submit(instr: str, inp: str, chosen: str | None, *values: float) -> tuple[str, str]:
            return ask(server, generate_body(instr, inp, *values, model=chosen), api_key, timeout)

        submit.click(on_submit, inputs=[instruction, input_text, model, *sliders], outputs=[answer, status])
    return page


def serve_web(
    server: str, host: str = "127.0.0.1", port: int = 7860, api_key: str | None = None, timeout: float = 300.0
) -> None:
    """Serve the page until interrupted (Ctrl-C ends it quietly)."""
    page = build_ui(server, api_key, timeout)
    try:
        page.queue().launch(server_name=host, server_port=port, share=False, show_error=True, quiet=False)
    except KeyboardInterrupt:
        page.close()
