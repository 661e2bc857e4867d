"""`DistillationTrainer`: a drop-in `transformers.Trainer` that distils a teacher into the model it trains."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from torch import nn

from .builders import build_model
from .configs import AutoDistillationConfig
from .configs.distillation import FlashDistillationConfig, RegularDistillationConfig, parse_distillation
from .errors import ConfigError
from .schedule import StageResult, run_distillation
from .search.oob import OOBContext, run_autodistillation
from .stage_trainer import StageTrainer

logger = logging.getLogger(__name__)


class DistillationTrainer(StageTrainer):
    """A `transformers.Trainer` whose loss distils `teacher_model` into `model`; see
    :class:`~autodistill_trainer.stage_trainer.StageTrainer` for the loss, accumulation, logging and what is
    restored after ``train()``.

    Adds :meth:`distill` (flash then regular distillation, as a schedule of stages) and :meth:`autodistillation`
    (the architecture search).
    """

    # ------------------------------------------------------------------ schedules
    def distill(
        self,
        flash_distillation: Mapping[str, Any] | FlashDistillationConfig | None = None,
        regular_distillation: Mapping[str, Any] | RegularDistillationConfig | None = None,
    ) -> list[StageResult]:
        """Run flash distillation (block by block) then regular distillation on this trainer's student.

        The configs are parsed here, once (any form of :func:`~autodistill_trainer.configs.parse_distillation`).
        Each stage is a fresh :class:`~autodistill_trainer.stage_trainer.StageTrainer` with its own criterion,
        optimizer and scheduler, using this trainer's teacher, arguments, datasets, collator, processing class,
        metrics, callbacks and ``labelled_fraction`` (see :func:`autodistill_trainer.schedule.run_distillation` for
        how ``eval_strategy`` applies to stages). This trainer's own criterion captures nothing meanwhile. Returns
        one :class:`~autodistill_trainer.schedule.StageResult` per stage (losses, steps, time).
        """
        flash, regular = parse_distillation(flash_distillation, regular_distillation)
        student = self.accelerator.unwrap_model(self.model)
        self._detach_matchers()
        with self.criterion.suspended():
            return run_distillation(
                student, self.teacher_model, self.args, self.train_dataset,
                flash_distillation=flash, regular_distillation=regular, **self.stage_kwargs(),
            )

    def stage_kwargs(self) -> dict[str, Any]:
        """What the stages of :func:`~autodistill_trainer.schedule.run_distillation` take from this trainer."""
        return {
            "data_collator": self._base_collator(),
            "processing_class": self.processing_class,
            "teacher_cache": self.teacher_cache,
            "callbacks": self.user_callbacks(),
            "eval_dataset": self.eval_dataset,
            "compute_metrics": self.compute_metrics,
            "preprocess_logits_for_metrics": self.preprocess_logits_for_metrics,
            "labelled_fraction": getattr(self, "labelled_fraction", None),
        }

    # ------------------------------------------------------------------ search
    def model_builder_builtin(self, model_arch_paras: Mapping[str, Any], model_cls: Any = None) -> nn.Module:
        """Build a student of `model_cls` (default: this trainer's student class) from this trainer's
        student config with the architecture values `model_arch_paras` set on it (eager attention).

        Raises :class:`~autodistill_trainer.errors.InvalidArchitectureError` for architectures that
        cannot work (e.g. heads that do not divide the attention width).
        """
        base = self.accelerator.unwrap_model(self.model)
        return build_model(model_cls or type(base), base.config, dict(model_arch_paras), attn_implementation="eager")

    def autodistillation(
        self,
        teacher_model: nn.Module,
        model_builder: Any = None,
        model_cls: Any = None,
        train_func: Any = None,
        eval_func: Any = None,
        profile_func: Any = None,
    ) -> Any:
        """Search student architectures (the design's ``Trainer.autodistillation``); return the
        :class:`~autodistill_trainer.search.AutoDistillationResult` (best arch, best student's directory,
        Pareto front, rows, failure reasons).

        Needs ``self.autodistillation_config`` (the design's ``{'search': ..., 'flash_distillation': ...,
        'regular_distillation': ...}`` or an :class:`~autodistill_trainer.configs.AutoDistillationConfig`).
        OOB mode uses this trainer's arguments, data, collator, ``compute_metrics`` and student class/config
        (see :mod:`autodistill_trainer.search.oob`); advanced mode takes your ``model_builder(arch)``,
        ``train_func(model)``, ``eval_func(model)``. Under ``accelerate launch`` rank 0 drives the study and
        broadcasts each architecture; all processes train it together. The
        :class:`~autodistill_trainer.search.AutoDistillation` agent is kept in ``self.autodistillation_agent``.
        """
        config = getattr(self, "autodistillation_config", None)
        if config is None:
            raise ConfigError(
                "set trainer.autodistillation_config = {'search': {...}, 'flash_distillation': {...}, "
                "'regular_distillation': {...}} before calling autodistillation()."
            )
        agent, result = run_autodistillation(
            OOBContext.from_trainer(self), teacher_model, AutoDistillationConfig.from_design(config),
            model_builder=model_builder, model_cls=model_cls, train_func=train_func, eval_func=eval_func,
            profile_func=profile_func,
        )
        self.autodistillation_agent = agent
        return result
