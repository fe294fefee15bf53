"""The benchmark reports state what their data shows: the sensitivity/quality agreement is
computed (not asserted in prose), and the proxy choice names the rule that picked it."""
from __future__ import annotations

import pytest

from lcpaq.tools.bench_report import sensitivity_agreement
from lcpaq.tools.bench_search_report import choice_lines


def _a(sens: float, acc: float) -> dict[str, float]:
    return {"sensitivity": sens, "accuracy": acc}


def test_sensitivity_agreement_counts_budgets_and_ranks() -> None:
    rows = [
        {"uniform": _a(3, 0.5), "greedy": _a(2, 0.6), "ilp": _a(1, 0.7), "random": [_a(4, 0.4)]},  # fully ordered
        {"uniform": _a(3, 0.9), "greedy": _a(2, 0.6), "ilp": _a(1, 0.7), "random": [_a(4, 0.4)]},  # least sensitive is not best
        {"uniform": _a(3, 0.5), "greedy": _a(2, 0.5), "ilp": _a(1, 0.5), "random": []},  # every metric ties: left out
    ]
    got = sensitivity_agreement({"metric": "accuracy", "rows": rows})
    assert (got["agree"], got["budgets"]) == (1, 2)
    assert got["rho_min"] == pytest.approx(0.4)  # ranks by -sensitivity 2,3,4,1 against metric 4,2,3,1: 1 - 6*6/(4*15)
    assert got["rho_median"] == pytest.approx(0.7)


def _evidence(low_cost: dict[str, bool], best: str) -> dict:
    return {"best": best, "proxies": {n: {"low_cost": c} for n, c in low_cost.items()}}


def test_the_proxy_choice_names_the_rule_that_applied() -> None:
    cheap = " ".join(choice_lines(_evidence({"hessian": True, "kl": False}, "hessian")))
    assert "the highest Spearman among the low-cost proxies (hessian)" in cheap
    none = " ".join(choice_lines(_evidence({"hessian": False, "kl": False}, "kl")))
    assert "No proxy costs at most 1/5 of the metric" in none and "`kl`" in none and "low-cost proxies" not in none
