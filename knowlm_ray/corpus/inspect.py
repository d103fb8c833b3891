"""``knowlm corpus inspect``: a prepared corpus's manifest statistics and its first samples, decoded.

The tokenizer for decoding is the one the corpus was built with (``config.tokenizer`` in the
manifest, resolved against the current directory and the corpus dir's parents) unless one is
given; without a loadable tokenizer the samples are shown as token ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from knowlm_ray.corpus.shards import ShardReader, read_manifest_of
from knowlm_ray.errors import MissingPathError

STAGES = ("read", "malformed", "filtered", "exact_dups", "near_dups", "capped", "documents", "samples", "tokens")
DROPPED = ("malformed", "filtered", "exact_dups", "near_dups", "capped", "documents")


def load_manifest(corpus: str | Path) -> dict:
    manifest = read_manifest_of(corpus)
    if manifest is None:
        raise MissingPathError(f"no manifest.json in {corpus} (not a prepare_corpus out_dir)")
    return manifest


def resolve_tokenizer(corpus: str | Path, tokenizer: str | None = None) -> tuple[Any | None, str]:
    """(loaded HF tokenizer or None, a note on where it came from or why it is missing)."""
    from knowlm_ray.corpus.samples import load_tokenizer

    if tokenizer:
        return load_tokenizer(tokenizer), tokenizer  # asked for explicitly: errors are the user's
    name = ((read_manifest_of(corpus) or {}).get("config") or {}).get("tokenizer")
    if not name:
        return None, "no tokenizer recorded in the manifest (give --tokenizer)"
    candidates = (
        [Path(name)] if Path(name).is_absolute() else [Path(name), *(p / name for p in Path(corpus).resolve().parents)]
    )
    for c in candidates:
        if c.is_dir():
            try:
                return load_tokenizer(str(c)), str(c)
            except Exception as exc:  # noqa: BLE001 - a broken dir: show ids instead
                return None, f"tokenizer {c} cannot be loaded ({exc}); give --tokenizer"
    return None, f"tokenizer {name!r} from the manifest not found (give --tokenizer)"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [header] + [[f"{v:,}" if isinstance(v, int) else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [fmt(cells[0]), fmt(["-" * w for w in widths]), *(fmt(r) for r in cells[1:])]


def summary(corpus: str | Path) -> dict[str, Any]:
    """The manifest's statistics in one dict (what ``inspect --json`` prints)."""
    m = load_manifest(corpus)
    shards = m.get("shards") or []
    return {
        "stages": m.get("stages", {}),
        "by_source": m.get("by_source", {}),
        "stats": m.get("stats", {}),
        "filters": m.get("filters", {}),
        "mix": m.get("mix"),
        "near_dedup": m.get("near_dedup", {}),
        "format": m.get("format", {}),
        "shards": {
            "files": len(shards),
            "rows": sum(int(s.get("rows", 0)) for s in shards),
            "tokens": sum(int(s.get("tokens", 0)) for s in shards),
        },
    }


def render(corpus: str | Path, samples: int = 3, tokenizer: str | None = None, max_chars: int = 400) -> str:
    """The text ``knowlm corpus inspect`` prints."""
    s = summary(corpus)
    out = [f"corpus {Path(corpus).resolve()}", ""]
    st = s["stages"]
    out += _table(["stage", "count"], [[k, int(st.get(k, 0))] for k in STAGES if k in st])
    if st:
        ok = st.get("read", 0) == sum(st.get(k, 0) for k in DROPPED)
        out.append(f"read = {' + '.join(k for k in DROPPED if k in st)}: {'holds' if ok else 'DOES NOT HOLD'}")
    if s["by_source"]:
        out += [
            "",
            *_table(
                ["source", *STAGES, "weight"],
                [
                    [name, *[int(v.get(k, 0)) for k in STAGES], v.get("weight", 1.0)]
                    for name, v in s["by_source"].items()
                ],
            ),
        ]
    if s.get("mix"):
        mix = s["mix"]
        out += [
            "",
            f"mix (caps and shares in {mix.get('unit', 'documents')}):",
            *_table(
                ["source", "cap", "documents before", "after", "tokens before", "after"],
                [
                    [
                        n,
                        v["cap"] if v.get("cap") is not None else "-",
                        int(v["documents_before"]),
                        int(v["documents_after"]),
                        int(v["tokens_before"]),
                        int(v["tokens_after"]),
                    ]
                    for n, v in mix.get("sources", {}).items()
                ],
            ),
        ]
    stats = {k: v for k, v in s["stats"].items() if not isinstance(v, dict)}
    if stats:
        out += ["", "stats: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in stats.items())]
    filters = {k: v for k, v in (s["filters"] or {}).items() if v}
    if filters:
        out.append("filtered by: " + ", ".join(f"{k} {v:,}" for k, v in filters.items()))
    sh = s["shards"]
    out.append(
        f"shards: {sh['files']} files, {sh['rows']:,} rows, {sh['tokens']:,} tokens "
        f"(pack: {s['format'].get('pack', 'none')})"
    )
    if samples > 0:
        tok, note = resolve_tokenizer(corpus, tokenizer)
        reader = ShardReader(corpus)
        out += [
            "",
            f"first {min(samples, len(reader))} of {len(reader):,} rows "
            f"({'decoded with ' + note if tok is not None else 'token ids: ' + note}):",
        ]
        for i in range(min(samples, len(reader))):
            row = reader[i]
            ids = row["input_ids"].tolist()
            extra = f", doc_starts {row['doc_starts'].tolist()}" if "doc_starts" in row else ""
            out.append(f"--- row {i}: {row.get('doc_id')} ({row.get('source')}), {len(ids)} tokens{extra}")
            text = tok.decode(ids) if tok is not None else " ".join(map(str, ids))
            out.append(
                text if len(text) <= max_chars else text[:max_chars] + f" ... [{len(text) - max_chars} more chars]"
            )
    return "\n".join(out)
