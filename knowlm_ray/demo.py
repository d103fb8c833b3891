"""`knowlm demo`: the whole chain on the embedded default, in one process and one local Ray.

tiny model -> corpus shards -> ZeRO-3 pretraining -> IE instructions -> LoRA -> merge -> Serve,
then one /generate and one /extract request whose JSON responses are printed. Each stage reads the
same YAML preset a user would pass to the matching job in jobs/, with paths pointed into the
demo's work dir.

The extraction part is a demo of the chain, not of generalisation: a 1.4 M-parameter model after
200 pretraining steps cannot learn NER in a minute, but its LoRA can learn the answers for a few
texts. So the LoRA trains on the NER instructions of the first ``DEMO_RECORDS`` Chinese records of
data/sample/ie, written in exactly the prompt ``/extract`` sends (``kg2instruct --serve-prompt``),
and the demo asks ``/extract`` about one of those training texts and counts the gold entities.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from knowlm_ray.console import quiet_console, say, show_tail

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "jobs" / "configs"

DEMO_REQUEST = {
    "instruction": "请从下面的句子中抽取实体，可选的实体类型为[人物, 地理位置, 组织机构]，以（实体，实体类型）的格式回答。",
    "input": "浙江大学位于浙江省杭州市。",
    "parameters": {"temperature": 0.0, "max_tokens": 32, "num_beams": 1, "repetition_penalty": 1.3},
}
IE_DIR = REPO / "data" / "sample" / "ie"
DEMO_LANG, DEMO_TASK, DEMO_RECORDS = "zh", "ner", 12  # the LoRA's training set: see the docstring


def demo_ie_records(n: int = DEMO_RECORDS, lang: str = DEMO_LANG) -> tuple[list[dict], dict]:
    """The first ``n`` IE records of ``lang`` in data/sample/ie, and that language's schema."""
    from knowlm_ray.ie.records import load_ie_records, load_schema

    records = [r for r in load_ie_records(IE_DIR / "records.jsonl") if r["lang"] == lang][:n]
    return records, load_schema(IE_DIR / "schema.json")[lang]


def write_demo_instructions(
    out: str | Path, records: list[dict], schema: dict, lang: str = DEMO_LANG, task: str = DEMO_TASK
) -> int:
    """``knowlm kg2instruct --serve-prompt --tasks TASK --lang LANG --limit N``: rows written.
    ``schema``: the ``lang`` section of the label schema."""
    from knowlm_ray.atomic import write_json_atomic
    from knowlm_ray.instruct.kg2instruct import build_serve_instructions

    rows = build_serve_instructions(records, {lang: schema}, (task,))
    write_json_atomic(rows, out)
    return len(rows)


def entity_recall(gold: dict, predicted: dict) -> tuple[int, int, int]:
    """(gold entities found, gold entities, extra predicted entities) by (text, type)."""
    g = {(e["text"], e["type"]) for e in gold["entities"]}
    p = {(e["text"], e["type"]) for e in predicted["entities"]}
    return len(g & p), len(g), len(p - g)


@contextmanager
def _stage(n: int, total: int, title: str):
    say(f"\n[{n}/{total}] {title} ...")
    t0 = time.perf_counter()
    try:
        yield
    except BaseException:
        show_tail(f"[{n}/{total}] {title}: FAILED after {time.perf_counter() - t0:.1f}s")
        raise
    say(f"[{n}/{total}] {title}: done in {time.perf_counter() - t0:.1f}s")


# Shown on the terminal from the log: the training loops' own progress lines (knowlm_ray.train.loop)
PROGRESS = r"^\[\w+\] step \d+"


def run_demo(workdir: str | Path = "artifacts/demo", steps: int = 200, port: int = 8000) -> dict:
    """The chain, with Ray's, Serve's and the libraries' output in ``WORKDIR/demo.log`` and the
    steps, their progress and results on the terminal (knowlm_ray.console)."""
    if not CONFIGS.is_dir():
        raise FileNotFoundError(f"demo presets not found at {CONFIGS}: run from a source checkout")
    work = Path(workdir).resolve()
    if work.exists():
        shutil.rmtree(work)  # a demo is a fresh run: no resume from an older one
    work.mkdir(parents=True)
    with quiet_console(work / "demo.log", progress=PROGRESS):
        return _run_chain(work, steps, port)


