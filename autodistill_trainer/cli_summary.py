"""What the CLI tells the user at the end: trial counts as the search counts them, and the truth about scores.

Pure functions on result rows and metric dicts (no I/O), so each statement the summary makes is tested on its own.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any, Mapping, Optional, Sequence

from .deploy.summary import deployment_rows

__all__ = ["pick_metrics", "search_strategy_summary", "strategy_text",
           "trial_counts", "no_trained_message", "majority_class_rate", "learned_nothing",
           "distillation_verdict", "format_summary", "format_deployment"]

_SUMMARY_METRICS = ("accuracy", "f1", "mlm_accuracy", "latency", "params", "flops")
# a row's Optuna state when it has no `status` (rows written before statuses existed)
_STATUS_OF_STATE = {"COMPLETE": "trained", "FAIL": "failed", "PRUNED": "invalid"}


def pick_metrics(metrics: Mapping[str, Any], score_key: Optional[str] = None) -> dict[str, Any]:
    """The metrics worth reporting (score, latency, size), without the ``None`` ones."""
    keys = (score_key, "latency", "params") if score_key else _SUMMARY_METRICS
    return {k: metrics.get(k) for k in keys if metrics.get(k) is not None}


def trial_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Counts of the search's rows by status.

    ``trained`` counts what ``max_trials`` counts (trained and failed trials); ``complete`` the trained ones with
    metrics; ``invalid`` and ``over_budget`` were never trained.
    """
    statuses = Counter(row.get("status") or _STATUS_OF_STATE.get(row.get("state"), "other") for row in rows)
    return {"trained": statuses["trained"] + statuses["failed"], "complete": statuses["trained"],
            "failed": statuses["failed"], "invalid": statuses["invalid"], "over_budget": statuses["over_budget"]}


def _counts_text(counts: Mapping[str, int], max_trials: Optional[int]) -> str:
    text = f"trained: {counts['trained']}" + (f" (max_trials {max_trials})" if max_trials is not None else "")
    for key, label in (("failed", "failed"), ("invalid", "invalid"), ("over_budget", "over budget")):
        if counts.get(key):
            text += f", {label}: {counts[key]}"
    return text


def no_trained_message(rows: Sequence[Mapping[str, Any]], max_trials: int, shown: int = 3) -> str:
    """One line for a search that produced no trained model: the counts and the first reasons."""
    counts = trial_counts(rows)
    reasons = [f"#{row.get('number')} {row.get('failure_reason')}" for row in rows if row.get("failure_reason")]
    text = f"no architecture completed training ({_counts_text(counts, max_trials)})"
    if reasons:
        text += "; reasons: " + "; ".join(r[:160] for r in reasons[:shown]) + ("; ..." if len(reasons) > shown else "")
    return text + "; all rows are in search_results.json. Fix the search space or the training settings and rerun."


def search_strategy_summary(strategy: str, output_dir: str) -> dict[str, Any]:
    """summary.json's ``search``: the strategy and, for ``supernet``, the proxies evaluated, the finalists and the
    compute in full-trial equivalents (from ``search_results.json``'s ``supernet`` entry)."""
    out: dict[str, Any] = {"strategy": strategy}
    path = os.path.join(output_dir, "search_results.json")
    if strategy == "supernet" and os.path.exists(path):
        with open(path) as fh:
            supernet = json.load(fh).get("supernet") or {}
        out.update({k: supernet.get(k) for k in ("proxies_evaluated", "finalists_trained", "space_size",
                                                  "compute_fte", "wall_s")})
    return out


def strategy_text(search: Optional[Mapping[str, Any]]) -> Optional[str]:
    """One summary line for the supernet strategy (None for the others, whose counts line says it all)."""
    if not search or search.get("strategy") != "supernet":
        return None
    total = (search.get("compute_fte") or {}).get("total")
    compute = f", compute {total:.1f} full-trial equivalents" if total is not None else ""
    return (f"  strategy: supernet: {search.get('proxies_evaluated')} sub-networks evaluated in the supernet (space "
            f"{search.get('space_size')}), {search.get('finalists_trained')} finalists trained on their own{compute}")


def majority_class_rate(dataset: Any) -> Optional[float]:
    """The share of the most frequent label in ``dataset`` (a ``labels`` column of class ids), or None."""
    if dataset is None or "labels" not in getattr(dataset, "column_names", ()):
        return None
    labels = [int(label) for label in dataset["labels"]]
    if not labels:
        return None
    return max(Counter(labels).values()) / len(labels)


def learned_nothing(scores: Sequence[Optional[float]], majority: Optional[float], tolerance: float = 1e-6) -> bool:
    """Whether every given score equals the majority-class rate (every model predicts the majority class)."""
    given = [s for s in scores if s is not None]
    return majority is not None and bool(given) and all(abs(float(s) - majority) <= tolerance for s in given)


