"""Reports of a search: results table (CSV + Markdown), Pareto plot (PNG) and a model card (README.md).

A result row (one trial, as ``AutoDistillation`` writes it) looks like::

    {"number": 0, "arch": {"num_hidden_layers": 6, ...}, "status": "trained", "state": "COMPLETE",
     "metrics": {"accuracy": 0.8, "latency": 2.1}, "params": 2_740_000, "flops": 123_000_000, "latency": 2.1,
     "duration_s": 95.0, "failure_reason": None, "worker": "host:1234"}

``metrics`` is None for rows that were never trained (``invalid``, ``over_budget``); their ``latency`` is the
profiled one. Latency is in milliseconds throughout. Plots are drawn on a ``matplotlib.figure.Figure`` with the Agg
canvas: no pyplot, no process-wide backend change.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import textwrap
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from .model_card import write_model_card
from .report_format import fmt_md as _fmt_md
from .run_dir import export_best_model
from .search import pareto_front

logger = logging.getLogger(__name__)

# write_model_card lives in .model_card and is re-exported here
__all__ = ["write_results_table", "front_numbers", "plot_pareto_front", "write_model_card", "write_search_reports"]

PathLike = Union[str, "os.PathLike[str]"]

_AXIS_LABELS = {"latency": "Latency (ms)", "accuracy": "Accuracy", "f1": "F1", "mlm_accuracy": "MLM accuracy",
                "params": "Parameters", "flops": "FLOPs"}
_PERCENT_METRICS = {"accuracy", "f1", "precision", "recall", "mlm_accuracy"}


# --------------------------------------------------------------------------------------------------- formatting


def _fmt_csv(value: Any) -> Any:
    """Machine-readable cell: floats to 6 significant digits, None empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def _flatten(rows: list[dict]) -> tuple[list[str], list[dict[str, Any]]]:
    """One flat dict per row and the column order: number, status, metrics, size, ``arch.<key>``, the rest.

    ``latency`` is the measured metric of trained rows and the profiled latency of the others.
    """
    metric_keys: list[str] = []
    arch_keys: list[str] = []
    for row in rows:
        metric_keys += [k for k in (row["metrics"] or {}) if k not in metric_keys]
        arch_keys += [k for k in row["arch"] if k not in arch_keys]
    if "latency" not in metric_keys and any(row.get("latency") is not None for row in rows):
        metric_keys.append("latency")
    flat_rows = []
    for row in rows:
        flat = {"number": row["number"], "status": row["status"], "fidelity": row.get("fidelity"),
                "params": row.get("params"), "flops": row.get("flops"), "duration_s": row.get("duration_s"),
                "worker": row.get("worker"),
                "failure_reason": row.get("failure_reason")}
        flat.update(row["metrics"] or {})
        if flat.get("latency") is None:
            flat["latency"] = row.get("latency")
        flat.update({f"arch.{k}": v for k, v in row["arch"].items()})
        flat_rows.append(flat)
    fidelity = ["fidelity"] if any(row.get("fidelity") for row in rows) else []  # supernet search: proxy | final
    columns = ["number", "status", *fidelity, *metric_keys, "params", "flops", *(f"arch.{k}" for k in arch_keys),
               "duration_s"]
    columns += [k for k in ("worker", "failure_reason") if any(flat.get(k) for flat in flat_rows)]
    return columns, flat_rows


# --------------------------------------------------------------------------------------------------- table


def write_results_table(rows: list[dict], output_dir: PathLike) -> tuple[Path, Path]:
    """Write ``search_results.csv`` and ``search_results.md`` (one line per trial, sorted by trial number).

    ``arch`` entries become ``arch.<key>`` columns and ``metrics`` entries their own columns (``accuracy``,
    ``latency`` in ms, ...). The CSV keeps 6 significant digits; the Markdown table is formatted for reading
    (params/FLOPs as 2.74M, accuracies to 4 decimals, ``arch.`` dropped from the headers).

    Returns:
        ``(csv_path, markdown_path)``.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: r["number"])
    columns, flat_rows = _flatten(rows)

    csv_path = output_dir / "search_results.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for flat in flat_rows:
            writer.writerow({c: _fmt_csv(flat.get(c)) for c in columns})

    md_path = output_dir / "search_results.md"
    headers = [c.removeprefix("arch.") for c in columns]
    headers = [h if headers.count(h) == 1 else c for h, c in zip(headers, columns)]
    headers = [f"{h} (ms)" if h == "latency" else h for h in headers]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if c in ("status", "fidelity", "worker", "failure_reason") else "---:"
                       for c in columns) + "|",
    ]
    for flat in flat_rows:
        lines.append("| " + " | ".join(_fmt_md(flat.get(c), c) for c in columns) + " |")
    trained = sum(1 for r in rows if r["status"] == "trained")
    finals = sum(1 for r in rows if r["status"] == "trained" and r.get("fidelity") == "final")
    detail = (f" ({trained - finals} with inherited supernet weights, {finals} finalists)" if "fidelity" in columns
              else "")
    lines += ["", f"{len(rows)} trials, {trained} trained{detail}. Latency in ms."]
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    logger.info("Wrote search results (%d rows) to %s and %s", len(rows), csv_path, md_path)
    return csv_path, md_path


# --------------------------------------------------------------------------------------------------- Pareto plot


def split_screened(rows: list[dict], proxy_examples: Optional[int] = None) -> tuple[list[dict], list[dict], str]:
    """(full-budget rows, screened rows, their legend label): a supernet search's finalists vs its proxies
    (inherited weights, scored on ``proxy_examples`` validation examples when given, predicted latency), a
    multi-fidelity search's top-rung rows vs its lower rungs."""
    def full(row: dict) -> bool:
        return row["fidelity"] == "final" if "fidelity" in row else row.get("budget", 1.0) >= 1

    if any(r.get("fidelity") == "proxy" for r in rows):
        scored = f"{proxy_examples} validation examples" if proxy_examples else "the validation set"
        label = f"proxies: inherited weights, scored on {scored}, predicted latency"
    else:
        label = "lower-rung trainings (part of the budget)"
    return [r for r in rows if full(r)], [r for r in rows if not full(r)], label


