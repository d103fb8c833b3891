"""Records written for the curation tests, and the tiny model taught some of their answers."""

from __future__ import annotations

import json
import shutil

import pytest

# Answers the taught model has seen (low perplexity), and one made of noise (high perplexity).
TAUGHT = [
    "Harrowgate Bridge is a five-span stone arch bridge over the River Vell.",
    "青岚市是江南省下辖的地级市，位于云栖湖西岸。",
    "The bridge was designed by the engineer Thomas Pryce in 1784.",
]
NOISE = "qzx vbnw plok jjhy zzq xxw mmp qoq vzv kkd wqp zlx"


@pytest.fixture(scope="session")
def taught_model(tiny_model, tmp_path_factory):
    """The session's tiny model after 40 Adam steps on TAUGHT in the alpaca prompt: their
    perplexity falls far below that of NOISE."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from knowlm_ray.alpaca import build_prompt

    out = tmp_path_factory.mktemp("taught") / "model"
    shutil.copytree(tiny_model, out)
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    torch.manual_seed(0)
    texts = [build_prompt("Answer.", "", a) + tok.eos_token for a in TAUGHT]
    enc = tok(texts, return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        loss = model(**enc, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval().save_pretrained(out)
    return out


def write_jsonl(path, records) -> str:
    """Records (or raw strings, written as they are) one per line."""
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records),
        encoding="utf-8",
    )
    return str(path)
