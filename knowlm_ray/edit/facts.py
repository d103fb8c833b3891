"""A fact-trained fixture: a small LLaMA that recalls a set of synthetic facts.

An edit needs a model that knows something to move: a randomly initialised tiny model predicts
nothing, so a method's reliability on it means nothing. ``build_fact_model`` makes people with
made-up names, gives each a birthplace, a mother tongue and a profession, asks each fact in three
phrasings ("{} was born in", "The birthplace of {} is", ...) and trains a small LLaMA (a
sentencepiece tokenizer trained on data/sample plus the fact sentences, as ``models.tiny`` builds
one) on them until it recalls every one by greedy teacher-forced decoding. The first phrasing is
the one an edit request names; the others are its rephrasings (generalization); the other
people's facts are the locality prompts. ``facts.json`` beside the weights lists every fact,
``facts.txt`` holds the training texts (``edit apply --stats-data`` measures C on them), and
``fact_requests`` writes edit requests for it in KnowEdit, ZsRE or the plain format.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from knowlm_ray.atomic import atomic_dir

FIRST = (
    "Arlo Bexa Corin Dalia Elio Fenna Gido Halla Ivor Jolie Kasim Lorna Milo Nerys Otto Pella Quin Rhea "
    "Sami Tova Ulric Vesna Wilma Yanis Zora Bruno Celia Dario Edda Fabio"
).split()
LAST = (
    "Quell Marrow Vantis Okonro Pirelli Szabo Tamberg Ulvane Westrop Yardell Zolotov Brenner Castellan "
    "Drummond Elwood Farrant Gosling Hartwell Ingram Jessup Kerrigan Lindqvist Morcant Nyberg Ostrander "
    "Penhale Quarrie Rosselin Sterland Trevane"
).split()
RELATIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "birthplace": (
        ("{} was born in", "The birthplace of {} is", "{} came into the world in"),
        ("Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Delhi", "Rome", "Boston", "Madrid", "Sydney", "Dublin", "Berlin"),
    ),
    "language": (
        ("The mother tongue of {} is", "{} grew up speaking", "The native language of {} is"),
        ("French", "Japanese", "Arabic", "Spanish", "Norwegian", "Hindi", "Italian", "English", "German", "Greek"),
    ),
    "profession": (
        ("{} works as a", "The profession of {} is", "By trade, {} is a"),
        ("doctor", "painter", "pilot", "farmer", "lawyer", "teacher", "baker", "sailor", "chemist", "writer"),
    ),
}


SHARED_FIRST_NAMES = 6
ENGLISH_SAMPLE = ("data/sample/en.jsonl", "data/sample/en_books.txt")


@dataclass
class Fact:
    subject: str
    relation: str
    target: str
    prompts: list[str]  # the first is the edit prompt, the rest its rephrasings

    def texts(self) -> list[str]:
        return [f"{p} {self.target}." for p in self.prompts]


def profiles(facts: list[Fact], rotations: int = 1) -> list[str]:
    """Lines of a person's values straight after the name ("Zora Trevane Rome Greek baker."), in
    ``rotations`` orders (the values rotated: "Zora Trevane Greek baker Rome.", ...).

    The first value is predicted at the name's last token, so the model must hold a person's
    facts there, where a real model enriches its subjects and where ROME looks them up;
    trained on the questions alone, a small model copies the bare name to the question's last
    token and looks the fact up there, and no edit at the subject can move it. With one order
    only the first relation is held at the name; with every order, all of them are.
    """
    people: dict[str, list[str]] = {}
    for f in facts:
        people.setdefault(f.subject, []).append(f.target)
    return [f"{name} {' '.join(values[r:] + values[:r])}." for r in range(rotations) for name, values in people.items()]


@dataclass
class FactSpec:
    people: int = 16
    hidden: int = 64
    layers: int = 4
    heads: int = 4
    intermediate: int = 128
    vocab_size: int = 1000
    lr: float = 5e-3
    max_steps: int = 800
    seed: int = 0
    rotations: int = 1  # orders of the profile lines (``profiles``)
    # Steps trained on once every fact is recalled (a margin on each fact; on the bench fixture the
    # edit scores were the same without them, BENCHMARKS.md).
    settle_steps: int = 0


# "test": seconds on a CPU, for the test suite. "bench": the benchmark's fixture, 6 layers, 128 wide
# with 512 MLP keys (on the test one, 10 sequential ROME edits or one MEMIT batch move 30-40 % of
# the other facts), trained 300 steps past full recall. ``rotations`` > 1 was tried to make the
# model hold every relation at the subject; it still looks facts up at the question's last token.
FACT_SPECS = {
    "test": FactSpec(),
    "bench": FactSpec(hidden=128, layers=6, intermediate=512, lr=2e-3, max_steps=1500, settle_steps=300),
}


def make_facts(people: int, seed: int = 0) -> list[Fact]:
    """``people`` made-up people, each with one value per relation (seeded, so reproducible)."""
    if people > len(LAST):
        raise ValueError(f"at most {len(LAST)} people")
    rng = random.Random(seed)
    # First names are shared by several people, last names are not: who is meant is known only
    # at the subject's last token, where ROME and MEMIT read the key (as in a real model, where
    # "Michael" says little and "Jordan" after it says who).
    first, last = rng.sample(FIRST, SHARED_FIRST_NAMES), list(LAST)
    rng.shuffle(last)
    facts = []
    for i in range(people):
        name = f"{first[i % len(first)]} {last[i]}"
        for rel, (templates, values) in RELATIONS.items():
            facts.append(Fact(name, rel, rng.choice(values), [t.format(name) for t in templates]))
    return facts


def new_target(fact: Fact, rng: random.Random, known: set[str] | None = None) -> str:
    """Another value of the fact's relation: what an edit request asks for. With ``known`` (the
    values the fixture was trained on), one of those: a value the model never saw is pieces its
    tokenizer cut from other words (e.g. "▁R ome"), a sequence it was never trained to say."""
    others = [v for v in RELATIONS[fact.relation][1] if v != fact.target]
    return rng.choice([v for v in others if known is None or v in known] or others)


def fact_requests(
    facts: list[Fact], n: int, *, fmt: str = "plain", seed: int = 0, locality: int = 3
) -> list[dict[str, Any]]:
    """``n`` edit requests on the first facts of distinct people, each moving the fact to another
    value of its relation, written as KnowEdit, ZsRE or plain records. Locality prompts are other
    people's facts (their answers the current ones); portability asks the edited person's other
    relations in their edit phrasing (which an edit should leave as they are)."""
    rng = random.Random(seed)
    by_subject: dict[str, list[Fact]] = {}
    for f in facts:
        by_subject.setdefault(f.subject, []).append(f)
    subjects = list(by_subject)
    rng.shuffle(subjects)
    if n > len(subjects):
        raise ValueError(f"{n} requests asked, the fixture has {len(subjects)} people")
    edited, others = subjects[:n], subjects[n:] or subjects
    known = {f.target for f in facts}
    out = []
    for i, subject in enumerate(edited):
        fact = by_subject[subject][i % len(RELATIONS)]
        target = new_target(fact, rng, known)
        unrelated = [f for s in rng.sample(others, min(locality, len(others))) for f in by_subject[s][:1]]
        same_person = [f for f in by_subject[subject] if f is not fact]
        if fmt == "knowedit":
            out.append(
                {
                    "subject": subject,
                    "prompt": fact.prompts[0],
                    "target_new": target,
                    "ground_truth": fact.target,
                    "rephrase": fact.prompts[1:],
                    "locality": {
                        "Relation_Specificity": [{"prompt": f.prompts[0], "ground_truth": f.target} for f in unrelated]
                    },
                    "portability": {
                        "Subject_Aliasing": [{"prompt": f.prompts[0], "ground_truth": f.target} for f in same_person]
                    },
                }
            )
        elif fmt == "zsre":
            out.append(
                {
                    "subject": subject,
                    "src": fact.prompts[0],
                    "rephrase": fact.prompts[1],
                    "alt": target,
                    "answers": [fact.target],
                    "loc": unrelated[0].prompts[0],
                    "loc_ans": unrelated[0].target,
                    "portability": {"New Question": same_person[0].prompts[0], "New Answer": same_person[0].target},
                }
            )
        elif fmt == "plain":
            out.append({"prompt": fact.prompts[0], "subject": subject, "target_new": target})
        else:
            raise ValueError(f"unknown request format {fmt!r} (knowedit, zsre, plain)")
    return out


def _tokenizer_lines(facts: list[Fact]) -> list[str]:
    from knowlm_ray.models.tiny import iter_corpus_lines

    root = Path(__file__).resolve().parents[2]
    # The English part of data/sample: the facts are English, and Chinese needs a bigger vocabulary.
    corpus = [root / p for p in ENGLISH_SAMPLE if (root / p).exists()]
    lines = list(iter_corpus_lines(corpus)) if corpus else []
    # Repeated so that the names and values are whole pieces: a name cut into pieces shared with
    # other names gives ROME's key (the subject's last token) less to tell people apart by.
    return lines + ([t for f in facts for t in f.texts()] + profiles(facts)) * 20


def recall(model, tok, facts: list[Fact]) -> float:
    """Share of (fact, phrasing) pairs whose target tokens are all the model's greedy choices."""
    from knowlm_ray.edit.metrics import token_accuracy

    pairs = [(p, f.target) for f in facts for p in f.prompts]
    return sum(a == 1.0 for a in token_accuracy(model, tok, pairs)) / len(pairs)


