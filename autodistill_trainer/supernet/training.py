"""Supernet distillation as one ``transformers.Trainer`` run: the sandwich rule, teacher outputs from the cache.

:func:`train_supernet` wraps the supernet in a :class:`~.sandwich.SandwichModel` and trains it with
:class:`SupernetTrainer`, a ``Trainer`` subclass: checkpoints (``save_strategy``), ``resume_from_checkpoint``,
``accelerate launch`` (DDP: the sandwich is one forward and one backward per step, and the largest sub-network
reaches every weight, so no unused-parameter search is needed) and the console's stage-labelled bar work as for
any distillation stage. Each step's sub-networks come from :class:`~.sandwich.SandwichSampler` at the Trainer's
``global_step``, so a resumed run draws what the uninterrupted one would have drawn.

The teacher's logits come from the teacher-output cache when one is given (the same cached column as the regular
stage's logit mapping, so a plain search and a supernet on the same data share the file), else from the live
teacher (eval mode, no gradients). Gradient accumulation averages micro-batch losses (a plain Trainer's rule).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from typing import Any, Callable, Sequence

import torch
from torch import nn
from transformers import Trainer, TrainingArguments, default_data_collator

from ..console import label_stage_output
from ..criterion_setup import filter_model_inputs, model_input_names
from ..embedding_init import TeacherEmbeddingProjection
from ..embedding_init import init_embeddings_from_teacher as _init_embeddings
from ..guards import check_finite_parameters, requires_grad_restored
from ..mappings import LayerMapping, parse_layer_mapping
from ..teacher_cache import COLUMN_PREFIX, TeacherCacheCollator, teacher_column
from .extract import build_supernet
from .sandwich import SandwichModel, SandwichSampler
from .space import ElasticSpace

logger = logging.getLogger(__name__)

__all__ = ["LOGITS_MAPPING", "SupernetTrainResult", "SupernetTrainer", "logits_mapping", "train_supernet"]

#: The teacher feature the sandwich distils: the models' output logits.
LOGITS_MAPPING = parse_layer_mapping(("", "logits", "", "logits"))


def logits_mapping(teacher: nn.Module, mappings: Sequence[Any] = ()) -> LayerMapping:
    """The mapping whose teacher feature (and cached column) the sandwich reads as the teacher's logits.

    The first of ``mappings`` (e.g. the regular stage's, which the finalists train with) whose teacher feature *is*
    the logits: the whole model's ``logits``, or the output of the teacher's ``classifier`` module with no process
    (what every ``*ForSequenceClassification`` returns as its logits). So the supernet and its finalists read one
    cached column and the teacher runs over the training set once. :data:`LOGITS_MAPPING` when none is.
    """
    for raw in mappings:
        mapping = parse_layer_mapping(raw)
        whole = mapping.teacher_layer == "" and mapping.teacher_process == "logits"
        head = (mapping.teacher_layer == "classifier" and mapping.teacher_process in (None, "")
                and isinstance(getattr(teacher, "classifier", None), nn.Module))
        if whole or head:
            return mapping
    return LOGITS_MAPPING

#: Log names of the sub-networks' losses, by position in the step (the rest are averaged as ``loss_random``).
ROLE_NAMES = ("loss_largest", "loss_smallest")


@dataclasses.dataclass
class SupernetTrainResult:
    """``supernet``: the trained supernet (a plain ``MobileBertFor...``); ``steps``: optimizer steps done (a resumed
    run counts its earlier steps too); ``wall_s``: this call's wall time; ``subnet_steps``: sub-network
    forward/backward passes (``steps`` x sub-networks per step)."""

    supernet: nn.Module
    steps: int
    wall_s: float
    subnet_steps: int


class SupernetTrainer(Trainer):
    """A ``Trainer`` of a :class:`~.sandwich.SandwichModel`: each step trains ``sampler.archs_for_step(global_step)``.

    Args:
        model: the sandwich model.
        teacher_model: the teacher (prepared once for evaluation; not wrapped by DDP).
        sampler: the step's sub-networks.
        teacher_cache: optional :class:`~autodistill_trainer.teacher_cache.TeacherOutputCache`.
        teacher_logits: the mapping whose cached column holds the teacher's logits (:func:`logits_mapping`).
        Other arguments are those of ``transformers.Trainer``.
    """

    loss_is_scaled_for_ga = False  # compute_loss returns the micro-batch's mean: the Trainer divides by the steps

    def __init__(self, model: SandwichModel, args: TrainingArguments, *trainer_args: Any,
                 teacher_model: nn.Module, sampler: SandwichSampler, teacher_cache: Any = None,
                 teacher_logits: LayerMapping = LOGITS_MAPPING, **trainer_kwargs: Any) -> None:
        if args.ddp_find_unused_parameters is None:
            args = dataclasses.replace(args, ddp_find_unused_parameters=False)
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        self.teacher_model = self.accelerator.prepare_model(teacher_model, evaluation_mode=True)
        self.sampler = sampler
        self.teacher_cache = teacher_cache
        self.teacher_logits = teacher_logits
        self._cached_column: str | None = None
        self._teacher_cache_checked = False
        self._teacher_inputs = model_input_names(teacher_model)
        self._loss_sums: dict[str, torch.Tensor] = {}
        self._loss_count = 0

    # ------------------------------------------------------------------ data
    def get_train_dataloader(self):
        """``Trainer.get_train_dataloader``, reading the teacher's cached logits when a cache is given."""
        if self.teacher_cache is not None and not self._teacher_cache_checked:
            self._teacher_cache_checked = True
            self._use_teacher_cache()
        return super().get_train_dataloader()

    def _use_teacher_cache(self) -> None:
        column = teacher_column(self.teacher_logits)
        dataset = self.teacher_cache.dataset_for(self.train_dataset, [self.teacher_logits])
        if column not in getattr(dataset, "column_names", ()):
            return
        self.train_dataset = dataset
        self.data_collator = TeacherCacheCollator(self.data_collator or self.teacher_cache.data_collator
                                                  or default_data_collator)
        self._cached_column = column
        self._signature_columns = None
        logger.info("Supernet steps read the cached teacher logits (%s).", column)

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            supernet = self.accelerator.unwrap_model(self.model).supernet
            columns = [*inspect.signature(supernet.forward).parameters, "label", "label_ids", *self.label_names]
            cached = [self._cached_column] if self._cached_column else []
            self._signature_columns = list(dict.fromkeys([*columns, *cached]))

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None):
        cached = inputs.get(self._cached_column) if self._cached_column else None
        batch = {k: v for k, v in inputs.items() if not k.startswith(COLUMN_PREFIX)}
        targets = self.teacher_targets(self.accelerator.unwrap_model(model), batch, cached)
        outputs = model(archs=self.sampler.archs_for_step(self.state.global_step), **targets, **batch)
        if model.training:
            self._record(outputs.subnet_losses)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def teacher_targets(self, model: nn.Module, batch: dict[str, Any], cached: torch.Tensor | None) -> dict[str, Any]:
        """The teacher's outputs the model's forward takes besides the batch: ``teacher_logits`` (cached or live;
        None when ``kd_weight`` is 0)."""
        if model.kd_weight == 0:
            return {"teacher_logits": None}
        if cached is not None:
            return {"teacher_logits": cached.float()}
        with torch.no_grad():
            return {"teacher_logits": self.run_teacher(batch).logits.float()}

    def run_teacher(self, batch: dict[str, Any], **kwargs: Any) -> Any:
        """The teacher's output on the model inputs of ``batch`` (call under ``torch.no_grad``)."""
        return self.teacher_model(**filter_model_inputs(batch, self._teacher_inputs), **kwargs)

    # ------------------------------------------------------------------ logging and saving
    def _record(self, losses: torch.Tensor) -> None:
        values = {name: losses[i] for i, name in enumerate(ROLE_NAMES[: len(losses)])}
        if len(losses) > len(ROLE_NAMES):
            values["loss_random"] = losses[len(ROLE_NAMES):].mean()
        for name, value in values.items():
            self._loss_sums[name] = self._loss_sums.get(name, 0) + value.float()
        self._loss_count += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add each sub-network role's mean loss since the last log (averaged across processes)."""
        if "loss" in logs and self._loss_count:
            names = sorted(self._loss_sums)
            means = torch.stack([self._loss_sums[n] / self._loss_count for n in names])
            if self.accelerator.num_processes > 1:
                means = self.accelerator.reduce(means.to(self.accelerator.device), reduction="mean")
            logs.update({name: round(float(v), 6) for name, v in zip(names, means.tolist())})
            self._loss_sums, self._loss_count = {}, 0
        super().log(logs, start_time)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Checkpoints (``_internal_call``) save the sandwich's state dict; otherwise the plain supernet is saved
        with ``save_pretrained`` (loadable by ``AutoModelFor...``), with the processing class."""
        if _internal_call:
            return super().save_model(output_dir, _internal_call=True)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            self.accelerator.unwrap_model(self.model).supernet.save_pretrained(output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)


def train_supernet(
    space: ElasticSpace,
    teacher: nn.Module,
    args: TrainingArguments,
    train_dataset: Any,
    data_collator: Callable | None = None,
    *,
    steps: int,
    num_random: int = 2,
    temperature: float = 2.0,
    kd_weight: float = 1.0,
    inplace_distillation: str = "teacher",
    init_embeddings_from_teacher: bool = True,
    teacher_cache: Any = None,
    teacher_logits: LayerMapping = LOGITS_MAPPING,
    callbacks: Sequence[Any] = (),
    supernet: nn.Module | None = None,
    embedding_projection: TeacherEmbeddingProjection | None = None,
    processing_class: Any = None,
    resume_from_checkpoint: str | bool | None = None,
    log_label: str = "supernet",
) -> SupernetTrainResult:
    """Distil ``teacher`` into the supernet of ``space`` for ``steps`` sandwich steps (see the module docstring).

    Args:
        space: the elastic space; the supernet is ``build_supernet(space, seed=args.seed)`` unless ``supernet`` is
            given (e.g. to continue training one).
        teacher: the teacher (its ``requires_grad`` flags and train mode are restored afterwards).
        args: the Trainer's arguments; ``max_steps`` becomes ``steps``, evaluation is off (sub-networks are
            evaluated by extracting them), ``seed`` also seeds the sandwich's draws.
        train_dataset, data_collator, processing_class, callbacks: as for ``Trainer``.
        steps: optimizer steps; each trains ``2 + num_random`` sub-networks.
        num_random, temperature, kd_weight, inplace_distillation: see :mod:`.sandwich`.
        init_embeddings_from_teacher: initialise the supernet's word embeddings from the teacher's (PCA to the
            student's embedding width, :mod:`~autodistill_trainer.embedding_init`), as the plain students are;
            ``embedding_projection`` reuses a projection already computed for this teacher.
        teacher_cache: optional teacher-output cache (the teacher's logits are then read, not recomputed).
        teacher_logits: the mapping whose cached column holds the teacher's logits; pass the finalists' one
            (:func:`logits_mapping`) so both read the same column.
        resume_from_checkpoint: as ``Trainer.train`` (a checkpoint path, or True for the last one in
            ``args.output_dir``).
        log_label: the progress bar's (or, with ``disable_tqdm``, the log lines') label.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}.")
    supernet = build_supernet(space, seed=args.seed) if supernet is None else supernet
    if init_embeddings_from_teacher:
        _init_embeddings(supernet, embedding_projection or TeacherEmbeddingProjection(teacher))
    sandwich = SandwichModel(supernet, space, temperature=temperature, kd_weight=kd_weight,
                             inplace_distillation=inplace_distillation)
    sampler = SandwichSampler(space, num_random, seed=args.seed)
    run_args = dataclasses.replace(args, max_steps=steps, eval_strategy="no", load_best_model_at_end=False)
    trainer = SupernetTrainer(model=sandwich, args=run_args, train_dataset=train_dataset, data_collator=data_collator,
                              processing_class=processing_class, callbacks=list(callbacks), teacher_model=teacher,
                              sampler=sampler, teacher_cache=teacher_cache, teacher_logits=teacher_logits)
    label_stage_output(trainer, log_label)
    start = time.perf_counter()
    teacher_was_training = teacher.training
    try:
        with requires_grad_restored(teacher):
            teacher.eval().requires_grad_(False)
            output = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    finally:
        teacher.train(teacher_was_training)
    check_finite_parameters(supernet)
    wall = time.perf_counter() - start
    logger.info("Supernet trained: %d steps of %d sub-networks, loss %.4f in %.1fs", output.global_step,
                2 + num_random, output.training_loss, wall)
    return SupernetTrainResult(supernet=supernet, steps=output.global_step, wall_s=wall,
                               subnet_steps=output.global_step * (2 + num_random))