def _axis_label(metric: str) -> str:
    return _AXIS_LABELS.get(metric, metric.replace("_", " ").capitalize())


def _reference_point(ref: Optional[dict], x_metric: str, y_metric: str) -> Optional[tuple[float, float, str]]:
    """A teacher/baseline dict ``{x_metric: .., y_metric: .., "label": ..}`` as a point, or None."""
    if not ref:
        return None
    if ref.get(x_metric) is None or ref.get(y_metric) is None:
        logger.warning("Reference point %s lacks %s or %s; not plotted.", ref, x_metric, y_metric)
        return None
    return float(ref[x_metric]), float(ref[y_metric]), str(ref.get("label", ""))


def front_numbers(rows: list[dict], x_metric: str = "latency", y_metric: str = "accuracy") -> list[int]:
    """Trial numbers of the trained rows on the Pareto front of (``x_metric`` minimised, ``y_metric`` maximised)."""
    points = _plotted_points(rows, x_metric, y_metric)
    return [points[i][0] for i in pareto_front([(x, y) for _, x, y in points], [False, True])]


def _plotted_points(rows: list[dict], x_metric: str, y_metric: str) -> list[tuple[int, float, float]]:
    points = []
    for row in rows:
        m = row["metrics"] or {}
        if row["status"] == "trained" and m.get(x_metric) is not None and m.get(y_metric) is not None:
            points.append((row["number"], float(m[x_metric]), float(m[y_metric])))
    return points


