"""Search of quantization hyperparameters: TPE (optuna) over the declared space, scored by a
cheap label-free proxy, with the proxy's best (or best few) confirmed on the real validation
metric; or, as baselines, the same search scored by the validation metric itself, or by it
after HAQ's short retraining of each candidate. The study is in memory, or in
RDB storage that resumes and is shared by workers (:mod:`lcpaq.tools.search_study`)."""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from scipy.stats import kendalltau, spearmanr
from tqdm.auto import tqdm

from lcpaq.ir.errors import ConfigError
from lcpaq.tools.search_harness import DEFAULT_PROXY, PROXIES, SearchHarness
from lcpaq.tools.search_space import Config
from lcpaq.tools.search_study import completed, contributions, open_study, record, redacted, run_id
from lcpaq.tools.search_study import history as study_history


LOW_COST_FRACTION = 0.2
#: Proxy winners evaluated on the validation metric at the end of a proxy search (``--confirm``).
#: One: the winner's own metric, which every search reports. More guard against a proxy that
#: ranks the best few wrongly, at one full evaluation each: on MiniLM, evaluating the best 3
#: took 18 s against 7 s for the 30 proxy trials and raised the winner's held-out cosine by
#: 0.0005, by nothing after distillation (docs/search_benchmark.md compares 1 and 3).
CONFIRM = 1
#: Epochs of retraining per candidate of the ``haq`` baseline: HAQ quantizes each candidate
#: policy, "finetune[s] the quantized model for one more epoch" and takes the validation
#: accuracy after that short-term retraining as the reward.
HAQ_FINETUNE_EPOCHS = 1
#: The search modes: a low-cost proxy, the validation metric itself, and HAQ's protocol.
MODES = ("proxy", "full", "haq")


@dataclass
class SearchResult:
    mode: str
    proxy: str | None
    best: Config
    best_metric: float
    trials: list[dict[str, Any]]
    confirmed: list[dict[str, Any]]
    seconds: dict[str, float] = field(default_factory=dict)
    #: the stored study's name and what each run contributed (empty for an in-memory search)
    study: dict[str, Any] = field(default_factory=dict)


def finetune_epochs(mode: str) -> int:
    """Epochs of retraining a candidate of ``mode`` gets before it is scored (HAQ's only)."""
    return HAQ_FINETUNE_EPOCHS if mode == "haq" else 0


def search_settings(harness: SearchHarness, mode: str, proxy: str, seed: int) -> dict[str, Any]:
    """What a stored study must have been started with for a run to join it."""
    return {"model": harness.bundle.name, "target": harness.target.name, "budgets": harness.budgets, "mode": mode,
            "proxy": proxy if mode == "proxy" else None, "seed": seed, "finetune_epochs": finetune_epochs(mode),
            "space": {name: list(choices) for name, choices in harness.space.dims}}


def run_search(
    harness: SearchHarness,
    mode: Literal["proxy", "full", "haq"],
    trials: int = 40,
    proxy: str = DEFAULT_PROXY,
    top_k: int = CONFIRM,
    seed: int = 0,
    progress: bool = False,
    storage: str | None = None,
    study: str | None = None,
) -> SearchResult:
    """``proxy``: each trial scored by ``proxy``, the best ``top_k`` distinct ones confirmed on
    the validation metric (each confirmed entry records its ``seconds``); ``full``: each trial scored on the validation metric; ``haq`` (the existing-method
    baseline, HAQ's protocol): each trial retrained :data:`HAQ_FINETUNE_EPOCHS` epoch on the
    training data, then scored on the validation metric. Reproducible from ``seed``: the
    sampler, the harness's probes and data are all seeded. With ``storage`` (an optuna RDB URL)
    the trials go to the stored study ``study`` (default: a name derived from the settings): a
    run counts the trials already completed there, scores only the rest, and stops once the
    study holds ``trials``, whichever workers scored them."""
    if mode not in MODES:
        raise ConfigError(f"unknown search {mode!r}; choose {', '.join(MODES)}")
    if top_k < 1:
        raise ConfigError(f"--confirm must be >= 1, got {top_k}")
    book, name = open_study(storage, study, seed, search_settings(harness, mode, proxy, seed))
    before = len(completed(book))
    remaining = max(trials - before, 0)
    run = run_id()
    score = {"proxy": lambda c: harness.proxy(c, proxy), "full": harness.true_metric,
             "haq": lambda c: harness.finetuned_metric(c, finetune_epochs(mode))}[mode]
    bar = tqdm(total=remaining, desc=f"{mode} search", disable=not progress, leave=False)

    def objective(trial: optuna.Trial) -> float:
        config = harness.space.suggest(trial)
        value = score(config)
        record(trial, config, value, run)
        bar.update()
        return value if math.isfinite(value) else -1e30

    start = time.perf_counter()
    if remaining:
        book.optimize(objective, n_trials=remaining, callbacks=[MaxTrialsCallback(trials, states=(TrialState.COMPLETE,))])
    bar.close()
    search_s = time.perf_counter() - start
    history = study_history(book)
    if not any(math.isfinite(entry["score"]) for entry in history):
        raise ConfigError(f"none of the {len(history)} trials is feasible; {harness.infeasible_message(history[0]['config'])}")
    start = time.perf_counter()
    if mode == "proxy":
        confirmed = []
        for entry in _top_distinct(history, top_k):
            began = time.perf_counter()
            metric = harness.true_metric(entry["config"])
            confirmed.append({**entry, "metric": metric, "seconds": time.perf_counter() - began})
        best = max(confirmed, key=lambda e: e["metric"])
    else:
        confirmed = []
        best = max(history, key=lambda e: e["score"])
        best = {**best, "metric": best["score"]}
    confirm_s = time.perf_counter() - start
    stored = {} if storage is None else {"storage": redacted(storage), "name": name, "this_run": run,
                                         "completed_before": before, "runs": contributions(history)}
    return SearchResult(mode, proxy if mode == "proxy" else None, best["config"], best["metric"], history, confirmed,
                        {"search": search_s, "confirm": confirm_s, "total": search_s + confirm_s}, stored)


