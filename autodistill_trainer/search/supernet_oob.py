"""The built-in (out-of-the-box) backend of the supernet strategy: a MobileBERT classifier supernet.

* supernet flash (with a ``flash_distillation``): :func:`~autodistill_trainer.supernet.flash.train_supernet_flash`,
  one stage per supernet layer, each saved when done under ``output_dir/supernet/flash`` (``flash.json``), so a rerun
  runs the blocks left; its sub-network steps count in the supernet's compute;
* supernet: :func:`~autodistill_trainer.supernet.training.train_supernet` (sandwich rule, regular distillation from
  the teacher, the teacher cache when there is one, read in the finalists' logit column so the teacher runs over the
  training set once) for ``search.supernet.train_steps`` steps under
  ``output_dir/supernet`` (Trainer checkpoints, resumed by a rerun); once complete it is saved in
  ``output_dir/supernet/model`` with ``supernet.json`` (steps, sub-network steps, wall seconds), and a rerun reuses it;
* proxies: :func:`~autodistill_trainer.supernet.extract.extract_subnet` then one pass over the first
  ``search.supernet.eval_samples`` validation examples with the trainer's ``compute_metrics``;
* costs: params and FLOPs exact (:func:`.latency_model.mobilebert_costs`); latency from the latency model, fitted
  first on ``latency_measurements`` extracted architectures (largest, smallest, random ones) measured with the
  search's profile function, refitted as finalists are measured;
* finalists: extracted, then regular distillation (``finalist_budget`` of its steps) through
  :func:`~autodistill_trainer.schedule.run_distillation` under ``output_dir/trials/<arch slug>_final``, saved in its
  ``model`` folder, evaluated on the whole validation set, latency measured.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time
from typing import Any, Callable, Mapping

import numpy as np
import torch
from transformers import EvalPrediction, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from ..configs import AutoDistillationConfig
from ..configs.search_supernet import check_supernet_flash
from ..errors import ConfigError
from ..fileio import atomic_write_json
from ..profiling import profile_model
from ..schedule import run_distillation, scale_steps
from .latency_model import ArchCostModel, LatencyModel, mobilebert_costs

logger = logging.getLogger(__name__)

__all__ = ["OOBSupernetBackend", "SUPERNET_STATE_FILENAME", "run_supernet_search"]

SUPERNET_STATE_FILENAME = "supernet.json"
FLASH_STATE_FILENAME = "flash.json"


class _Deadline(TrainerCallback):
    """Stop (and, with ``save``, checkpoint) the supernet's training once ``time.monotonic()`` passes ``deadline``;
    under ``torch.distributed`` every rank stops at the same step (the ranks' verdicts are max-reduced)."""

    def __init__(self, deadline: float | None, save: bool = True) -> None:
        self.deadline, self.save = deadline, save

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.deadline is None:
            return control
        late = torch.tensor([float(time.monotonic() >= self.deadline)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(late, op=torch.distributed.ReduceOp.MAX)
        if late.item() > 0:
            control.should_training_stop = True
            control.should_save = self.save
        return control


class OOBSupernetBackend:
    """A :class:`~.supernet_strategy.SupernetBackend` on an :class:`~.oob.OOBContext` (see the module docstring).

    Args:
        context: the trainer's arguments, data, collator, metrics and base student config.
        teacher: the teacher model.
        config: the validated AutoDistillation config (``search.strategy: supernet``).
        profile_func: measures a built model (``{"params", "flops", "latency"}``), the plain search's profile
            (default :func:`~autodistill_trainer.profiling.profile_model`).
        cost_model: an :class:`ArchCostModel` (default: one in memory on the context's base config).
        init_embeddings_from_teacher: initialise the supernet's embeddings from the teacher's.
    """

    def __init__(self, context: Any, teacher: torch.nn.Module, config: AutoDistillationConfig,
                 profile_func: Callable[[Any], Mapping[str, Any]] | None = None, cost_model: Any = None,
                 init_embeddings_from_teacher: bool = False) -> None:
        from ..supernet.space import ElasticSpace

        self.context, self.teacher, self.config = context, teacher, config
        self.search = config.search
        self.sn = config.search.supernet
        if context.student_config is None:
            raise ConfigError("search.strategy: supernet needs the student's base config (OOBContext.student_config).")
        self.space = ElasticSpace(context.student_config, self.search.search_space)
        if config.flash_distillation is not None:
            check_supernet_flash(config.flash_distillation)
        self.regular = config.regular_distillation
        self.profile_func = profile_func or profile_model
        self.cost_model = cost_model or ArchCostModel(context.student_config, LatencyModel("in-memory", None))
        self.init_embeddings = init_embeddings_from_teacher
        args = context.args
        self.trial_steps = int(self.regular.train_steps)
        batch = args.per_device_train_batch_size * max(1, args.world_size) * args.gradient_accumulation_steps
        self.trial_examples = self.trial_steps * batch
        self.directory = os.path.join(args.output_dir, "supernet")
        self.supernet: torch.nn.Module | None = None
        self._latency_ready = False
        self.latency_fit_s: float | None = None

    # ------------------------------------------------------------------------------------------ supernet

    def train_supernet(self, deadline: float | None) -> dict[str, Any] | None:
        """Reuse the saved supernet, or train it (flash stages first when configured, then the sandwich steps,
        resuming whatever a killed or time-cut run completed); None when ``deadline`` cut it."""
        from transformers import MobileBertForSequenceClassification

        from ..supernet.training import logits_mapping, train_supernet

        state_path = os.path.join(self.directory, SUPERNET_STATE_FILENAME)
        model_dir = os.path.join(self.directory, "model")
        if os.path.exists(state_path):
            with open(state_path) as fh:
                info = json.load(fh)
            self.supernet = MobileBertForSequenceClassification.from_pretrained(model_dir, attn_implementation="eager")
            logger.info("supernet reused from %s (%d steps)", model_dir, info["steps"])
            return info
        steps = self.sn.supernet_steps(self.regular.train_steps)
        args = self.context.args
        checkpoint = get_last_checkpoint(self.directory) if os.path.isdir(self.directory) else None
        flashed, flash_info = None, None
        if self.config.flash_distillation is not None:
            flash = self._flash(deadline, load_model=checkpoint is None)
            if flash is None:
                return None
            flashed, flash_info = flash
        lr = self.regular.learning_rate or args.learning_rate
        sn_args = dataclasses.replace(args, output_dir=self.directory, learning_rate=lr, save_strategy="steps",
                                      save_steps=max(1, steps // 10), save_total_limit=1)
        t0 = time.monotonic()
        if checkpoint is not None:
            logger.info("supernet training resumes from %s", checkpoint)
        result = train_supernet(
            self.space, self.teacher, sn_args, self.context.train_dataset, self.context.data_collator, steps=steps,
            num_random=self.sn.num_random, temperature=self.regular.temperature,
            inplace_distillation=self.sn.inplace_distillation, supernet=flashed,
            init_embeddings_from_teacher=self.init_embeddings and flash_info is None,
            teacher_cache=self.context.teacher_cache,
            teacher_logits=logits_mapping(self.teacher, self.regular.mappings()),
            callbacks=[*(self.context.callbacks or []), _Deadline(deadline)],
            processing_class=self.context.processing_class, resume_from_checkpoint=checkpoint,
        )
        self.supernet = result.supernet
        if result.steps < steps:
            logger.info("supernet training stopped at step %d of %d (time budget); a rerun resumes it", result.steps,
                        steps)
            return None
        info = {"steps": int(result.steps), "subnet_steps": int(result.subnet_steps),
                "wall_s": round(float(getattr(result, "wall_s", time.monotonic() - t0)), 3)}
        if flash_info is not None:  # flash sub-network steps count as student steps, like the sandwich's
            info["flash"] = flash_info
            info["subnet_steps"] += int(flash_info["subnet_steps"])
            info["wall_s"] = round(info["wall_s"] + float(flash_info["wall_s"]), 3)
        if args.process_index == 0:
            result.supernet.save_pretrained(model_dir)
            atomic_write_json(state_path, info)
        return info

    def _flash(self, deadline: float | None, load_model: bool) -> tuple[torch.nn.Module | None, dict] | None:
        """The supernet's flash stages, one per layer, each saved when done (``supernet/flash/model`` and
        ``flash.json``: blocks done, steps, sub-network steps, wall seconds), so a rerun runs only the blocks left.
        Returns (the flashed supernet, or None when ``load_model`` is false and every block is done; the state), or
        None when ``deadline`` cut a block."""
        from transformers import MobileBertForSequenceClassification

        from ..supernet.extract import build_supernet
        from ..supernet.flash import train_supernet_flash

        flash = self.config.flash_distillation
        args = self.context.args
        directory = os.path.join(self.directory, "flash")
        state_path, model_dir = os.path.join(directory, FLASH_STATE_FILENAME), os.path.join(directory, "model")
        state = {"blocks_done": [], "steps": 0, "subnet_steps": 0, "wall_s": 0.0}
        if os.path.exists(state_path):
            with open(state_path) as fh:
                state = json.load(fh)
        depth = int(self.space.largest().get("num_hidden_layers", self.space.base_config.num_hidden_layers))
        left = [block for block in range(depth) if block not in state["blocks_done"]]
        if not left and not load_model:
            return None, state
        if state["blocks_done"]:
            supernet = MobileBertForSequenceClassification.from_pretrained(model_dir, attn_implementation="eager")
            logger.info("supernet flash: blocks %s reused from %s", state["blocks_done"], model_dir)
        else:
            supernet = build_supernet(self.space, seed=args.seed)
        fl_args = dataclasses.replace(args, output_dir=directory, save_strategy="no",
                                      learning_rate=flash.learning_rate or args.learning_rate)
        for block in left:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            result = train_supernet_flash(
                self.space, self.teacher, fl_args, self.context.train_dataset, self.context.data_collator,
                steps_per_block=int(flash.train_steps), num_random=self.sn.num_random, blocks=[block],
                init_embeddings_from_teacher=self.init_embeddings, supernet=supernet,
                callbacks=[*(self.context.callbacks or []), _Deadline(deadline, save=False)],
                processing_class=self.context.processing_class)
            if result.steps < int(flash.train_steps):
                logger.info("supernet flash stopped in block %d (time budget); a rerun redoes that block", block)
                return None
            state = {"blocks_done": [*state["blocks_done"], block], "steps": state["steps"] + int(result.steps),
                     "subnet_steps": state["subnet_steps"] + int(result.subnet_steps),
                     "wall_s": round(float(state["wall_s"]) + float(result.wall_s), 3)}
            if args.process_index == 0:
                supernet.save_pretrained(model_dir)
                atomic_write_json(state_path, state)
        return supernet, state

    # ------------------------------------------------------------------------------------- candidates

    def validate(self, arch: Mapping[str, Any]) -> None:
        self.space.validate(arch)

    def _extract(self, arch: Mapping[str, Any]) -> torch.nn.Module:
        from ..supernet.extract import extract_subnet

        return extract_subnet(self.supernet, dict(arch), self.space)

    def _measure(self, arch: Mapping[str, Any], model: torch.nn.Module | None = None) -> dict[str, Any]:
        if self.profile_func is None:
            return {}
        profile = dict(self.profile_func(model if model is not None else self._extract(arch)))
        self.cost_model.observe(dict(arch), profile)
        return profile

    def prepare_proxies(self) -> None:
        """Fit the latency model before the first proxy (its wall time is ``latency_fit_s``)."""
        if not self._latency_ready:
            self._fit_latency()

    def _fit_latency(self) -> None:
        """Measure ``latency_measurements`` extracted archs (largest, smallest, then random) to fit the model."""
        self._latency_ready = True
        if self.profile_func is None:
            return
        rng = random.Random(self.search.seed)
        archs = [self.space.largest(), self.space.smallest()]
        seen = {json.dumps(a, sort_keys=True) for a in archs}
        for _ in range(50 * self.sn.latency_measurements):
            if len(archs) >= min(self.sn.latency_measurements, self.space.size):
                break
            arch = self.space.sample(rng)
            if json.dumps(arch, sort_keys=True) not in seen:
                seen.add(json.dumps(arch, sort_keys=True))
                archs.append(arch)
        t0 = time.monotonic()
        for arch in archs:
            self._measure(arch)
        self.latency_fit_s = round(time.monotonic() - t0, 3)
        logger.info("latency model fitted on %d measured sub-networks in %.1fs (largest relative error %s)",
                    len(archs), time.monotonic() - t0, self.cost_model.max_relative_error)

    def profile(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        """Exact params and FLOPs, predicted latency (measured when the latency model cannot predict yet)."""
        if not self._latency_ready:
            self._fit_latency()
        predicted = self.cost_model.predict(dict(arch)) or {}
        if predicted.get("latency") is None:
            return self._measure(arch) or dict(mobilebert_costs(self.space.sub_config(arch)))
        return {k: predicted[k] for k in ("params", "flops", "latency")}

    def _evaluate(self, model: torch.nn.Module, limit: int | None) -> tuple[dict[str, Any], int]:
        """``compute_metrics`` over the first ``limit`` validation examples (all: None), and how many."""
        dataset = self.context.eval_dataset
        n = len(dataset) if limit is None else min(limit, len(dataset))
        rows = [dataset[i] for i in range(n)]
        size = self.context.args.per_device_eval_batch_size
        model.eval()
        logits, labels = [], []
        with torch.inference_mode():
            for start in range(0, n, size):
                batch = self.context.data_collator(rows[start:start + size])
                batch = {k: v.to(model.device) if hasattr(v, "to") else v for k, v in batch.items()}
                labels.append(batch.pop("labels").cpu().numpy())
                out = model(**batch).logits
                if self.context.preprocess_logits_for_metrics is not None:
                    out = self.context.preprocess_logits_for_metrics(out, None)
                logits.append(out.float().cpu().numpy())
        prediction = EvalPrediction(predictions=np.concatenate(logits), label_ids=np.concatenate(labels))
        metrics = self.context.compute_metrics(prediction) if self.context.compute_metrics else {}
        return {k.removeprefix("eval_"): float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, n

    def proxy_evaluate(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        metrics, n = self._evaluate(self._extract(arch), self.sn.eval_samples)
        return {**metrics, "eval_examples": n}

    # -------------------------------------------------------------------------------------- finalists

    def train_finalist(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        model = self._extract(arch)
        _, regular = scale_steps(None, self.regular, self.sn.finalist_budget)
        args = self.context.args
        slug = "_".join(f"{k}-{v}" for k, v in arch.items())  # as oob.arch_slug (no import: oob imports this module)
        directory = os.path.join(args.output_dir, "trials", f"{slug}_final")
        run_distillation(model, self.teacher, dataclasses.replace(args, output_dir=directory),
                         self.context.train_dataset, flash_distillation=None, regular_distillation=regular,
                         data_collator=self.context.data_collator, processing_class=self.context.processing_class,
                         callbacks=self.context.callbacks, teacher_cache=self.context.teacher_cache,
                         log_label="finalist")
        model_dir = os.path.join(directory, "model")
        if args.process_index == 0:
            model.save_pretrained(model_dir)
            if self.context.processing_class is not None:
                self.context.processing_class.save_pretrained(model_dir)
        metrics, _ = self._evaluate(model, None)
        profile = self._measure(arch, model) if args.process_index == 0 else {}  # rank 0 records the trial
        return {"metrics": metrics, "profile": profile, "model_dir": model_dir,
                "train_steps": int(regular.train_steps)}


def run_supernet_search(context: Any, teacher: torch.nn.Module, config: AutoDistillationConfig,
                        train_func: Any = None, eval_func: Any = None,
                        profile_func: Callable[[Any], Mapping[str, Any]] | None = None, cost_model: Any = None,
                        init_embeddings_from_teacher: bool = False) -> tuple[Any, Any]:
    """``search.strategy: supernet`` with the built-in backend; returns ``(agent, result)`` like
    :func:`~.oob.run_autodistillation` (which calls it for that strategy).

    Raises:
        ConfigError: before any training, with a ``train_func`` or ``eval_func`` (the supernet strategy is
            out-of-the-box only), without an ``eval_dataset`` or ``compute_metrics``, or without a base config.
    """
    from .supernet_strategy import SupernetSearch

    if train_func is not None or eval_func is not None:
        raise ConfigError("search.strategy: supernet trains and evaluates its sub-networks itself (out-of-the-box "
                          "mode): remove train_func/eval_func, or use search.strategy: plain.")
    if context.eval_dataset is None or context.compute_metrics is None:
        raise ConfigError("search.strategy: supernet evaluates sub-networks on eval_dataset with compute_metrics: "
                          "pass both.")
    backend = OOBSupernetBackend(context, teacher, config, profile_func, cost_model, init_embeddings_from_teacher)
    agent = SupernetSearch(backend, config, output_dir=context.args.output_dir,
                           disable_tqdm=bool(context.args.disable_tqdm))
    agent.search_loop()
    return agent, agent.result()
