"""Constrained decoding, side by side in one run (issue 17, item 4):

1. **Answer shape**: the share of ``/extract`` answers that parse and conform to their format's
   answer shape (``ie.answer_schema``: OneKE's object with exactly the batch's labels in order,
   the alpaca JSON shape, the tuple grammar), with and without constraints, on sentences that are
   not in ``data/sample`` (so never seen by the tokenizer's training), every prompt format
   (alpaca, oneke, zhixi), NER / RE / EE, in-process through ``ie.extract.handle_extract`` and the
   engine (the same code path the Serve route runs). Goal: 100 % with constraints.
2. **Throughput**: generated tokens/s at 16 concurrent clients through the continuous batcher,
   constrained (OneKE NER answers of 6 labels, span mode off) vs free (the same prompts, the same
   ``max_tokens``), measured in-process at the batcher (``ContinuousBatcher``), so Serve's HTTP
   handling on a busy 2-core box does not drown the difference; the two setups alternate
   ``--repeats`` times. Goal: constrained >= 0.8x free.

    .venv/bin/python benchmarks/constrained.py [--models tiny compute] [--repeats 3] [--out BENCHMARKS.md]

Models are built into a temp dir with random weights: ``tiny`` (the test suite's, hidden 64, 2
layers) and ``compute`` (hidden 512, 8 layers, as ``benchmarks/serve.py``), whose forward pass
dominates a decode step as a real model's does.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

UNSEEN = [
    "李白出生于碎叶城，后来在长安担任翰林学士。",
    "华为技术有限公司总部位于深圳市龙岗区。",
    "2008年北京举办了第二十九届夏季奥林匹克运动会。",
    "小明在清华大学获得了计算机科学博士学位。",
    "Ada Lovelace was born in London in 1815.",
    "Toyota opened a new factory in Kentucky last year.",
    "The Nile flows through Egypt into the Mediterranean Sea.",
    "苏轼被贬到黄州以后写下了《赤壁赋》。",
]
SCHEMAS = {
    "ner": ["人物", "地点", "组织机构", "时间", "作品", "职业"],
    "re": ["出生地", "所在地", "创始人", "毕业院校"],
    "ee": {"出生": ["人物", "时间", "地点"], "举办": ["组织者", "时间", "地点"]},
}
NER6 = SCHEMAS["ner"]


def build_model(tmp: Path, kind: str) -> str:
    from knowlm_ray.models.tiny import DEFAULT_CORPUS, TinySpec, build_tiny

    corpus = [REPO / p for p in DEFAULT_CORPUS if (REPO / p).exists()]
    if kind == "tiny":
        spec = TinySpec(vocab_size=3000, hidden=64, layers=2, intermediate=172)
    else:
        spec = TinySpec(vocab_size=3000, hidden=512, layers=8, heads=8, intermediate=1344)
    return str(build_tiny(tmp / kind, corpus, spec))


# ----------------------------------------------------------------------------------- shapes
def _conforms(plan, prompt: dict, answer: str) -> tuple[bool, bool]:
    """(parseable, conforming) for one raw answer."""
    import jsonschema

    from knowlm_ray.generation.constraints import ConstraintSpec
    from knowlm_ray.ie.answer_schema import answer_schema, plan_constraints
    from knowlm_ray.ie.parsers import parse_answer

    kind = prompt["answer_kind"]
    if kind == "tuple":
        parsed = parse_answer(plan.task, answer, "tuple")
        spec: ConstraintSpec = plan_constraints(plan)[plan.prompts.index(prompt)]  # its tuple separator too
        return parsed.status != "unparsed", _tuple_ok(spec, answer)
    try:
        obj = json.loads(answer)
    except ValueError:
        return False, False
    schema = answer_schema(kind, plan.task, prompt["labels"])
    try:
        jsonschema.validate(obj, schema)
    except jsonschema.ValidationError:
        return True, False
    if kind == "oneke-json" and list(obj) != list(schema["properties"]):
        return True, False
    return True, True


def _tuple_ok(spec, answer: str) -> bool:
    """Whether ``answer`` is a complete sentence of the tuple grammar (llguidance says)."""
    import llguidance

    from knowlm_ray.generation.constraints import _lark

    grammar = llguidance.LLMatcher.grammar_from_lark(_lark(spec.shape))
    return not llguidance.LLMatcher.validate_grammar(grammar) and _accepts(grammar, answer)


_TOK = {}


def _accepts(grammar: str, text: str) -> bool:
    import llguidance

    tok = _TOK["tok"]
    m = llguidance.LLMatcher(tok, grammar)
    ids = tok.tokenize_bytes(text.encode("utf-8"))
    return m.validate_tokens(ids) == len(ids) and m.consume_tokens(ids) and m.is_accepting()


def shapes(model_dir: str, max_tokens: int) -> dict:
    import llguidance.hf

    from knowlm_ray.generation.engine import GenerationEngine
    from knowlm_ray.ie.extract import engine_generate_fn, handle_extract, parse_extract_request, plan_extraction

    engine = GenerationEngine(model_dir, num_threads=1)
    _TOK["tok"] = llguidance.hf.from_tokenizer(engine.tokenizer)
    generate = engine_generate_fn(engine)
    out: dict = {}
    for constrained in (False, True):
        counts = {"answers": 0, "parseable": 0, "conforming": 0}
        t0 = time.perf_counter()
        for fmt in ("alpaca", "oneke", "zhixi"):
            for task in ("ner", "re", "ee"):
                for text in UNSEEN:
                    body = {
                        "task": task,
                        "text": text,
                        "schema": SCHEMAS[task],
                        "prompt_format": fmt,
                        "constrained": constrained,
                        "parameters": {"max_tokens": max_tokens},
                    }
                    captured = []

                    def spy(texts, captured=captured, **kw):
                        answers = generate(texts, **kw)
                        captured.extend(answers)
                        return answers

                    handle_extract(body, spy)
                    req = parse_extract_request(body)
                    plan = plan_extraction(req.task, req.text, req.labels, req.lang, prompt_format=fmt)
                    for prompt, answer in zip(plan.prompts, captured):
                        p, c = _conforms(plan, prompt, answer)
                        counts["answers"] += 1
                        counts["parseable"] += p
                        counts["conforming"] += c
        counts["seconds"] = round(time.perf_counter() - t0, 1)
        out["constrained" if constrained else "free"] = counts
    return out


# ------------------------------------------------------------------------------ throughput
def throughput(model_dir: str, clients: int, per_client: int, max_tokens: int, repeats: int) -> dict:
    from knowlm_ray.generation.continuous import ContinuousBatcher
    from knowlm_ray.generation.engine import GenerationEngine
    from knowlm_ray.generation.params import GenerationParams
    from knowlm_ray.ie.answer_schema import constraint_for
    from knowlm_ray.ie.formats import get_format

    engine = GenerationEngine(model_dir, num_threads=1)
    prompts = [get_format("oneke").prompts("ner", t, NER6, "zh" if ord(t[0]) > 127 else "en")[0] for t in UNSEEN]
    params = GenerationParams(max_tokens=max_tokens)

    def run(constrained: bool, lengths: dict | None = None) -> tuple[float, int, dict, float]:
        batcher = ContinuousBatcher(engine, max_batch_size=clients)
        tokens = [0] * clients
        made: dict = {}

        def client(c: int) -> None:
            for k in range(per_client):
                p = prompts[(c + k) % len(prompts)]
                spec = constraint_for("oneke-json", "ner", NER6, p.input) if constrained else None
                q = params if lengths is None else GenerationParams(max_tokens=lengths[c, k])
                row = engine.prepare_prompt(p.prompt, q, constraint=spec)
                n = batcher.submit([row]).result()[0].num_output_tokens
                tokens[c] += n
                made[c, k] = n

        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        t0, c0 = time.perf_counter(), time.process_time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        batcher.close()
        return sum(tokens) / wall, sum(tokens), made, sum(tokens) / cpu

    run(True)  # warm-up: compile the schemas, build the vocabulary
    res: dict = {"free": [], "constrained": [], "free_same_lengths": []}
    per_cpu: dict = {
        k: [] for k in res
    }  # tokens per CPU-second of this process: what other load on the box moves least
    for _ in range(repeats):
        for name in ("free", "constrained"):
            tps, n, made, tpc = run(name == "constrained")
            res[name].append((round(tps, 1), n))
            per_cpu[name].append(tpc)
        # free rows of exactly the constrained answers' lengths: rows leave the batch at the same
        # steps, so only the per-token cost of the constraint differs
        tps, n, _, tpc = run(False, made)
        res["free_same_lengths"].append((round(tps, 1), n))
        per_cpu["free_same_lengths"].append(tpc)
    med = {k: statistics.median(x for x, _ in v) for k, v in res.items()}
    cpu = {k: statistics.median(v) for k, v in per_cpu.items()}
    return {
        "free_tok_s": med["free"],
        "constrained_tok_s": med["constrained"],
        "ratio": round(med["constrained"] / med["free"], 3),
        "free_same_tok_s": med["free_same_lengths"],
        "ratio_same": round(med["constrained"] / med["free_same_lengths"], 3),
        "free_tok_cpu_s": round(cpu["free"], 1),
        "constrained_tok_cpu_s": round(cpu["constrained"], 1),
        "ratio_cpu": round(cpu["constrained"] / cpu["free"], 3),
        "ratio_same_cpu": round(cpu["constrained"] / cpu["free_same_lengths"], 3),
        "runs": res,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "compute"], choices=["tiny", "compute"])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--per-client", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--shape-max-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", help="append the markdown to this file")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    lines = [f"`{' '.join(['.venv/bin/python', 'benchmarks/constrained.py', *(argv or sys.argv[1:])])}`", ""]
    with tempfile.TemporaryDirectory() as tmp:
        models = {k: build_model(Path(tmp), k) for k in args.models}
        if "tiny" in models:
            s = shapes(models["tiny"], args.shape_max_tokens)
            print(json.dumps(s), flush=True)
            lines += [
                "| /extract answers (tiny model, random weights) | answers | parseable | conforming | seconds |",
                "|---|---|---|---|---|",
            ]
            for name in ("free", "constrained"):
                c = s[name]
                lines.append(
                    f"| {name} | {c['answers']} | {c['parseable']} ({100 * c['parseable'] / c['answers']:.1f} %) "
                    f"| {c['conforming']} ({100 * c['conforming'] / c['answers']:.1f} %) | {c['seconds']} |"
                )
            lines.append("")
        lines += [
            "| model | free tok/s | constrained tok/s | constrained / free | free, same lengths, tok/s "
            "| constrained / free same lengths | per CPU-second: constrained / free, same lengths "
            "| runs (tok/s, tokens) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, path in models.items():
            t = throughput(path, args.clients, args.per_client, args.max_tokens, args.repeats)
            print(name, json.dumps(t), flush=True)
            lines.append(
                f"| {name} | {t['free_tok_s']} | {t['constrained_tok_s']} | {t['ratio']}x | {t['free_same_tok_s']} "
                f"| {t['ratio_same']}x | {t['ratio_cpu']}x, {t['ratio_same_cpu']}x "
                f"| free {t['runs']['free']}, constrained {t['runs']['constrained']}, "
                f"free same lengths {t['runs']['free_same_lengths']} |"
            )
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(f"\n<!-- {platform.machine()}, torch threads 1 -->\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