def _top_distinct(history: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    seen, out = set(), []
    for entry in sorted(history, key=lambda e: -e["score"]):
        key = tuple(sorted(entry["config"].items()))
        if key in seen or not math.isfinite(entry["score"]):
            continue
        seen.add(key)
        out.append(entry)
        if len(out) == k:
            break
    return out


def proxy_correlations(harness: SearchHarness, samples: int = 32, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Rank correlation (Spearman, Kendall) of every proxy with the validation metric over
    ``samples`` random feasible configurations, and each proxy's cost per configuration.
    ``best``: the highest Spearman among the low-cost proxies (at most ``LOW_COST_FRACTION``
    of the metric's cost: a proxy as dear as the metric saves no search time), else overall."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    cost = {name: 0.0 for name in (*PROXIES, "metric")}
    attempts = 0
    with tqdm(total=samples, desc="proxy correlation", disable=not progress, leave=False) as bar:
        while len(rows) < samples and attempts < samples * 5:
            attempts += 1
            config = harness.space.sample(rng)
            start = time.perf_counter()
            if harness.assign(config) is None:
                continue
            row: dict[str, Any] = {"config": config}
            for name in PROXIES:
                start = time.perf_counter()
                row[name] = harness.proxy(config, name)
                cost[name] += time.perf_counter() - start
            start = time.perf_counter()
            row["metric"] = harness.true_metric(config)
            cost["metric"] += time.perf_counter() - start
            rows.append(row)
            bar.update()
    if not rows:
        raise ConfigError(f"none of {attempts} random configurations is feasible; {harness.infeasible_message(config)}")
    table = {}
    for name in PROXIES:
        xs, ys = [r[name] for r in rows], [r["metric"] for r in rows]
        table[name] = {
            "spearman": float(spearmanr(xs, ys).statistic),
            "kendall": float(kendalltau(xs, ys).statistic),
            "seconds_per_config": cost[name] / max(len(rows), 1),
        }
    metric_cost = cost["metric"] / max(len(rows), 1)
    for stats in table.values():
        stats["low_cost"] = stats["seconds_per_config"] <= LOW_COST_FRACTION * metric_cost
    rho = lambda n: table[n]["spearman"] if math.isfinite(table[n]["spearman"]) else -2.0  # noqa: E731
    cheap = [n for n in PROXIES if table[n]["low_cost"]]
    best = max(cheap or PROXIES, key=rho)
    return {"samples": len(rows), "rows": rows, "proxies": table, "best": best, "metric_seconds_per_config": metric_cost}


def search_summary(outcome: SearchResult, harness: SearchHarness, space: Any) -> dict[str, Any]:
    """What report.json records of a search: the winner, the confirmed few, and the cost."""
    return {
        "mode": outcome.mode,
        "proxy": outcome.proxy,
        "finetune_epochs": finetune_epochs(outcome.mode),
        "metric": harness.metric_name,
        "trials": len(outcome.trials),
        "space_size": space.size(),
        "space": {name: list(choices) for name, choices in space.dims},
        "best": outcome.best,
        "best_metric": outcome.best_metric,
        "confirmed": [{"config": c["config"], "proxy_score": c["score"], "metric": c["metric"]} for c in outcome.confirmed],
        "seconds": {**{k: round(v, 4) for k, v in harness.stages.items()}, **{k: round(v, 4) for k, v in outcome.seconds.items()}},
        **({"study": outcome.study} if outcome.study else {}),
    }
