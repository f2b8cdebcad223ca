"""The mutation harness (tests/mutation.py): every mutant still applies to the code (default run),
and the suite kills every one of them (slow: CI runs it)."""
from __future__ import annotations

import os

import pytest
from mutation import MUTANTS, REPO, Mutant, MutantOutOfDate, check_mutant, format_outcomes, run_all


def test_every_mutant_applies_to_the_current_code():
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
    for m in MUTANTS:
        assert m.original != m.replacement, m.name
        check_mutant(m)          # raises MutantOutOfDate when the snippet is gone or ambiguous


def test_a_mutant_whose_snippet_is_gone_fails_loudly():
    with pytest.raises(MutantOutOfDate, match="update tests/mutation.py"):
        check_mutant(Mutant("gone", "simsched/metrics.py", "this text is not in the file", "x", ""))
    with pytest.raises(MutantOutOfDate, match="occurs 2 times"):
        check_mutant(Mutant("twice", "simsched/engines/rtc_loop.py", "t_fin <= t_arr", "x", ""))
    assert (REPO / "simsched/metrics.py").is_file()


@pytest.mark.slow
def test_the_suite_kills_every_mutant(tmp_path):
    clean_s, outcomes = run_all(tmp_path, jobs=min(4, os.cpu_count() or 1))
    report = format_outcomes(clean_s, outcomes)
    print(report)
    assert all(o.killed for o in outcomes), report
