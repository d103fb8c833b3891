"""``knowlm chat``, ``knowlm web`` and ``knowlm extract``: clients of a knowlm server (chat and
extract also run a local model).

    knowlm chat --server http://127.0.0.1:8000 [--model ADAPTER] [--api-key KEY]
    knowlm chat --model-dir artifacts/tiny [--lora DIR]
    knowlm web --server http://127.0.0.1:8000 [--host 127.0.0.1] [--port 7860] [--auth USER:PASSWORD]
    knowlm extract --task T --schema LABEL ... (--text S | --file F) (--server URL | --model DIR)
"""

from __future__ import annotations

import argparse
import os
import sys

# The server reads its key from the same variable (knowlm_ray.serve.app.API_KEY_ENV).
API_KEY_ENV = "KNOWLM_API_KEY"


def _chat(a: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from knowlm_ray.clients.chat import ChatSession, LocalBackend, ServerBackend, run_repl
    from knowlm_ray.generation.params import GenerationParams

    try:  # the server's own limits, checked before a model loads or a request goes out
        params = GenerationParams(
            temperature=a.temperature,
            top_p=a.top_p,
            top_k=a.top_k,
            max_tokens=a.max_tokens,
            repetition_penalty=a.repetition_penalty,
        )
    except ValidationError as exc:
        bad = "; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"error: {bad}") from None
    if a.server:
        if a.lora:
            raise SystemExit("error: --lora is for --model-dir; with --server choose an adapter with --model NAME")
        backend = ServerBackend(a.server, a.api_key or os.environ.get(API_KEY_ENV) or None, a.model, a.timeout)
    else:
        if a.model:
            raise SystemExit("error: --model names a server-side model; with --model-dir use --lora DIR")
        print(f"loading {a.model_dir} ...", file=sys.stderr, flush=True)
        backend = LocalBackend(a.model_dir, device=a.device, dtype=a.dtype, lora=a.lora)
    session = ChatSession(backend, params, system=a.system)
    raise SystemExit(run_repl(session, verbose=a.verbose, show_prompt=a.show_prompt))


def _web(a: argparse.Namespace) -> None:
    from knowlm_ray.clients.web import serve_web, web_logins

    logins = web_logins(a.host, a.auth, a.auth_file)  # a page other machines reach needs a login
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit("error: knowlm web needs gradio: pip install 'knowlm-ray[web]'") from None
    api_key = a.api_key or os.environ.get(API_KEY_ENV) or None
    serve_web(a.server, host=a.host, port=a.port, api_key=api_key, timeout=a.timeout, logins=logins)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's subcommands to `knowlm`."""
    from knowlm_ray.clients.extract import register as register_extract
    from knowlm_ray.generation.params import CHAT_DEFAULT_MAX_TOKENS

    register_extract(sub)

    p = sub.add_parser(
        "chat",
        help="interactive terminal chat with a server or a local model",
        description="Multi-turn chat. Commands: /reset, /history, /exit (or Ctrl-D / Ctrl-C); "
        "Ctrl-C during an answer stops that answer.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--server", metavar="URL", help="a knowlm server (uses /v1/chat/completions, streamed)")
    src.add_argument("--model-dir", metavar="DIR", help="run this HF model directory here (no server, no Ray)")
    p.add_argument("--model", metavar="NAME", help="server: base model id or LoRA adapter name")
    p.add_argument("--api-key", help=f"server: bearer token (default ${API_KEY_ENV})")
    p.add_argument("--lora", metavar="DIR", help="local: a peft LoRA adapter directory to answer with")
    p.add_argument("--device", default="cpu", help="local: cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--system", help="system prompt (prepended to the first user message)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--max-tokens", type=int, default=CHAT_DEFAULT_MAX_TOKENS, help="new tokens per answer")
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=300.0, help="server: seconds per answer")
    p.add_argument("--verbose", action="store_true", help="token counts after each answer (stderr)")
    p.add_argument("--show-prompt", action="store_true", help="the prompt the model reads, each turn (stderr)")
    p.set_defaults(fn=_chat)

    p = sub.add_parser("web", help="gradio web UI (instruction, input, decoding sliders) for a server")
    p.add_argument("--server", metavar="URL", required=True, help="a knowlm server (uses POST /generate)")
    p.add_argument("--host", default="127.0.0.1", help="address the page listens on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument(
        "--auth",
        metavar="USER:PASSWORD",
        help="the page's own login (default $KNOWLM_WEB_AUTH); required on a host other than loopback",
    )
    p.add_argument("--auth-file", metavar="FILE", help="the page's logins, one USER:PASSWORD a line")
    p.add_argument("--api-key", help=f"bearer token for the server (default ${API_KEY_ENV}); stays in this process")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per answer")
    p.set_defaults(fn=_web)
