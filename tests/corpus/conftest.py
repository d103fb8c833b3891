"""Corpus fixtures: a small tokenizer trained on fixture text (independent of data/sample)."""

from __future__ import annotations

from pathlib import Path

import pytest

TOKENIZER_LINES = [
    "知识图谱是一种结构化的语义知识库，用于描述物理世界中的概念及其相互关系。",
    "浙江大学位于杭州市。“你好。”他说。今天天气很好！明天会下雨吗？",
    "大语言模型通过预训练学习语言知识；指令微调让它更好地遵循人类指令。",
    "The quick brown fox jumps over the lazy dog. Mr. Smith paid $3.50 for it!",
    "Dr. Watson lives in the U.S. and works at 221B Baker Street. It is 3.14 miles away.",
    "Knowledge graphs describe entities and the relations between them, e.g. people and places.",
    "def tokenize(text):\n    return [t for t in text.split() if t]\n",
    "import os\nclass Reader:\n    def __init__(self, path):\n        self.path = os.path.abspath(path)\n",
]


@pytest.fixture(scope="session")
def corpus_tokenizer(tmp_path_factory) -> Path:
    """An HF LLaMA-style tokenizer dir (BPE, byte fallback, <s>=1 </s>=2), built in ~0.1 s."""
    from transformers import LlamaTokenizer

    from knowlm_ray.models.tiny import train_sentencepiece

    out = tmp_path_factory.mktemp("corpus_tok")
    (out / "tokenizer.model").write_bytes(train_sentencepiece(TOKENIZER_LINES * 20, 600))
    tok = LlamaTokenizer.from_pretrained(out, legacy=False)
    tok.save_pretrained(out)
    return out


# --------------------------------------------------------------------------- data/sample
REPO = Path(__file__).resolve().parents[2]
TINY_CORPUS = REPO / "jobs" / "configs" / "tiny_corpus.yaml"

# data/sample/README.md, "Deliberate problems" (1-based lines).
SAMPLE_JUNK = {"baike/zh.jsonl": {12, 20, 36, 50, 75, 103}, "wiki/en.jsonl": {3, 17, 26, 37, 48, 54}}
SAMPLE_NEAR_DUPS = {  # near duplicate -> the document it copies (the cluster's representative)
    "baike/zh.jsonl:000000024": "baike/zh.jsonl:000000023",
    "baike/zh.jsonl:000000040": "baike/zh.jsonl:000000029",
    "baike/zh.jsonl:000000054": "baike/zh.jsonl:000000031",
    "baike/zh.jsonl:000000072": "baike/zh.jsonl:000000046",
    "wiki/en.jsonl:000000015": "wiki/en.jsonl:000000007",
    "wiki/en.jsonl:000000023": "wiki/en.jsonl:000000020",
    "wiki/en.jsonl:000000035": "wiki/en.jsonl:000000024",
    "wiki/en.jsonl:000000058": "wiki/en.jsonl:000000057",
}
SAMPLE_GENERATED_CODE = "code/generated/job_pb2.py"


def tiny_corpus_config(**overrides):
    from knowlm_ray.config import CorpusConfig, load_config

    cfg = load_config(CorpusConfig, TINY_CORPUS, [f"{k}={v}" for k, v in overrides.items()])
    inputs = [s.model_copy(update={"path": str(REPO / s.path)}) for s in cfg.inputs]
    return cfg.model_copy(update={"inputs": inputs})


@pytest.fixture(scope="session")
def sample_rows():
    """Every DOC_SCHEMA row the readers make of data/sample with the tiny_corpus.yaml sources."""
    from knowlm_ray.corpus.sources import list_input_files, read_file_rows

    cfg = tiny_corpus_config(tokenizer="x")
    return [row for e in list_input_files(cfg.inputs) for row in read_file_rows(e, cfg.inputs[e["input"]])]
