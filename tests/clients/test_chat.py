"""``knowlm chat`` driven as a user would: a subprocess reading turns from stdin, against the real
server (streamed /v1/chat/completions) and against a local model, checked turn by turn against
the server's own non-streamed greedy answers for the conversation the history should hold."""

from __future__ import annotations

import re
import time

import pytest

from knowlm_ray.clients.chat import render_prompt

pytestmark = pytest.mark.slow

MAX = "12"
Q1, Q2 = "介绍一下浙江大学", "它在哪个城市？"
LONG = (
    "浙江大学位于杭州市，学生在西湖边读书。The river flows through the old city. " * 18
).strip()  # chat strips each line
STATS = re.compile(r"\[prompt_tokens=(\d+) completion_tokens=(\d+) finish=(\w+) history=(\d+)\]")
DROPPED = "dropped the oldest exchange"


def _stats(stderr: str) -> list[tuple[int, int, int]]:
    """(prompt_tokens, completion_tokens, history length) per answered turn, from --verbose."""
    return [(int(p), int(c), int(h)) for p, c, _, h in STATS.findall(stderr)]


def _u(text):
    return {"role": "user", "content": text}


def _a(text):
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="module")
def long_tokens(tiny_model) -> int:
    """LONG alone fits the tiny model's 1024-token context; two of them do not (the tests rely on it)."""
    from transformers import AutoTokenizer

    n = len(AutoTokenizer.from_pretrained(tiny_model)(LONG)["input_ids"])
    assert 520 <= n <= 900, n
    return n


def _answers(server_post, *conversations):
    """(text, prompt_tokens) the server gives each conversation, greedy, non-streamed."""
    out = []
    for msgs in conversations:
        body = server_post("/v1/chat/completions", {"messages": msgs, "temperature": 0, "max_tokens": int(MAX)})
        out.append((body["choices"][0]["message"]["content"], body["usage"]["prompt_tokens"]))
    return out


def test_chat_with_a_server_streams_keeps_history_resets_and_drops_old_turns(
    knowlm, server, api_key, server_post, long_tokens
):
    turns = [Q1, Q2, "/reset", Q1, LONG, LONG, "/exit", "never sent"]
    res = knowlm(
        "chat",
        "--server",
        server,
        "--api-key",
        api_key,
        "--temperature",
        "0",
        "--max-tokens",
        MAX,
        "--verbose",
        stdin="\n".join(turns) + "\n",
    )
    assert res.returncode == 0, res.stderr
    ((a1, p1),) = _answers(server_post, [_u(Q1)])
    ((a2, p2),) = _answers(server_post, [_u(Q1), _a(a1), _u(Q2)])
    ((a4, p4),) = _answers(server_post, [_u(Q1), _a(a1), _u(LONG)])
    # Turn 5: [Q1, a1, LONG, a4, LONG] is past the context, so is [LONG, a4, LONG]: the server
    # answers 400 twice and chat drops the two oldest exchanges before it is answered.
    ((a5, p5),) = _answers(server_post, [_u(LONG)])
    assert res.stdout == "".join(f"{a}\n" for a in (a1, a2, a1, a4, a5))
    stats = _stats(res.stderr)
    assert [(p, h) for p, _, h in stats] == [(p1, 1), (p2, 2), (p1, 1), (p4, 2), (p5, 1)], res.stderr
    assert p2 > p1 and all(c > 0 for _, c, _ in stats)  # the second request carried the first turn
    assert res.stderr.count(DROPPED) == 2 and "(history cleared)" in res.stderr


def test_chat_with_a_local_model_uses_the_servers_prompt_and_bounds_history(
    knowlm, server, server_post, tiny_model, long_tokens
):
    res = knowlm(
        "chat",
        "--model-dir",
        str(tiny_model),
        "--temperature",
        "0",
        "--max-tokens",
        MAX,
        "--verbose",
        "--show-prompt",
        stdin="\n".join([Q1, Q2, LONG, LONG]) + "\n",
    )
    assert res.returncode == 0, res.stderr
    ((a1, p1),) = _answers(server_post, [_u(Q1)])
    second = [_u(Q1), _a(a1), _u(Q2)]
    ((a2, p2),) = _answers(server_post, second)
    ((a3, p3),) = _answers(server_post, [*second, _a(a2), _u(LONG)])
    # Turn 4 is checked before it is sent: prompt + max_tokens must fit 1024 tokens, which only
    # LONG alone does, so all three older exchanges go.
    ((a4, p4),) = _answers(server_post, [_u(LONG)])
    assert res.stdout == "".join(f"{a}\n" for a in (a1, a2, a3, a4))  # local model == server
    assert [(p, h) for p, _, h in _stats(res.stderr)] == [(p1, 1), (p2, 2), (p3, 3), (p4, 1)], res.stderr
    assert render_prompt(second) in res.stderr  # --show-prompt: the history the model read
    assert res.stderr.count(DROPPED) == 3 and "of 1024 tokens" in res.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "HTTP 401 (authentication_error)"),  # no --api-key
        (("--top-p", "0"), "--top-p: Input should be greater than 0"),
        (("--model", "nope"), "HTTP 404 (invalid_request_error): model 'nope' not found"),
    ],
)
def test_chat_errors_are_one_readable_line(knowlm, server, api_key, args, message):
    key = () if not args else ("--api-key", api_key)
    res = knowlm("chat", "--server", server, *key, *args, stdin=f"{Q1}\n")
    assert res.returncode != 0 and message in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_chat_without_a_server_says_so_and_goes_on(knowlm, free_port):
    port = free_port()
    res = knowlm("chat", "--server", f"http://127.0.0.1:{port}", stdin=f"{Q1}\n/help\n")
    assert res.returncode == 1 and res.stdout.strip() == "", res.stderr
    assert f"error: cannot reach http://127.0.0.1:{port}/v1/chat/completions" in res.stderr
    assert "/reset clears the history" in res.stderr and "Traceback" not in res.stderr


