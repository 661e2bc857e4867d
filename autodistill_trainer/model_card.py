"""The model card (``README.md`` of ``best_model/``): metadata built with ``huggingface_hub``'s ``ModelCardData``,
results, deployment per runtime, architecture, how it was found, training hyperparameters, framework versions."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from huggingface_hub import ModelCard

from .card_metadata import build_card_data, framework_versions, hub_model_id, table_metrics
from .deploy.summary import deployment_card_lines
from .report_format import fmt_md as _fmt_md

logger = logging.getLogger(__name__)

__all__ = ["write_model_card"]

PathLike = Union[str, "os.PathLike[str]"]


def _metric_row(name: str, *values: Any) -> str:
    label = "latency (ms)" if name == "latency" else name
    column = "params" if name in ("params", "flops") else name
    return f"| {label} | " + " | ".join(_fmt_md(v, column) for v in values) + " |"


def _plain(value: Any) -> str:
    """A summary value as text: mappings as ``k: v, ...``, sequences comma-separated."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_fmt_md(v) if isinstance(v, float) else v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def write_model_card(
    output_dir: PathLike,
    arch: dict,
    metrics: dict,
    teacher_metrics: Optional[dict],
    search_summary: dict,
    base_model: Optional[str],
    model_id: Optional[str] = None,
    pipeline_tag: str = "text-classification",
    majority_class_rate: Optional[float] = None,
    deployment: Optional[dict] = None,
    license: Optional[str] = None,
    dataset: Optional[str] = None,
    dataset_config: Optional[str] = None,
    score_key: str = "accuracy",
    training_hyperparameters: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write ``README.md`` (a Hugging Face model card) for the distilled student in ``output_dir``.

    Args:
        arch: the student's architecture parameters (e.g. ``num_hidden_layers``, ``hidden_size``...).
        metrics: the student's metrics: ``accuracy`` (fraction), ``latency`` (ms), ``params``, optionally ``f1``,
            ``flops``...
        teacher_metrics: the same for the teacher, or None.
        search_summary: how it was found, e.g. ``{"algorithm": "BO", "n_trials": 20, "completed": 18,
            "objectives": {"accuracy": "maximize", "latency": "minimize"}, "recipe": "recipes/demo.yaml",
            "dataset": "rotten_tomatoes_demo", "distillation": "flash + regular"}``; other keys are listed as well.
        base_model: the teacher's source (Hub id, path or ``offline:`` name); the ``base_model`` metadata holds it
            only when it is a Hub id (see :func:`~autodistill_trainer.card_metadata.hub_model_id`).
        model_id: the id or path to show in the usage snippet (default: ``output_dir``).
        pipeline_tag: ``"text-classification"`` (a classifier) or ``"fill-mask"`` (a pretraining student: its
            ``*ForPreTraining`` checkpoint loads with ``AutoModelForMaskedLM``); sets the metadata and the snippet.
        majority_class_rate: the share of the validation set's most frequent class; when student and teacher both
            score exactly that accuracy, the card says nothing was learned instead of an "accuracy retained" ratio.
        deployment: the run's deployment section (``latency_runtime``, ``latency_protocol``, ``onnx_exported``) with
            ``models``: the deployment entries of ``teacher``, ``best_student`` and ``baseline_without_distillation``
            (see :mod:`autodistill_trainer.deploy.summary`); adds a "Deployment" section (score, latency, speed-up
            vs the teacher in the same runtime, size on disk, per runtime) and the ONNX usage.
        license, dataset, dataset_config: metadata (``license``, ``datasets``, the ``model-index`` data set);
            ``score_key`` (``metrics[score_key]``) is the ``model-index`` result on the validation split.
        training_hyperparameters: listed under "Training hyperparameters" (e.g. learning rate, steps, temperature).

    The metadata is built with ``huggingface_hub``'s ``ModelCardData`` (see :mod:`autodistill_trainer.card_metadata`)
    and the card written with ``ModelCard.save``. Tables hold numeric model metrics only (no evaluation bookkeeping
    such as runtime, samples/s or epoch); a ``baseline_without_distillation`` entry of ``search_summary`` becomes a
    column of the results table.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model_ref = model_id or str(output_dir)

    search_summary = dict(search_summary)
    baseline = table_metrics(search_summary.pop("baseline_without_distillation", None))
    metrics, teacher_metrics = table_metrics(metrics), table_metrics(teacher_metrics)
    data = build_card_data(pipeline_tag, model_name=Path(model_ref).name or "autodistill-student",
                           base_model=base_model, license=license, dataset=dataset, dataset_config=dataset_config,
                           score_key=score_key, score=metrics.get(score_key))
    teacher_name = hub_model_id(base_model) or base_model
    lines = ["# Distilled MobileBERT student", ""]
    lines.append(
        "A MobileBERT-style student found by a multi-objective architecture search and trained by knowledge "
        "distillation" + (f" from `{teacher_name}`" if teacher_name else "") + " with "
        "autodistill-trainer (a Hugging Face `Trainer` extension)."
    )

    lines += ["", "## Results", ""]
    names = list(metrics) + [k for k in teacher_metrics if k not in metrics]
    if baseline:
        lines += ["| metric | student | teacher | same arch, no distillation |", "|---|---:|---:|---:|"]
        lines += [_metric_row(n, metrics.get(n), teacher_metrics.get(n), baseline.get(n)) for n in names]
    else:
        lines += ["| metric | student | teacher |", "|---|---:|---:|"]
        lines += [_metric_row(n, metrics.get(n), teacher_metrics.get(n)) for n in names]
    s_lat, t_lat = metrics.get("latency"), teacher_metrics.get("latency")
    notes = []
    if s_lat and t_lat:
        notes.append(f"- Speed-up over the teacher: **{float(t_lat) / float(s_lat):.1f}x** (latency ratio).")
    if metrics.get("params") and teacher_metrics.get("params"):
        notes.append(f"- Size: {float(metrics['params']) / float(teacher_metrics['params']):.1%} of the teacher's "
                     "parameters.")
    if majority_class_rate is not None and all(
            m.get("accuracy") is not None and abs(float(m["accuracy"]) - majority_class_rate) <= 1e-6
            for m in (metrics, teacher_metrics)):
        notes.append(f"- **All models predict the majority class ({majority_class_rate:.1%}): nothing was learned.** "
                     "Train longer, or check the data and labels.")
    elif metrics.get("accuracy") is not None and teacher_metrics.get("accuracy"):
        notes.append(f"- Accuracy retained: {float(metrics['accuracy']) / float(teacher_metrics['accuracy']):.1%} "
                     "of the teacher's.")
    if notes:
        lines += [""] + notes
    if search_summary.get("latency_protocol"):
        lines += ["", f"Latency protocol: {search_summary['latency_protocol']}."]

    lines += deployment_card_lines(deployment)

    lines += ["", "## Architecture", "", "| parameter | value |", "|---|---:|"]
    lines += [f"| {k} | {_fmt_md(v)} |" for k, v in arch.items()]

    lines += ["", "## How it was found", ""]
    described = {
        "algorithm": "Search algorithm",
        "n_trials": "Trials",
        "completed": "Completed trials",
        "objectives": "Objectives",
        "recipe": "Recipe",
        "dataset": "Data set",
        "distillation": "Distillation",
        "best_trial": "Selected trial",
    }
    for key, title in described.items():
        if search_summary.get(key) is not None:
            value = _plain(search_summary[key])
            lines.append(f"- {title}: {'`' + value + '`' if key == 'recipe' else value}")
    for key, value in search_summary.items():
        if key not in described and key != "latency_protocol" and value is not None:
            lines.append(f"- {key.replace('_', ' ')}: {_plain(value)}")
    if training_hyperparameters:
        lines += ["", "## Training hyperparameters", ""]
        lines += [f"- {k}: {_plain(v)}" for k, v in training_hyperparameters.items() if v is not None]
    lines += ["", "## Framework versions", ""] + [f"- {k} {v}" for k, v in framework_versions().items()]

    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        *([f'fill_mask = pipeline("fill-mask", model="{model_ref}")',
           'print(fill_mask(f"The movie was {fill_mask.tokenizer.mask_token}."))'] if pipeline_tag == "fill-mask" else
          [f'classifier = pipeline("text-classification", model="{model_ref}")',
           'print(classifier("A gripping, beautifully acted film."))']),
        "```",
        "",
    ]
    path = output_dir / "README.md"
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).save(path)
    logger.info("Wrote model card to %s", path)
    return path