def _run_chain(work: Path, steps: int, port: int) -> dict:
    import requests

    from knowlm_ray import config as C
    from knowlm_ray.runtime import init_ray

    paths = {
        k: str(work / k) for k in ("tiny", "corpus", "pretrained", "instructions", "lora", "merged", "ray_results")
    }
    t_start = time.perf_counter()
    total = 7

    with _stage(1, total, "knowlm init-tiny: sentencepiece tokenizer + tiny LLaMA"):
        from knowlm_ray.models.tiny import DEFAULT_CORPUS, build_tiny

        build_tiny(paths["tiny"], [REPO / p for p in DEFAULT_CORPUS])
        say(f"tokenizer + model -> {paths['tiny']}")

    init_ray()
    with _stage(2, total, "prepare_corpus on Ray Data: read, filter, dedup, split, tokenize, shard"):
        from knowlm_ray.corpus.pipeline import run as prepare_corpus

        cfg = C.load_config(
            C.CorpusConfig, CONFIGS / "tiny_corpus.yaml", [f"tokenizer={paths['tiny']}", f"out_dir={paths['corpus']}"]
        )
        cfg.inputs = [s.model_copy(update={"path": str(REPO / s.path)}) for s in cfg.inputs]
        manifest = prepare_corpus(cfg)
        say("stages:", json.dumps(manifest["stages"]))

    with _stage(3, total, f"pretrain on Ray Train: DeepSpeed ZeRO-3, 2 workers, {steps} steps"):
        from knowlm_ray.train.pretrain import run as pretrain

        cfg = C.load_config(
            C.PretrainConfig,
            CONFIGS / "tiny.yaml",
            [
                f"model={paths['tiny']}",
                f"data={paths['corpus']}",
                f"output_dir={paths['pretrained']}",
                f"storage_path={paths['ray_results']}",
                f"max_steps={steps}",
            ],
        )
        say(json.dumps(pretrain(cfg), default=str))

    records, schema = demo_ie_records()
    with _stage(
        4,
        total,
        f"kg2instruct --serve-prompt + prepare_instructions on Ray Data: {DEMO_TASK} "
        f"instructions of {len(records)} {DEMO_LANG} IE records",
    ):
        from knowlm_ray.instruct.prepare import run as prepare_instructions

        source = work / f"ie_{DEMO_TASK}_{DEMO_LANG}.json"
        n = write_demo_instructions(source, records, schema)
        say(f"{n} instructions in /extract's prompt -> {source}")
        # val_set_size 0: every record is trained on, and the demo asks about one of them
        cfg = C.load_config(
            C.InstructionsConfig,
            CONFIGS / "tiny_instructions.yaml",
            [
                f"inputs={json.dumps([str(source)])}",
                f"tokenizer={paths['pretrained']}",
                f"out_dir={paths['instructions']}",
                "val_set_size=0",
            ],
        )
        manifest = prepare_instructions(cfg)
        say("splits:", json.dumps(manifest["splits"]))

    with _stage(5, total, "finetune_lora on Ray Train: peft LoRA (+ lm_head) on the prepared shards"):
        from knowlm_ray.train.lora import run as finetune

        cfg = C.load_config(
            C.FinetuneConfig,
            CONFIGS / "tiny_lora.yaml",
            [
                f"model={paths['pretrained']}",
                f"data={paths['instructions']}",
                f"output_dir={paths['lora']}",
                f"storage_path={paths['ray_results']}",
            ],
        )
        say(json.dumps(finetune(cfg), default=str))

    with _stage(6, total, "knowlm weights merge-lora"):
        from knowlm_ray.models.lora import merge_lora

        merge_lora(paths["pretrained"], paths["lora"], paths["merged"])
        say(f"{paths['pretrained']} + {paths['lora']} -> {paths['merged']}")

    with _stage(7, total, f"Ray Serve on 127.0.0.1:{port}: POST /generate and POST /extract"):
        from knowlm_ray.serve import launch

        base = launch.start(model=paths["merged"], host="127.0.0.1", port=port)
        try:
            resp = requests.post(f"{base}/generate", json=DEMO_REQUEST, timeout=120)
            say(f"POST {base}/generate -> {resp.status_code}")
            body = resp.json()
            say(_json_lines(body))
            resp.raise_for_status()
            body["extract"] = extract_demo(base, records, schema[DEMO_TASK])
        finally:
            launch.stop()

    import ray

    ray.shutdown()
    say(f"\ndemo finished in {time.perf_counter() - t_start:.0f}s; artifacts in {work}; full log: {work / 'demo.log'}")
    return body


def _json_lines(obj: dict) -> str:
    """A JSON object with one line per top-level key (the whole response, a screen's worth)."""
    rows = [f"  {json.dumps(k, ensure_ascii=False)}: {json.dumps(v, ensure_ascii=False)}" for k, v in obj.items()]
    return "{\n" + ",\n".join(rows) + "\n}"


def extract_demo(base: str, records: list[dict], labels: list[str]) -> dict:
    """POST /extract on the first training text (printed whole), then on every training text
    (one summary line); returns the first response."""
    import requests

    def extract(text: str) -> dict:
        resp = requests.post(
            f"{base}/extract",
            timeout=120,
            # constrained (the default, said here): the answer is JSON of exactly the schema's shape
            json={"task": DEMO_TASK, "lang": DEMO_LANG, "schema": labels, "text": text, "constrained": True},
        )
        resp.raise_for_status()
        return resp.json()

    first = records[0]
    say(
        f"\nPOST {base}/extract (constrained decoding: JSON of the schema's shape) on {first['id']}, one of the "
        f"{len(records)} texts the LoRA was trained on (a demo of the chain, not of generalisation):"
    )
    out = extract(first["text"])
    say(_json_lines(out))
    found, gold, extra = entity_recall(first, out)
    say(f"gold entities recovered: {found}/{gold} ({extra} extra)")
    totals = [entity_recall(r, extract(r["text"])) for r in records[1:]]
    found += sum(t[0] for t in totals)
    gold += sum(t[1] for t in totals)
    say(
        f"over all {len(records)} training texts: {found}/{gold} gold entities recovered, "
        f"{extra + sum(t[2] for t in totals)} extra"
    )
    return out
