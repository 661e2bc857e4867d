"""`DistillationTrainer`: a drop-in `transformers.Trainer` that distils a teacher into the model it trains."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping

from torch import nn
from transformers import Trainer

from .builders import build_model
from .configs.distillation import FlashDistillationConfig, RegularDistillationConfig, parse_distillation
from .errors import ConfigError
from .schedule import StageResult, run_distillation
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
        metrics and callbacks (see :func:`autodistill_trainer.schedule.run_distillation` for how
        ``eval_strategy`` applies to stages). This trainer's own criterion captures nothing meanwhile. Returns
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
    ) -> dict[str, Any] | None:
        """Search student architectures (the design's ``Trainer.autodistillation``); return ``best_model_arch``.

        Needs ``self.autodistillation_config`` (``{'search': ..., 'flash_distillation': ...,
        'regular_distillation': ...}``, the design's formats).

        * OOB mode: ``model_cls`` (default: the class of this trainer's student) with the built-in builder
          (:meth:`model_builder_builtin`); the built-in ``train_func`` runs flash then regular
          distillation (:func:`~autodistill_trainer.schedule.run_distillation`) on this trainer's data
          and arguments and saves the trained student under ``output_dir/trials/<arch>``; the built-in
          ``eval_func`` returns this trainer's metrics on ``eval_dataset`` (``eval_`` prefix removed)
          while latency, params and FLOPs come from the profile measured right after building.
        * Advanced mode: your ``model_builder(arch)``, ``train_func(model)`` and ``eval_func(model)``.

        Under ``accelerate launch`` one process drives the study and broadcasts each architecture; all
        processes train it together. The :class:`~autodistill_trainer.search.AutoDistillation` agent is
        kept in ``self.autodistillation_agent`` (search_result, pareto_front, best_model_arch).
        """
        from .configs.distillation import parse_distillation
        from .schedule import run_distillation
        from .search import AutoDistillation

        config = getattr(self, "autodistillation_config", None)
        if not isinstance(config, Mapping):
            raise ConfigError(
                "set trainer.autodistillation_config = {'search': {...}, 'flash_distillation': {...}, "
                "'regular_distillation': {...}} before calling autodistillation()."
            )
        flash, regular = parse_distillation(config.get("flash_distillation"), config.get("regular_distillation"))
        if teacher_model is not self.teacher_model:
            teacher_model.eval().requires_grad_(False)
            teacher_model = self.accelerator.prepare_model(teacher_model, evaluation_mode=True)
        if model_builder is None:
            def model_builder(arch):
                return self.model_builder_builtin(arch, model_cls)

        def train_func_builtin(model: nn.Module) -> nn.Module:
            if flash is None and regular is None:
                raise ConfigError("autodistillation_config has neither flash_distillation nor regular_distillation.")
            trial_dir = os.path.join(self.args.output_dir, "trials", arch_slug({k: getattr(model.config, k, "na") for k in self._search_keys}))
            run_distillation(
                model, teacher_model, dataclasses.replace(self.args, output_dir=trial_dir), self.train_dataset,
                flash_distillation=flash, regular_distillation=regular,
                data_collator=self._base_collator(), processing_class=self.processing_class,
                teacher_cache=self.teacher_cache,
            )
            if self.is_world_process_zero():
                model.save_pretrained(os.path.join(trial_dir, "model"))
                if self.processing_class is not None:
                    self.processing_class.save_pretrained(os.path.join(trial_dir, "model"))
            return model

        def eval_func_builtin(model: nn.Module) -> dict[str, float]:
            if self.eval_dataset is None:
                raise ConfigError("the built-in eval_func needs the trainer's eval_dataset.")
            evaluator = Trainer(
                model=model, args=dataclasses.replace(self.args, report_to=[]), eval_dataset=self.eval_dataset,
                data_collator=self._base_collator(), compute_metrics=self.compute_metrics,
                preprocess_logits_for_metrics=self.preprocess_logits_for_metrics,
            )
            metrics = evaluator.evaluate()
            return {
                name: value for name, value in ((k.removeprefix("eval_"), v) for k, v in metrics.items())
                if isinstance(value, (int, float)) and name not in _EVALUATION_BOOKKEEPING
            }

        agent = AutoDistillation(
            model_builder, config, train_func=train_func or train_func_builtin, eval_func=eval_func or eval_func_builtin,
            profile_func=profile_func, output_dir=self.args.output_dir,
        )
        self._search_keys = list(agent.search_space)
        self.autodistillation_agent = agent
        return agent.search_loop()


#: Keys of `Trainer.evaluate()` that describe the evaluation run rather than the model.
_EVALUATION_BOOKKEEPING = {"runtime", "samples_per_second", "steps_per_second", "epoch", "model_preparation_time"}


def arch_slug(arch: Mapping[str, Any]) -> str:
    """A directory name for an architecture: its search-space values, ``hidden_size-128_...``."""
    return "_".join(f"{k}-{v}" for k, v in arch.items()) or "model"