def distillation_verdict(student: Optional[float], baseline: Optional[float]) -> Optional[str]:
    """One line comparing the distilled student with the same architecture trained on labels only (scores in
    [0, 1]); a warning, in words, when distillation did not beat the labels-only baseline. None without both."""
    if student is None or baseline is None:
        return None
    gain = 100 * (float(student) - float(baseline))
    if gain > 0:
        return f"  distillation: +{gain:.2f} points over the same architecture trained on labels only"
    return (f"  warning: distillation did not beat the labels-only baseline ({100 * float(student):.2f}% vs "
            f"{100 * float(baseline):.2f}%, {gain:+.2f} points): the labels-only model is as good or better here; "
            "try data.unlabeled_file or data.augmentation, or search temperature / kd_weight / flash_share")


def format_summary(summary: Mapping[str, Any], score_key: str, output_dir: str) -> str:
    """The text the CLI prints at the end of a run (``summary`` is what it writes to summary.json)."""
    teacher, student = summary["teacher"], summary["best_student"]
    baseline = summary.get("baseline_without_distillation")

    def line(name: str, m: Mapping[str, Any]) -> str:
        score = f"{100 * m[score_key]:.2f}%" if m.get(score_key) is not None else "n/a"
        return f"  {name:<28} {score:>9} {m['latency']:>9.2f} ms {(m.get('params') or 0) / 1e6:>8.2f}M"

    searched = (summary.get("deployment") or {}).get("latency_runtime")
    runtime = f" ({searched} latency, as searched)" if searched else ""
    lines = ["", "=== autodistill summary ===",
             f"  {'':<28} {score_key.replace('mlm_accuracy', 'mlm acc'):>9} {'latency':>12} {'params':>9}",
             line("teacher", teacher), line("best student (distilled)", student)]
    if baseline:
        lines.append(line("same arch, no distillation", baseline))
        verdict = distillation_verdict(student.get(score_key), baseline.get(score_key))
        if verdict:
            lines.append(verdict)
    majority = summary.get("majority_class_rate")
    scores = [m.get(score_key) for m in (teacher, student, baseline) if m]
    if learned_nothing(scores, majority):
        lines.append(f"  warning: all models predict the majority class ({100 * majority:.1f}%): nothing was learned")
    lines += [
        f"  speed-up vs teacher: {summary['speedup']:.1f}x{runtime}   "
        f"{_counts_text(summary['trials'], summary.get('max_trials'))}   "
        f"wall time: {summary['wall_time_s'] / 60:.1f} min",
        *([strategy_text(summary.get("search"))] if strategy_text(summary.get("search")) else []),
        f"  best architecture: {student['arch']}",
        f"  outputs: {output_dir}/ (search_results.json/.csv/.md, pareto_front.png, best_model/)",
    ]
    front = (summary.get("deployment") or {}).get("front_exports")
    if front is not None:
        lines.append(f"  Pareto-front students exported to ONNX: {len(front)}, each in <trial model dir>/onnx/ "
                     "(summary.json deployment.front_exports)")
    deployment = format_deployment(summary, score_key)
    return "\n".join(lines + ([deployment] if deployment else []))


def format_deployment(summary: Mapping[str, Any], score_key: str) -> str:
    """The deployment table: per model and runtime, score, latency, speed-up vs the teacher (same runtime), size.

    Empty when the summary has no deployment entries (``latency_by_runtime``)."""
    rows = deployment_rows(summary)
    if not rows:
        return ""
    section = summary.get("deployment") or {}
    header = "  deployment: latency per runtime"
    if section.get("latency_protocol"):
        header += f" ({section['latency_protocol']})"
    if section.get("latency_runtime"):
        header += f"; the search ranked students by {section['latency_runtime']} latency"

    def cell(value: Optional[float], spec: str, scale: float = 1.0) -> str:
        return "n/a" if value is None else spec.format(scale * value)

    lines = [header, f"  {'model':<28} {'runtime':<17} {score_key.replace('mlm_accuracy', 'mlm acc'):>9} "
                     f"{'latency':>12} {'speed-up':>9} {'size':>10}"]
    for row in rows:
        lines.append(f"  {row['model']:<28} {row['runtime']:<17} {cell(row['score'], '{:.2f}%', 100):>9} "
                     f"{cell(row['latency_ms'], '{:.2f} ms'):>12} {cell(row['speedup'], '{:.1f}x'):>9} "
                     f"{cell(row['size_mb'], '{:.1f} MB'):>10}")
    return "\n".join(lines)