def test_chat_in_a_terminal_prompts_answers_and_quits_on_ctrl_c(server, api_key, server_post):
    import os
    import pty
    import select
    import signal
    import sys

    pid, fd = pty.fork()
    if pid == 0:  # the child: knowlm chat on a terminal
        try:
            # as in a terminal: a shell's background job (nohup cmd &) inherits SIGINT ignored
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            # ...nor blocked: a signal mask survives fork and exec, and a runner may block SIGINT
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            os.execv(
                sys.executable,
                [
                    sys.executable,
                    "-m",
                    "knowlm_ray.cli",
                    "chat",
                    "--server",
                    server,
                    "--api-key",
                    api_key,
                    "--max-tokens",
                    MAX,
                ],
            )
        finally:
            os._exit(127)
    seen = ""

    def read_until(marker: str, count: int, timeout: float = 60) -> str:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while seen.count(marker) < count:
            assert time.monotonic() < deadline, f"no {marker!r} (x{count}) in {seen!r}"
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    seen += os.read(fd, 4096).decode("utf-8", "replace")
                except OSError:  # the child closed the terminal
                    break
        return seen

    try:
        read_until("you> ", 1)
        os.write(fd, f"{Q1}\n".encode())
        read_until("you> ", 2)
        os.write(fd, b"\x03")  # Ctrl-C at the prompt

        def wait_exit(timeout: float) -> tuple[int, int]:
            deadline = time.monotonic() + timeout
            while not (done := os.waitpid(pid, os.WNOHANG))[0] and time.monotonic() < deadline:
                time.sleep(0.1)
            return done

        done = wait_exit(15)
        if not done[0]:
            # Some sandboxes' terminals do not turn ^C into a signal; send what a terminal's line
            # discipline would (SIGINT to the foreground group): the program's handling is tested.
            os.killpg(pid, signal.SIGINT)
            done = wait_exit(45)
        status = done[1]
        if not done[0]:  # still running: fail, don't hang the suite
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"knowlm chat did not quit on Ctrl-C: {seen!r}")
    finally:
        os.close(fd)
    ((a1, _),) = _answers(server_post, [_u(Q1)])
    assert os.waitstatus_to_exitcode(status) == 0 and "Traceback" not in seen, seen
    assert "/reset clears the history" in seen and f"bot> {a1}".replace("\n", "\r\n") in seen


def test_server_backend_hands_out_the_answer_in_pieces_as_they_stream(server, api_key, server_post):
    from knowlm_ray.clients.chat import ServerBackend
    from knowlm_ray.generation.params import GenerationParams

    pieces: list[str] = []
    reply = ServerBackend(server, api_key).complete([_u(Q1)], GenerationParams(max_tokens=int(MAX)), pieces.append)
    ref = server_post("/v1/chat/completions", {"messages": [_u(Q1)], "temperature": 0, "max_tokens": int(MAX)})
    assert len(pieces) > 1 and "".join(pieces) == reply.text == ref["choices"][0]["message"]["content"]
    assert (reply.prompt_tokens, reply.completion_tokens, reply.finish_reason) == (
        ref["usage"]["prompt_tokens"],
        ref["usage"]["completion_tokens"],
        ref["choices"][0]["finish_reason"],
    )


def test_both_backends_know_an_overflow_by_its_code_and_nothing_else(server, api_key, tiny_model, long_tokens):
    from knowlm_ray.clients.chat import ChatError, ContextOverflow, LocalBackend, ServerBackend
    from knowlm_ray.clients.http import ServerError
    from knowlm_ray.generation.params import GenerationParams

    params, ignore = GenerationParams(max_tokens=int(MAX)), lambda _: None
    server_side, local = ServerBackend(server, api_key), LocalBackend(str(tiny_model))
    for backend in (server_side, local):  # two LONGs are past the 1024-token context
        with pytest.raises(ContextOverflow, match="context"):
            backend.complete([_u(LONG), _a("ok"), _u(LONG)], params, ignore)
    # Other 400s are errors, not overflows: dropping history would not help them.
    with pytest.raises(ServerError) as info:
        server_side.complete([_u(Q1), _a("ok")], params, ignore)
    assert info.value.status == 400 and info.value.code is None
    with pytest.raises(ChatError) as err:
        local.complete([_u(Q1), _a("ok")], params, ignore)
    assert type(err.value) is ChatError
