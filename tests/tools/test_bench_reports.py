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


def test_search_times_read_as_less_or_more() -> None:
    from lcpaq.tools.bench_search_report import _versus

    assert _versus(6.0, 2.0) == "3.0x less" and _versus(2.0, 5.4) == "2.7x more"


def test_winner_lines_read_the_goals_off_the_run() -> None:
    from lcpaq.tools.bench_search_report import winner_lines

    def w(after: float) -> dict[str, float]:
        return {"validation": 0.9, "held_out_before": 0.9, "held_out_after": after}

    m = {"metric": "cosine", "chosen_proxy": "hessian", "distillation": {"steps": 10}, "data": {"held_out": 1024},
         "winners": {"proxy search (hessian)": w(0.93), "full search": w(0.935), "haq search": w(0.94)},
         "searches": {"hessian": {"seconds": {"total": 2.0}}}, "full": {"seconds": {"total": 20.0}}, "haq": {"seconds": {"total": 500.0}},
         "evidence": {"metric_seconds_per_config": 1.0, "proxies": {"hessian": {"spearman": 0.95, "seconds_per_config": 0.04},
                                                                     "kl": {"spearman": 0.99, "seconds_per_config": 0.3}}}}
    text = "\n".join(winner_lines(m))
    assert "250.0x cheaper than the HAQ-protocol search at equal trials (goal 200x: met)" in text
    assert "against the full search: 10.0x less" in text
    assert "-0.0100 against the HAQ winner (goal: no more than 0.005 below it: not met)" in text
    assert "costing at most 1/20 of the metric: hessian (met)." in text  # kl ranks better but costs 0.3 of the metric
    assert winner_lines({k: v for k, v in m.items() if k != "winners"}) == []  # an older run without held-out winners
    more = {"evaluated": 3, "seconds": {"total": 4.0}}
    text = "\n".join(winner_lines({**m, "searches": {"hessian": {"seconds": {"total": 2.0}, "more": more}}}))
    assert "(goal 200x: met) (with its best 3 evaluated: 125.0x); against the full search" in text


def test_search_table_rows_and_ratios() -> None:
    from lcpaq.tools.bench_search_report import search_table

    def found(metric: float, search: float, confirm: float) -> dict:
        return {"best_metric": metric, "seconds": {"search": search, "confirm": confirm, "total": search + confirm}}

    m = {"metric": "cosine", "trials": 30, "chosen_proxy": "cosine",
         "searches": {"hessian": found(0.90, 1.0, 1.0), "cosine": {**found(0.93, 3.0, 1.0), "more": {**found(0.94, 3.0, 3.0), "evaluated": 3}}},
         "full": found(0.95, 40.0, 0.0), "haq": {**found(0.96, 800.0, 0.0), "finetune_epochs": 1, "metric_without_finetuning": 0.91}}
    text = "\n".join(search_table(m))
    assert "| proxy: hessian | 0.9000 | 1.00 s | 1.00 s | 2.00 s | 20.0x less | 400.0x less | -0.0500 |" in text
    assert "| proxy: cosine (chosen) | 0.9300 | 3.00 s | 1.00 s | 4.00 s | 10.0x less | 200.0x less | -0.0200 |" in text
    assert "| proxy: cosine, best 3 evaluated, best kept | 0.9400 | 3.00 s | 3.00 s | 6.00 s | 6.7x less | 133.3x less | -0.0100 |" in text
    assert "| full (baseline) | 0.9500 | 40.00 s | - | 40.00 s | 1x | 20.0x less | 0 |" in text
    assert "| 0.9600 | 800.00 s | - | 800.00 s | 20.0x more | 1x | +0.0100 |" in text and "without it: 0.9100" in text


def test_per_candidate_costs_and_the_extrapolated_epoch() -> None:
    """HAQ per candidate = its search time / trials; the epoch at which the proxy search would be
    200x cheaper solves trials x (metric + n x rate) = 200 x search, rate = (HAQ - metric) / train."""
    from lcpaq.tools.bench_search_report import per_candidate_lines

    m = {"chosen_proxy": "cosine", "trials": 10, "data": {"train": 100},
         "evidence": {"metric_seconds_per_config": 1.0, "proxies": {"cosine": {"seconds_per_config": 0.1}}},
         "searches": {"cosine": {"seconds": {"total": 5.0}}}, "haq": {"seconds": {"total": 30.0}}}
    text = "\n".join(per_candidate_lines(m))
    assert "| HAQ (build, one epoch of 100 training samples, validation split) | 3000.0 ms | 30.0x |" in text
    assert "Retraining cost 20000 us per training sample" in text  # (3.0 - 1.0) s / 100
    assert "once an epoch held about 4,950 training samples" in text  # (200 x 5 / 10 - 1) / 0.02
    # a free proxy still evaluates its winner once (1 s): HAQ's 30 s search is 30 such evaluations
    assert "the whole HAQ-protocol search costs 30 such evaluations" in text
    met = "\n".join(per_candidate_lines({**m, "haq": {"seconds": {"total": 1000.0}}}))  # 200x measured: nothing to extrapolate
    assert "| chosen proxy (`cosine`) | 100.0 ms | 1x |" in met and "extrapolation" not in met and "such evaluations" not in met
    assert per_candidate_lines({**m, "data": {}}) == []  # a run without a training split


def test_agreement_says_which_ranks_unseen_quality_better() -> None:
    from lcpaq.tools.bench_search_report import agreement_lines

    a = {"proxy": "cosine", "configurations": 56, "validation_vs_held_out": 0.49, "proxy_vs_held_out": 0.77}
    text = " ".join(agreement_lines({"metric": "accuracy", "agreement": a}))
    assert "the validation accuracy has Spearman 0.490 and the `cosine` proxy 0.770" in text and "worse than the proxy" in text
    better = " ".join(agreement_lines({"metric": "accuracy", "agreement": {**a, "validation_vs_held_out": 0.95}}))
    assert "at least as well as the proxy" in better
    assert agreement_lines({"metric": "cosine", "agreement": None}) == []
