"""The search's part of report.md and of the terminal summary: what was searched and how, the
winner, the confirmed candidates, the held-out check, the cost, and a stored study's runs."""
from __future__ import annotations

from typing import Any, Callable

Table = Callable[[list[str], list[list[str]], str], list[str]]


def search_summary_line(report: dict[str, Any]) -> list[str]:
    search = report.get("search")
    if search is None:
        return []
    return [f"{search['mode']} search ({search['trials']} trials, {search['seconds']['total']:.1f} s + "
            f"{search['seconds']['sensitivity']:.1f} s shared analysis) chose: {_brief(search['best'])}"]


def search_markdown(report: dict[str, Any], table: Table) -> list[str]:
    search = report.get("search")
    if search is None:
        return []
    if search["proxy"]:
        k = len(search["confirmed"])
        best = "its best evaluated" if k == 1 else f"its best {k} evaluated"
        proxy = f" scored by the `{search['proxy']}` proxy, {best} on the validation metric"
    elif search.get("finetune_epochs"):
        proxy = f" each retrained {search['finetune_epochs']} epoch(s) on training data, then scored by the validation metric (HAQ's protocol)"
    else:
        proxy = " scored by the validation metric"
    lines = ["## Search", "", f"{search['mode']} search: {search['trials']} TPE trials over {search['space_size']:,} configurations,{proxy}.",
             f"Best {search['metric']}: {search['best_metric']:.4f}.", *held_out_lines(search.get("held_out")), "",
             *table(["hyperparameter", "chosen"], [[k, str(v)] for k, v in search["best"].items() if v is not None], "ll"), ""]
    if search["confirmed"]:
        rows = [[str(i + 1), f"{c['proxy_score']:.4g}", f"{c['metric']:.4f}", _brief(c["config"])] for i, c in enumerate(search["confirmed"])]
        lines += table(["rank", "proxy", search["metric"], "configuration"], rows, "rrrl") + [""]
    lines += table(["search stage", "seconds"], [[k, f"{v:.2f}"] for k, v in search["seconds"].items()], "lr") + [""]
    return lines + study_lines(search.get("study"), table)


def held_out_lines(held: dict[str, Any] | None) -> list[str]:
    """Whether the winner was scored on data no trial saw, and how it did there."""
    if not held:
        return []
    if "reason" in held:
        return [f"No held-out check: {held['reason']}."]
    return [f"The search selected on {held['selection_batches']} of the {held['selection_batches'] + held['held_out_batches']} "
            f"evaluation batches; on the other {held['held_out_batches']}, which no trial saw, the winner's cosine to fp32 is "
            f"{held['held_out_cosine']:.4f} ({held['selection_cosine']:.4f} on the batches it was selected on)."]


def study_lines(study: dict[str, Any] | None, table: Table) -> list[str]:
    """Where a stored search's trials are, and how many each run contributed."""
    if not study:
        return []
    runs = study["runs"]
    rows = [[run + (" (this run)" if run == study["this_run"] else ""), str(n)] for run, n in runs.items()]
    return [f"Trials stored in study `{study['name']}` at `{study['storage']}`: {sum(runs.values())} completed, "
            f"{study['completed_before']} of them before this run started.", "",
            *table(["run (host:process:start)", "trials"], rows, "lr"), ""]


def _brief(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items() if v is not None)
