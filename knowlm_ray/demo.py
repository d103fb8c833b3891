"""`knowlm demo`: the whole chain on the embedded default, in one process and one local Ray.

tiny model -> corpus shards -> ZeRO-3 pretraining -> LoRA on IE instructions -> merge -> Serve,
then one /generate request whose JSON response is printed. Each stage reads the same YAML preset a
user would pass to the matching job in jobs/, with paths pointed into the demo's work dir.
"""
from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "jobs" / "configs"

DEMO_REQUEST = {
    "instruction": "请从下面的句子中抽取实体，可选的实体类型为[人物, 地理位置, 组织机构]，以（实体，实体类型）的格式回答。",
    "input": "浙江大学位于浙江省杭州市。",
    "parameters": {"temperature": 0.0, "max_tokens": 32, "num_beams": 1, "repetition_penalty": 1.3},
}
DEMO_EXTRACT = {"task": "ner", "lang": "zh", "schema": ["人物", "地理位置", "组织机构"],
                "text": "启航科技由李明创立，总部位于青岚市。", "parameters": {"max_tokens": 64}}


@contextmanager
def _stage(n: int, total: int, title: str):
    print(f"\n[{n}/{total}] {title} ...", flush=True)
    t0 = time.perf_counter()
    yield
    print(f"[{n}/{total}] {title}: done in {time.perf_counter() - t0:.1f}s", flush=True)


def run_demo(workdir: str | Path = "artifacts/demo", steps: int = 200, port: int = 8000) -> dict:
    import requests

    from knowlm_ray import config as C
    from knowlm_ray.runtime import init_ray

    if not CONFIGS.is_dir():
        raise FileNotFoundError(f"demo presets not found at {CONFIGS}: run from a source checkout")
    work = Path(workdir).resolve()
    if work.exists():
        shutil.rmtree(work)  # a demo is a fresh run: no resume from an older one
    work.mkdir(parents=True)
    paths = {k: str(work / k) for k in ("tiny", "corpus", "pretrained", "lora", "merged", "ray_results")}
    t_start = time.perf_counter()
    total = 6

    with _stage(1, total, "knowlm init-tiny: sentencepiece tokenizer + tiny LLaMA"):
        from knowlm_ray.models.tiny import DEFAULT_CORPUS, build_tiny

        build_tiny(paths["tiny"], [REPO / p for p in DEFAULT_CORPUS])

    init_ray()
    with _stage(2, total, "prepare_corpus on Ray Data: read, filter, dedup, split, tokenize, shard"):
        from knowlm_ray.corpus.pipeline import run as prepare_corpus

        cfg = C.load_config(C.CorpusConfig, CONFIGS / "tiny_corpus.yaml",
                            [f"tokenizer={paths['tiny']}", f"out_dir={paths['corpus']}"])
        cfg.inputs = [s.model_copy(update={"path": str(REPO / s.path)}) for s in cfg.inputs]
        manifest = prepare_corpus(cfg)
        print("stages:", json.dumps(manifest["stages"]))

    with _stage(3, total, f"pretrain on Ray Train: DeepSpeed ZeRO-3, 2 workers, {steps} steps"):
        from knowlm_ray.train.pretrain import run as pretrain

        cfg = C.load_config(C.PretrainConfig, CONFIGS / "tiny.yaml", [
            f"model={paths['tiny']}", f"data={paths['corpus']}", f"output_dir={paths['pretrained']}",
            f"storage_path={paths['ray_results']}", f"max_steps={steps}"])
        print(json.dumps(pretrain(cfg), default=str))

    with _stage(4, total, "finetune_lora on Ray Train: peft LoRA on the IE instructions"):
        from knowlm_ray.train.lora import run as finetune

        cfg = C.load_config(C.FinetuneConfig, CONFIGS / "tiny_lora.yaml", [
            f"model={paths['pretrained']}", f"data={REPO / 'data/sample/ie/instructions.json'}",
            f"output_dir={paths['lora']}", f"storage_path={paths['ray_results']}"])
        print(json.dumps(finetune(cfg), default=str))

    with _stage(5, total, "knowlm weights merge-lora"):
        from knowlm_ray.models.lora import merge_lora

        merge_lora(paths["pretrained"], paths["lora"], paths["merged"])

    with _stage(6, total, f"Ray Serve on 127.0.0.1:{port}: POST /generate and POST /extract"):
        from knowlm_ray.serve import launch

        base = launch.start(model=paths["merged"], host="127.0.0.1", port=port)
        try:
            resp = requests.post(f"{base}/generate", json=DEMO_REQUEST, timeout=120)
            print(f"POST {base}/generate -> {resp.status_code}")
            body = resp.json()
            print(json.dumps(body, ensure_ascii=False, indent=2))
            resp.raise_for_status()
            ext = requests.post(f"{base}/extract", json=DEMO_EXTRACT, timeout=120)
            print(f"POST {base}/extract -> {ext.status_code}")
            print(json.dumps(ext.json(), ensure_ascii=False, indent=2))
            ext.raise_for_status()
        finally:
            launch.stop()

    import ray

    ray.shutdown()
    print(f"\ndemo finished in {time.perf_counter() - t_start:.0f}s; artifacts in {work}")
    return body
