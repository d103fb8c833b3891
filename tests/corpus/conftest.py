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