def build_fact_model(
    out_dir: str | Path, spec: FactSpec | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Build, train and save the fixture to ``out_dir`` (HF dir + ``facts.json``); returns a summary."""
    import torch
    from transformers import LlamaForCausalLM

    from knowlm_ray.models.tiny import tiny_llama_config, train_sentencepiece

    spec = spec or FactSpec()
    t0 = time.perf_counter()
    facts = make_facts(spec.people, spec.seed)
    sp = train_sentencepiece(_tokenizer_lines(facts), spec.vocab_size)
    with atomic_dir(Path(out_dir)) as tmp:
        tok, cfg = tiny_llama_config(
            tmp,
            sp,
            hidden=spec.hidden,
            intermediate=spec.intermediate,
            layers=spec.layers,
            heads=spec.heads,
            max_positions=256,
        )
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(cfg)
        texts = [t for f in facts for t in f.texts()] + profiles(facts, spec.rotations)
        ids = [tok(t).input_ids + [tok.eos_token_id] for t in texts]
        width = max(map(len, ids))
        x = torch.full((len(ids), width), tok.pad_token_id)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            x[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        labels = x.masked_fill(mask == 0, -100)
        opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)
        step, score, settle = 0, 0.0, None
        while step < spec.max_steps or (settle is not None and step < settle):
            model.train()
            loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % 25 == 0 or step == settle:
                model.eval()
                score = recall(model, tok, facts)
                log(f"[fact-model] step {step} loss {loss.item():.4f} recall {score:.3f}")
                if score == 1.0 and settle is None:
                    settle = step + spec.settle_steps
                if settle is not None and step >= settle:
                    break
        model.eval()
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        # The fixture's corpus, for `edit apply --stats-data` (C over the texts it was trained on).
        (tmp / "facts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
        (tmp / "facts.json").write_text(
            json.dumps({"spec": asdict(spec), "facts": [asdict(f) for f in facts]}, indent=1), encoding="utf-8"
        )
    summary = {
        "out": str(out_dir),
        "facts": len(facts),
        "phrasings": len(texts),
        "steps": step,
        "recall": score,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    log(
        f"[fact-model] {len(facts)} facts x 3 phrasings, recall {score:.3f} after {step} steps "
        f"in {summary['seconds']} s -> {out_dir}"
    )
    return summary


def load_facts(model_dir: str | Path) -> list[Fact]:
    """The facts a fixture was trained on (``facts.json`` beside its weights)."""
    data = json.loads((Path(model_dir) / "facts.json").read_text(encoding="utf-8"))
    return [Fact(**f) for f in data["facts"]]
