"""Out-of-the-box AutoDistillation: the built-in builder, train and eval functions around a Trainer's data.

``run_autodistillation(context, teacher_model, config)`` searches with:

* builder: ``model_cls`` (default ``context.student_cls``) built from ``context.student_config`` with the
  architecture's values set on it (:func:`~autodistill_trainer.builders.build_model`, eager attention);
* train: flash then regular distillation (:func:`~autodistill_trainer.schedule.run_distillation`) with the
  context's arguments and data, each trial under ``output_dir/trials/<arch slug>``; process 0 saves the
  student (plain Transformers model) and the processing class in ``output_dir/trials/<arch slug>/model``;
  with ``search.multi_fidelity``, a rung trains ``ceil(steps * budget)`` steps of every stage (flash and regular
  together, :func:`~autodistill_trainer.schedule.scale_steps`) under ``trials/<arch slug>_budget-<fraction>``;
  a promoted candidate is retrained from scratch at the higher budget (no continuation from lower-rung weights:
  the stages' learning-rate schedules span their own steps), and compute is counted as the sum of the fractions;
* eval: a plain :class:`transformers.Trainer` ``evaluate()`` on ``eval_dataset`` with ``compute_metrics``
  (``eval_`` prefix and run bookkeeping removed), plus ``model_dir`` (the saved student), which the search
  records in the trial's row. Latency, parameters and FLOPs come from the profile measured after building.

Any of the three can be replaced (advanced mode). Under ``accelerate launch``/``torchrun`` rank 0 drives the
study and broadcasts each architecture; every process builds and trains it together.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Mapping

from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from ..builders import build_model
from ..configs import AutoDistillationConfig
from ..configs.kd_knobs import check_knobs_apply, split_knobs
from ..errors import ConfigError
from ..schedule import run_distillation, scale_steps
from .evaluation import PROFILE_KEYS
from .loop import AutoDistillation
from .results import AutoDistillationResult
from .supernet_oob import run_supernet_search
from .tracking import SearchTracker, stage_losses

logger = logging.getLogger(__name__)

__all__ = ["OOBContext", "arch_slug", "rung_slug", "run_autodistillation"]

#: Keys of ``Trainer.evaluate()`` that describe the evaluation run rather than the model.
EVALUATION_BOOKKEEPING = {"runtime", "samples_per_second", "steps_per_second", "epoch", "model_preparation_time"}

#: Metrics ``Trainer.evaluate()`` reports without a ``compute_metrics`` (when the dataset has labels).
METRICS_WITHOUT_COMPUTE_METRICS = {"loss"}


def rung_slug(slug: str, budget: float) -> str:
    """The trial directory name of a multi-fidelity rung: ``<arch slug>`` at the full budget, else
    ``<arch slug>_budget-0.111`` (each rung keeps its own student)."""
    return slug if budget >= 1 else f"{slug}_budget-{budget:g}"


def arch_slug(arch: Mapping[str, Any]) -> str:
    """A directory name for an architecture: its search-space values, ``hidden_size-128_...``."""
    return "_".join(f"{k}-{v}" for k, v in arch.items()) or "model"


@dataclasses.dataclass
class OOBContext:
    """What the built-in functions need from a Trainer, without a Trainer (and a student) to host them.

    Args:
        args: training arguments of every trial (``output_dir`` holds the study, results and trials).
        train_dataset / eval_dataset: the distillation data and the data the search metrics are measured on.
        data_collator, processing_class, compute_metrics, preprocess_logits_for_metrics: as in ``Trainer``.
        teacher_cache: optional :class:`~autodistill_trainer.teacher_cache.TeacherOutputCache`.
        callbacks: extra ``TrainerCallback``s for every distillation stage.
        student_config: the base config the built-in builder sets each architecture on.
        student_cls: the student class of the built-in builder (``run_autodistillation``'s ``model_cls`` wins).
        labelled_fraction: ``data.labelled_fraction``: the labelled share of every distillation batch (or None).
    """

    args: TrainingArguments
    train_dataset: Any
    eval_dataset: Any = None
    data_collator: Callable | None = None
    processing_class: Any = None
    compute_metrics: Callable | None = None
    preprocess_logits_for_metrics: Callable | None = None
    teacher_cache: Any = None
    callbacks: list | None = None
    student_config: Any = None
    student_cls: type | None = None
    labelled_fraction: float | None = None

    @classmethod
    def from_trainer(cls, trainer: Trainer) -> "OOBContext":
        """The context of a (Distillation)Trainer: its arguments, data, collator (without a teacher-cache
        wrapper), processing class, metrics functions, teacher cache, and its student's config and class."""
        student = trainer.accelerator.unwrap_model(trainer.model)
        return cls(
            args=trainer.args,
            train_dataset=trainer.train_dataset,
            eval_dataset=trainer.eval_dataset,
            data_collator=getattr(trainer.data_collator, "base", trainer.data_collator),
            processing_class=trainer.processing_class,
            compute_metrics=trainer.compute_metrics,
            preprocess_logits_for_metrics=trainer.preprocess_logits_for_metrics,
            teacher_cache=getattr(trainer, "teacher_cache", None),
            callbacks=trainer.user_callbacks() if hasattr(trainer, "user_callbacks") else None,
            student_config=getattr(student, "config", None),
            student_cls=type(student),
            labelled_fraction=getattr(trainer, "labelled_fraction", None),
        )


def _check_before_training(context: OOBContext, config: AutoDistillationConfig, builtin_train: bool,
                           builtin_eval: bool) -> None:
    """Fail before any training when the built-in functions cannot produce what the search needs."""
    if builtin_train and config.flash_distillation is None and config.regular_distillation is None:
        raise ConfigError(
            "autodistillation_config has neither flash_distillation nor regular_distillation: the built-in "
            "train_func needs one of them (or pass train_func)."
        )
    if builtin_train:
        check_knobs_apply(config.search.search_space, config.flash_distillation, config.regular_distillation)
    if not builtin_eval:
        return
    measured = [m for m in config.search.metrics if m not in PROFILE_KEYS]
    if measured and context.eval_dataset is None:
        raise ConfigError(
            f"search.metrics {measured} are measured on eval_dataset, and none was given: pass eval_dataset "
            "(or eval_func)."
        )
    needs_compute = [m for m in measured if m not in METRICS_WITHOUT_COMPUTE_METRICS]
    if needs_compute and context.compute_metrics is None:
        raise ConfigError(
            f"search.metrics: metric {needs_compute[0]!r} needs the trainer's compute_metrics, and none was given: "
            f"pass compute_metrics=... returning {needs_compute} (or an eval_func, or measure only "
            f"{sorted(METRICS_WITHOUT_COMPUTE_METRICS | set(PROFILE_KEYS))})."
        )


def _trial_label(agent: AutoDistillation) -> str:
    """``trial <number>`` of the trial being trained (on the process that drives the study), else ``""``."""
    current = getattr(agent, "_current", None)  # the driver's proposal in progress (rank 0)
    return f"trial {current['trial'].number}" if current else ""


def run_autodistillation(
    context: OOBContext,
    teacher_model: nn.Module,
    config: AutoDistillationConfig | Mapping[str, Any],
    model_builder: Callable[[dict[str, Any]], Any] | None = None,
    model_cls: type | None = None,
    train_func: Callable[[Any], Any] | None = None,
    eval_func: Callable[[Any], Any] | None = None,
    profile_func: Callable[[Any], Mapping[str, Any]] | None = None,
    cost_model: Any = None,
) -> tuple[AutoDistillation, AutoDistillationResult]:
    """Search student architectures with the built-in functions where none is given; return the agent
    and its :class:`AutoDistillationResult` (``best_model_dir`` is the best trained student's directory).
    ``cost_model``: see :class:`AutoDistillation`.

    Raises:
        ConfigError: before any training, when the built-in functions cannot work (no distillation phase,
            no eval_dataset, metrics that need a missing ``compute_metrics``, no student config to build from).
    """
    config = AutoDistillationConfig.from_design(config)
    if config.search.strategy == "supernet":  # one supernet, proxies, finalists: see search/supernet_strategy.py
        return run_supernet_search(context, teacher_model, config, train_func, eval_func, profile_func, cost_model)
    args = context.args
    _check_before_training(context, config, train_func is None, eval_func is None)
    search_keys = list(config.search.search_space)
    current: dict[str, Any] = {}  # the arch built last (each process builds every arch it trains)
    losses_by_arch: dict[str, dict[str, float]] = {}  # stage losses of each trial, for the trackers
    tracker = SearchTracker(args)

    def trial_dir(budget: float = 1.0) -> str:
        return os.path.join(args.output_dir, "trials", rung_slug(arch_slug(current["arch"]), budget))

    if model_builder is None:
        cls = model_cls or context.student_cls
        if cls is None or context.student_config is None:
            raise ConfigError("the built-in model_builder needs OOBContext.student_config and a model_cls "
                              "(or pass model_builder).")

        def model_builder(arch: dict[str, Any]) -> nn.Module:
            return build_model(cls, context.student_config, dict(arch), attn_implementation="eager")

    user_builder = model_builder

    def recording_builder(arch: dict[str, Any]) -> Any:
        tracker.log_rows(agent.search_result, losses_by_arch, arch_slug)  # the trials that ended before this one
        current["arch"] = {k: arch[k] for k in search_keys}
        current.pop("model_dir", None)
        return user_builder(split_knobs(arch)[0])  # KD knobs go to the stages (train_func), not the builder

    def train_func_builtin(model: nn.Module, budget: float = 1.0) -> nn.Module:
        directory = trial_dir(budget)
        flash, regular = scale_steps(config.flash_distillation, config.regular_distillation, budget)
        stages = run_distillation(
            model, teacher_model, dataclasses.replace(args, output_dir=directory), context.train_dataset,
            flash_distillation=flash, regular_distillation=regular,
            data_collator=context.data_collator, processing_class=context.processing_class,
            callbacks=context.callbacks, teacher_cache=context.teacher_cache, kd_knobs=split_knobs(current["arch"])[1],
            log_label=_trial_label(agent), labelled_fraction=context.labelled_fraction,
        )
        losses_by_arch[arch_slug(current["arch"])] = stage_losses(stages)
        model_dir = os.path.join(directory, "model")
        if not hasattr(model, "save_pretrained"):
            logger.warning("the trained %s has no save_pretrained(): it is not saved", type(model).__name__)
            return model
        if args.process_index == 0:
            model.save_pretrained(model_dir)
            if context.processing_class is not None:
                context.processing_class.save_pretrained(model_dir)
        current["model_dir"] = model_dir
        return model

    def eval_func_builtin(model: nn.Module) -> dict[str, Any]:
        evaluator = Trainer(
            model=model, args=dataclasses.replace(args, report_to=[]), eval_dataset=context.eval_dataset,
            data_collator=context.data_collator, compute_metrics=context.compute_metrics,
            preprocess_logits_for_metrics=context.preprocess_logits_for_metrics,
        )
        evaluator.remove_callback(PrinterCallback)  # the search logs one line per trial with its metrics
        metrics: dict[str, Any] = {
            name: value for name, value in ((k.removeprefix("eval_"), v) for k, v in evaluator.evaluate().items())
            if isinstance(value, (int, float)) and name not in EVALUATION_BOOKKEEPING
        }
        if "model_dir" in current:
            metrics["model_dir"] = current["model_dir"]
        return metrics

    def eval_with_model_dir(model: Any) -> Any:
        metrics = eval_func(model)
        if isinstance(metrics, Mapping) and "model_dir" not in metrics and "model_dir" in current:
            metrics = {**metrics, "model_dir": current["model_dir"]}
        return metrics

    agent = AutoDistillation(
        recording_builder, config, train_func=train_func or train_func_builtin,
        eval_func=eval_func_builtin if eval_func is None else eval_with_model_dir, profile_func=profile_func,
        output_dir=args.output_dir, cost_model=cost_model, disable_tqdm=bool(args.disable_tqdm),
    )
    if tracker.active:  # a resumed study's earlier trials were reported by their own run
        tracker.reported.update(t.number for t in agent.study.get_trials(deepcopy=False) if t.state.is_finished())
    try:
        agent.search_loop()
        tracker.log_rows(agent.search_result, losses_by_arch, arch_slug)
    finally:
        tracker.close()
    return agent, agent.result()
