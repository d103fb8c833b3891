"""The documentation stands on its own: it points only at files in the repository, and
docs/architecture.md keeps up with the packages."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Spelt in two pieces so this file does not match itself.
OUTSIDE = ("../" + "shared").encode()
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")


def _repo_files() -> list[Path]:
    """Tracked files and new ones git does not ignore, data/ left out."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    names = sorted({n for n in out.decode().split("\0") if n and not n.startswith("data/")})
    return [ROOT / n for n in names if (ROOT / n).is_file()]


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fenced = [], False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced:
            lines.append((n, line))
    return lines


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a markdown file (lower case, punctuation gone, spaces to '-',
    '-1', '-2', ... for repeats)."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(path):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_nothing_points_outside_the_repository():
    hits = []
    for f in _repo_files():
        for n, line in enumerate(f.read_bytes().splitlines(), 1):
            if OUTSIDE in line:
                hits.append(f"{f.relative_to(ROOT)}:{n}")
    assert not hits, f"these lines refer to {OUTSIDE.decode()}, which a clone does not have: {hits}"


@pytest.mark.parametrize("doc", _docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path):
    broken = []
    for n, line in _prose_lines(doc):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            path, _, fragment = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                broken.append(f"{doc.name}:{n}: {target} (no such file)")
            elif fragment and dest.suffix == ".md" and fragment not in _anchors(dest):
                broken.append(f"{doc.name}:{n}: {target} (no heading #{fragment} in {dest.name})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_architecture_names_every_package():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    packages = sorted(p.parent.name for p in (ROOT / "knowlm_ray").glob("*/__init__.py"))
    assert packages, "no subpackages found under knowlm_ray/"
    missing = [p for p in packages if not re.search(rf"`{re.escape(p)}/?`", text)]
    assert not missing, (
        f"docs/architecture.md does not name the package(s) {missing}: add each to "
        "'Packages and layers' with what it owns"
    )


def test_architecture_lists_every_jobs_top_level_keys():
    """The 'Job configs' table has a row per job script naming each top-level key of its config
    (finetune_lora's row takes the training keys from pretrain's)."""
    from knowlm_ray.entry import JOBS

    rows = {
        line.split("`")[1]: line
        for line in (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("| `") and ".py`" in line.split("|")[1]
    }
    missing = {}
    for spec in JOBS.values():
        if not spec.script:
            continue
        row = rows.get(spec.script, "")
        if "shared training keys above" in row:
            row += rows.get("pretrain.py", "")
        keys = [f.alias or n for n, f in spec.config_class().model_fields.items()]
        gaps = [k for k in keys if f"`{k}`" not in row] if row else ["(no row)"]
        if gaps:
            missing[spec.script] = gaps
    assert not missing, f"docs/architecture.md's Job configs table lacks: {missing}"
