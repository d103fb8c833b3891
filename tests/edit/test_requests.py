from __future__ import annotations

import json

import pytest

from knowlm_ray.edit.requests import load_requests
from knowlm_ray.errors import InputError, MissingPathError

KNOWEDIT = {
    "subject": "Michael Jordan",
    "prompt": "Michael Jordan was born in",
    "target_new": "China",
    "ground_truth": ["USA"],
    "rephrase": "The birthplace of Michael Jordan is",
    "locality": {"Relation_Specificity": [{"prompt": "Paris is the capital of", "ground_truth": [["France"]]}]},
    "portability": {"Subject_Aliasing": [{"prompt": "MJ was born in", "ground_truth": "China"}]},
}
ZSRE = {
    "subject": "Danielle Darrieux",
    "src": "The mother tongue of Danielle Darrieux is",
    "rephrase": "Danielle Darrieux grew up speaking",
    "alt": "English",
    "answers": ["French"],
    "loc": "nq question: who wrote hamlet",
    "loc_ans": "Shakespeare",
    "portability": {"New Question": "Danielle Darrieux's first words were in", "New Answer": "English"},
}
PLAIN = {"prompt": "The Eiffel Tower is in {}", "subject": "Paris", "target_new": "Rome"}


def _write(tmp_path, lines):
    f = tmp_path / "r.jsonl"
    f.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return f


def test_three_formats_and_quarantine(tmp_path):
    f = _write(tmp_path, [KNOWEDIT, "not json", ZSRE, {"what": 1}, PLAIN])
    rs = load_requests(f)
    assert rs.formats == {"knowedit": 1, "zsre": 1, "plain": 1}
    assert [q.split(": ")[0] for q in rs.quarantined] == [f"{f}:2", f"{f}:4"]
    k, z, p = rs.requests
    assert (k.prompt, k.target_new, k.ground_truth, k.rephrase) == (
        "Michael Jordan was born in",
        "China",
        "USA",
        ["The birthplace of Michael Jordan is"],
    )
    assert k.locality == [("Paris is the capital of", "France")]
    assert k.portability == [("MJ was born in", "China")]
    assert k.template == "{} was born in" and k.where == f"{f}:1"
    assert (z.prompt, z.target_new, z.ground_truth, z.rephrase) == (
        ZSRE["src"],
        "English",
        "French",
        [ZSRE["rephrase"]],
    )
    assert z.locality == [("nq question: who wrote hamlet", "Shakespeare")]
    assert z.portability == [("Danielle Darrieux's first words were in", "English")]
    assert (p.prompt, p.template) == ("The Eiffel Tower is in Paris", "The Eiffel Tower is in {}")


@pytest.mark.parametrize(
    "record, message",
    [
        ({**PLAIN, "prompt": "The Eiffel Tower is tall", "subject": "Louvre"}, "subject 'Louvre' not found"),
        ({**PLAIN, "target_new": "  "}, "empty target (target_new)"),
        ({**ZSRE, "alt": ""}, "empty target (alt)"),
    ],
)
def test_refusals_name_the_record(tmp_path, record, message):
    f = _write(tmp_path, [PLAIN, record])
    with pytest.raises(InputError, match=rf"^{f}:2: .*") as e:
        load_requests(f)
    assert message in str(e.value)


def test_no_requests_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="no edit requests"):
        load_requests(_write(tmp_path, ["{}", "[1]"]))
    with pytest.raises(MissingPathError):
        load_requests(tmp_path / "absent.jsonl")