def plot_pareto_front(
    rows: list[dict],
    output_path: PathLike,
    x_metric: str = "latency",
    y_metric: str = "accuracy",
    pareto_numbers: Optional[Iterable[int]] = None,
    teacher: Optional[dict] = None,
    baseline: Optional[dict] = None,
    selected: Optional[int] = None,
    x_label: Optional[str] = None,
    screened: Optional[list[dict]] = None,
    screened_label: str = "screened",
) -> Path:
    """Plot every trained trial (x: ``x_metric``, y: ``y_metric``) and its Pareto front; save a PNG.

    Args:
        rows: result rows (see the module docstring); only ``status == "trained"`` rows with both metrics are drawn.
        pareto_numbers: trial numbers on the front (the search's own front); default :func:`front_numbers`.
        teacher: ``{"latency": 18.6, "accuracy": 0.852, "label": "teacher (MiniLM-L6)"}``, drawn as a labelled star.
        baseline: the same for a student trained without distillation, drawn as a labelled diamond.
        selected: the trial number of the selected (exported) student, circled and labelled "selected".
        x_label: the x axis label (default from ``x_metric``), e.g. the latency's runtime and protocol.
        screened: rows the search only screened (a supernet search's proxies, a multi-fidelity search's lower
            rungs), drawn as small faint points behind the trials, never on the front; ``screened_label`` names them
            in the legend (with their count).

    Returns:
        The PNG path.
    """
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    points = _plotted_points(rows, x_metric, y_metric)
    front_ids = set(front_numbers(rows, x_metric, y_metric) if pareto_numbers is None else pareto_numbers)
    front = sorted((p for p in points if p[0] in front_ids), key=lambda p: (p[1], p[2]))
    others = [p for p in points if p[0] not in front_ids]

    fig = Figure(figsize=(10, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    background = _plotted_points(screened or [], x_metric, y_metric)
    if background:
        ax.scatter([p[1] for p in background], [p[2] for p in background], s=9, color="tab:purple", alpha=0.25,
                   linewidths=0, label=f"{screened_label} ({len(background)})", zorder=1)
    if others:
        ax.scatter([p[1] for p in others], [p[2] for p in others], s=30, color="tab:gray", alpha=0.6,
                   label=f"trials ({len(points)} trained)", zorder=2)
    if front:
        ax.step([p[1] for p in front], [p[2] for p in front], where="post", color="tab:blue", linewidth=1.5,
                alpha=0.8, zorder=3)
        ax.scatter([p[1] for p in front], [p[2] for p in front], s=60, color="tab:blue", edgecolor="black",
                   label=f"Pareto front ({len(front)})", zorder=4)
        for n, x, y in front:
            ax.annotate(f"#{n}", (x, y), textcoords="offset points", xytext=(5, -11), fontsize=8, color="tab:blue")
    references = []
    for ref, marker, color, default_label in ((teacher, "*", "tab:red", "teacher"),
                                              (baseline, "D", "tab:green", "baseline (no distillation)")):
        point = _reference_point(ref, x_metric, y_metric)
        if point is None:
            continue
        x, y, label = point
        references.append(y)
        ax.scatter([x], [y], marker=marker, s=220 if marker == "*" else 80, color=color, edgecolor="black",
                   label=label or default_label, zorder=5)
        is_teacher = marker == "*"  # the teacher is usually the slowest point: label it on its left
        ax.annotate(default_label.split(" ")[0], (x, y), textcoords="offset points",
                    xytext=(-9, 7) if is_teacher else (7, 7), ha="right" if is_teacher else "left",
                    fontsize=9, color=color)

    chosen = [p for p in points if p[0] == selected]
    for n, x, y in chosen:
        ax.scatter([x], [y], s=260, facecolors="none", edgecolors="tab:orange", linewidths=2.0,
                   label=f"selected student (#{n})", zorder=6)
    ax.set_xlabel(textwrap.fill(x_label or _axis_label(x_metric), 90))  # a long protocol wraps, never clipped
    ax.set_ylabel(_axis_label(y_metric))
    all_y = [p[2] for p in points] + references
    if y_metric in _PERCENT_METRICS and all_y and max(all_y) <= 1.0:
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_title(f"Architecture search: {_axis_label(y_metric).lower()} vs {_axis_label(x_metric).lower()}")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.08, y=0.1)
    handles, labels = ax.get_legend_handles_labels()
    if handles:  # beside the axes: inside, it hid points and the teacher/baseline labels (a screened cloud fills it)
        ax.legend(handles, [textwrap.fill(label, 34) for label in labels], loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  fontsize=8, borderaxespad=0.0)
    if not points:
        ax.text(0.5, 0.5, "no trained trials", transform=ax.transAxes, ha="center", va="center")
    fig.tight_layout()
    fig.savefig(output_path, format="png")
    logger.info("Wrote Pareto plot (%d trials, %d on the front, %d screened) to %s", len(points), len(front),
                len(background), output_path)
    return output_path


def write_search_reports(
    result: Any,
    output_dir: PathLike,
    *,
    teacher: Optional[dict] = None,
    base_model: Optional[str] = None,
    score_key: str = "accuracy",
    pipeline_tag: str = "text-classification",
) -> dict[str, Path]:
    """Write what the CLI writes for a search, from Python, in one call: ``search_results.csv``/``.md``,
    ``pareto_front.png`` and ``best_model/`` (the best trained student with a model card), all in ``output_dir``.

    Args:
        result: an :class:`~autodistill_trainer.search.AutoDistillationResult` (``trainer.autodistillation(...)``).
        teacher: the teacher's metrics (``score_key``, ``latency``, ``params``), drawn on the plot and compared in
            the card; None leaves them out.
        base_model: the teacher's source for the card's ``base_model`` (only a Hub id is written there).

    ``best_model/`` is written only when the result has a ``best_model_dir`` (the built-in train function saves every
    trained student; a custom one must return ``model_dir`` from its ``eval_func``), with finite weights, replacing
    only a ``best_model/`` this package wrote. Returns the paths written, by kind.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = write_results_table(result.rows, output_dir)
    selected = result.best_row["number"] if result.best_row else None
    full, screened, screened_label = split_screened(result.rows)
    written = {"csv": csv_path, "markdown": md_path, "plot": plot_pareto_front(
        full, output_dir / "pareto_front.png", y_metric=score_key, selected=selected, screened=screened,
        screened_label=screened_label,
        pareto_numbers=[row["number"] for row in result.pareto_front],
        teacher=teacher and {"latency": teacher.get("latency"), score_key: teacher.get(score_key), "label": "teacher"},
    )}
    if result.best_model_dir and result.best_row:
        best = result.best_row
        metrics = {**best["metrics"], "params": best.get("params"), "flops": best.get("flops")}
        written["best_model"] = Path(export_best_model(result.best_model_dir, str(output_dir), lambda staging: (
            write_model_card(staging, result.best_model_arch, metrics, teacher, {"best_trial": best["number"]},
                             base_model=base_model, pipeline_tag=pipeline_tag, score_key=score_key))))
    return written
