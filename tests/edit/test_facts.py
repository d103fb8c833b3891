"""The fact fixture's data: requests that ask for values the fixture was trained on, profile lines
in several value orders, and the named fixture sizes."""

from __future__ import annotations

from knowlm_ray.edit.facts import FACT_SPECS, RELATIONS, fact_requests, make_facts, profiles


def test_requests_ask_for_values_the_fixture_knows():
    facts = make_facts(10)  # 10 people: fewer than the 12 birthplaces, so some are never trained on
    known = {f.target for f in facts}
    unseen = {v for _, values in RELATIONS.values() for v in values} - known
    assert unseen  # else the test proves nothing
    for seed in range(5):
        for r in fact_requests(facts, 10, fmt="knowedit", seed=seed):
            assert r["target_new"] in known and r["target_new"] != r["ground_truth"], r


def test_profiles_put_every_value_right_after_the_name():
    facts = make_facts(3)
    lines = profiles(facts, rotations=len(RELATIONS))
    assert len(lines) == 3 * len(RELATIONS)
    for f in facts:
        firsts = {line[len(f.subject) + 1 :].split()[0].rstrip(".") for line in lines if line.startswith(f.subject)}
        assert firsts == {g.target for g in facts if g.subject == f.subject}
    assert profiles(facts) == lines[:3]  # one order: the test fixture's lines, as before


def test_bench_spec_is_wider_than_the_test_spec():
    test, bench = FACT_SPECS["test"], FACT_SPECS["bench"]
    assert bench.intermediate > test.intermediate and bench.layers > test.layers and bench.settle_steps > 0
    assert test.settle_steps == 0  # the test suite's fixture stops at the first full recall (seconds)
