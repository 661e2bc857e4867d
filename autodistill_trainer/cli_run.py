"""The CLI's :func:`run`: a loaded recipe run in numbered steps that call the library, like Transformers'
``run_glue.py`` main. No process-wide settings here: :func:`autodistill_trainer.cli.main` makes those."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist
import transformers
from torch.utils.data import DataLoader
from transformers import Trainer, set_seed

from .builders import apply_architecture, build_model, student_base_config
from .configs.autodistillation import AutoDistillationConfig
from .embedding_init import TeacherEmbeddingProjection, init_embeddings_from_teacher
from .weight_selection import (
    SelectionSource,
    check_teacher_for_selection,
    student_initialisation,
    try_select_teacher_weights,
)
from .errors import ConfigError
from .cli_summary import (
    format_summary, majority_class_rate, no_trained_message, pick_metrics, search_strategy_summary, trial_counts,
)
from .data import tokenize_dataset
from .data.unlabeled import distillation_train_data, load_unlabeled_texts
from .console import label_stage_output
from .deploy.front import export_front
from .deploy.runtimes import DeploymentPlan, fingerprint_with_runtime, plan_deployment, runtime_profile_func
from .deploy.summary import LatencyProtocol, add_speedups, measure_deployment
from .metrics import build_compute_metrics, build_preprocess_logits_for_metrics
from .recipe import Recipe
from .report import plot_pareto_front, split_screened, write_model_card, write_results_table
from .guards import teacher_in_dtype
from .schedule import plan_stages
from .search import AutoDistillationResult
from .search.latency_model import ArchCostModel
from .search.oob import OOBContext, run_autodistillation
from .search.supernet_oob import run_supernet_search
from .run_dir import (
    NonFiniteModelError, OutputDirError, OutputDirLock, atomic_write_json, check_output_dir, claim_output_dir,
    commit_output_dir, export_best_model, run_fingerprint,
)
from .tasks import TeacherSetup, get_task
from .teacher import load_tokenizer
from .teacher_cache import TeacherOutputCache

logger = logging.getLogger("autodistill_trainer.cli")

__all__ = ["run"]


def run(recipe: Recipe) -> int:
    """Run a loaded recipe: output directory, data, teacher, students, search, baseline, reports."""
    start = time.time()
    config = recipe.autodistillation
    task = get_task(recipe.data.task)
    data, teacher_args, evaluation = recipe.data, recipe.teacher, recipe.evaluation
    deployment = plan_deployment(evaluation.latency_runtime, evaluation.export_onnx)  # ConfigError before any work
    training = recipe.training
    if not torch.cuda.is_available() and not training.use_cpu:
        # Without use_cpu, accelerate runs CPU processes without DDP: ranks would drift apart.
        training = dataclasses.replace(training, use_cpu=True)
    output_dir, is_main = training.output_dir, training.process_index == 0
    cache_dir = data.cache_dir or os.path.join(output_dir, "cache")  # tokenized splits, teacher outputs

    # 1. Output directory: checked, locked and bound to this run's inputs before anything heavy is loaded.
    fingerprint = fingerprint_with_runtime(run_fingerprint(data, teacher_args, config.search, recipe.model),
                                           deployment.latency_runtime)
    with _claimed_output_dir(output_dir, fingerprint, is_main):
        set_seed(training.seed)

        # 2. Data, the teacher's tokenizer, tokenized data (cached in cache_dir).
        with training.main_process_first(desc="loading data"):
            raw, label_names = task.load_data(data, training.seed)
            if data.unlabeled_file:  # KD terms only (label -100): never in the validation split or the baseline
                raw["unlabeled"] = load_unlabeled_texts(data.unlabeled_file, data.text_column, data.text_pair_column)
        for split, limit in (("train", data.max_train_samples), ("validation", data.max_eval_samples)):
            if limit:
                raw[split] = raw[split].select(range(min(limit, len(raw[split]))))
        teacher_source = teacher_args.model_name_or_path or teacher_args.pretrained_encoder
        tokenizer = load_tokenizer(teacher_source, trust_remote_code=teacher_args.trust_remote_code)
        with training.main_process_first(desc="tokenizing"):
            tokenized = tokenize_dataset(raw, tokenizer, data.max_length, cache_dir=cache_dir)
        collator = task.build_collator(tokenizer)
        compute_metrics = build_compute_metrics(evaluation.metrics,
                                                trust_remote_code=evaluation.trust_remote_code)
        preprocess_logits = build_preprocess_logits_for_metrics(evaluation.metrics)  # MLM: argmax ids, not logits
        protocol = LatencyProtocol(
            evaluation.latency_batch_size, evaluation.latency_seq_length or data.max_length,
            evaluation.latency_num_threads, evaluation.latency_warmup, evaluation.latency_repeats,
            evaluation.latency_estimator, evaluation.latency_rounds)
        profile = runtime_profile_func(deployment.latency_runtime, **protocol.timing())

        def deploy(model: torch.nn.Module, metrics: dict[str, Any], onnx_dir: Optional[str] = None) -> dict[str, Any]:
            """The model's deployment entry (score, latency, size per runtime) on the validation set."""
            return measure_deployment(
                model, deployment.runtimes, lambda: _validation_batches(tokenized["validation"], collator, training),
                protocol, task.score_key, compute_metrics, preprocess_logits, pytorch_metrics=metrics,
                onnx_dir=onnx_dir)

        # 3. Teacher: loaded, or fine-tuned once (cached in output_dir/teacher); evaluated and profiled.
        teacher, teacher_metrics = task.load_teacher(teacher_args, TeacherSetup(
            label_names, tokenized["train"], tokenized["validation"], output_dir, collator, tokenizer, compute_metrics))
        if teacher_metrics is None:
            teacher_metrics = _evaluate(teacher, training, tokenized["validation"], collator, compute_metrics,
                                        preprocess_logits)
        teacher.eval()
        teacher_metrics.update(profile(teacher))
        logger.info("Teacher: %s", pick_metrics(teacher_metrics, task.score_key))
        teacher_deployment = deploy(teacher, teacher_metrics) if is_main else None  # as loaded, before any dtype
        if is_main:  # inputs validated, teacher ready: bind the directory for good, replace the resolved recipe
            commit_output_dir(output_dir)
            atomic_write_json(os.path.join(output_dir, "recipe.resolved.json"), recipe.raw)

        # 4. Students: one base config (the recipe's overrides on the built-in MobileBERT one) + each architecture.
        base_config = student_base_config(recipe.model, data, vocab_size=len(tokenizer),
                                          pad_token_id=tokenizer.pad_token_id, label_names=label_names)
        model_cls = getattr(transformers, recipe.model.student_class)
        projection = TeacherEmbeddingProjection(teacher) if recipe.model.init_embeddings_from_teacher else None
        select = recipe.model.select_teacher_weights
        if select:
            check_teacher_for_selection(base_config, teacher, set(config.search.search_space))
        # as loaded: not the copy in teacher.dtype (e.g. fp16) made for distillation below; rewired on first use
        weights_source = SelectionSource(teacher, recipe.model.selection_order, tokenized["train"], collator)

        def model_builder(arch: dict[str, Any]) -> torch.nn.Module:
            student = build_model(model_cls, base_config, arch, seed=training.seed, attn_implementation="eager")
            if select and try_select_teacher_weights(student, weights_source.get()):
                return student
            if projection is not None:
                init_embeddings_from_teacher(student, projection)
            return student

        teacher = teacher_in_dtype(teacher, teacher_args.dtype)  # for distillation; measured above as loaded
        teacher_cache = None
        if teacher_args.cache_outputs and task.caches_teacher_outputs:
            teacher_cache = TeacherOutputCache(
                teacher, cache_dir, collator, max_bytes=teacher_args.cache_max_gb * 1e9,
                batch_size=training.per_device_eval_batch_size, main_process_first=training.main_process_first,
                disable_tqdm=bool(training.disable_tqdm),
            )
        elif teacher_args.cache_outputs:
            logger.info("teacher.cache_outputs does not apply to the %s task.", task.name)

        # 5. Search: each trial builds, profiles, distils (flash then regular) and evaluates a student, on the train
        # split plus unlabelled rows (data.unlabeled_file, data.augmentation) for the KD terms.
        with training.main_process_first(desc="distillation data"):
            distill_train = distillation_train_data(raw, tokenized, data, tokenizer, teacher,
                                                    cache_dir=cache_dir)
        cost_model = None  # MobileBERT students: costs known before building, latency learnt (latency_model.json)
        if recipe.model.student_class == "MobileBertForSequenceClassification":
            cost_model = ArchCostModel.for_output_dir(base_config, output_dir, dataclasses.asdict(protocol),
                                                      deployment.latency_runtime, protocol.batch_size,
                                                      protocol.seq_length)
        result = _search(config, training, teacher, model_builder, profile, {**tokenized, "train": distill_train},
                         collator, tokenizer, compute_metrics, preprocess_logits, teacher_cache, cost_model,
                         (base_config, model_cls, recipe.model.init_embeddings_from_teacher),
                         labelled_fraction=data.labelled_fraction)
        if result.best_model_arch is None:
            if is_main:
                max_trials = None if config.search.strategy == "supernet" else config.search.max_trials
                print(f"error: {no_trained_message(result.rows, max_trials)}", file=sys.stderr)
            return _finish_distributed(1)

        # 6. Baseline: the best architecture trained on labels only, as long as the distillation ran (all ranks).
        baseline_metrics, baseline_model = None, None
        if recipe.baseline.enabled:
            baseline_model, baseline_metrics = _train_baseline(
                recipe, config, training, model_builder, result.best_model_arch, teacher, tokenized, collator,
                compute_metrics, preprocess_logits)
        if not is_main:
            return _finish_distributed(0)

        # 7. Reports and the exported best model (finite weights only; only our own files are replaced).
        best_row, score_key = result.best_row, task.score_key
        student_metrics = {**best_row["metrics"], "params": best_row.get("params"), "flops": best_row.get("flops")}
        deployed = {"teacher": teacher_deployment, "best_student": None,
                    "baseline_without_distillation": baseline_model and deploy(baseline_model, baseline_metrics)}
        if baseline_metrics is not None:  # same architecture: params and FLOPs; its own latency, in the search runtime
            baseline_metrics.update({k: student_metrics.get(k) for k in ("params", "flops")})
            baseline_metrics["latency"] = deployed["baseline_without_distillation"]["latency_by_runtime"][
                deployment.latency_runtime]
        write_results_table(result.rows, output_dir)
        supernet = config.search.supernet
        proxy_examples = supernet and min(supernet.eval_samples or 0, len(tokenized["validation"]))
        full_rows, screened, screened_label = split_screened(result.rows, proxy_examples)  # faint, off the front
        plot_pareto_front(
            full_rows, os.path.join(output_dir, "pareto_front.png"),
            pareto_numbers=[p["number"] for p in result.pareto_front], y_metric=score_key, selected=best_row["number"],
            x_label=f"Latency (ms): {protocol.describe(deployment.latency_runtime)}", screened=screened,
            screened_label=screened_label,
            teacher={"latency": teacher_metrics["latency"], score_key: teacher_metrics.get(score_key),
                     "label": "teacher"},
            baseline=baseline_metrics and {"latency": baseline_metrics["latency"], score_key:
                                           baseline_metrics.get(score_key), "label": "best arch, no distillation"},
        )
        majority = majority_class_rate(tokenized["validation"]) if score_key == "accuracy" else None
        counts = trial_counts(full_rows)
        card = {
            "algorithm": config.search.search_algorithm, "n_trials": counts["trained"], "completed": counts["complete"],
            "objectives": dict(zip(config.search.metrics, config.search.directions)), "recipe": recipe.path,
            "dataset": data.dataset_name or data.train_file, "best_trial": best_row["number"],
            "distillation": " + ".join(name for name, phase in (("flash", config.flash_distillation),
                                                                ("regular", config.regular_distillation)) if phase),
            "initialisation": student_initialisation(
                recipe.model, apply_architecture(base_config, result.best_model_arch), teacher.config),
            "latency_protocol": protocol.describe(deployment.latency_runtime),
            "baseline_without_distillation": baseline_metrics and pick_metrics(baseline_metrics, score_key),
        }

        def finish(staging: str) -> None:  # in best_model/'s staging directory: the manifest lists these files
            student = model_cls.from_pretrained(result.best_model_dir)
            onnx_dir = os.path.join(staging, "onnx") if deployment.export_onnx else None
            deployed["best_student"] = deploy(student, student_metrics, onnx_dir)
            add_speedups(deployed)
            write_model_card(staging, result.best_model_arch, student_metrics, teacher_metrics, card,
                             base_model=teacher_source, model_id=os.path.join(output_dir, "best_model"),
                             pipeline_tag=task.pipeline_tag, majority_class_rate=majority,
                             deployment={**_deployment_section(deployment, protocol, deployed), "models": deployed},
                             license=recipe.model.license, dataset=data.dataset_name,
                             dataset_config=data.dataset_config_name, score_key=score_key,
                             training_hyperparameters=_hyperparameters(training, config))

        try:
            best_dir = export_best_model(result.best_model_dir, output_dir, finish)
        except NonFiniteModelError as error:
            print(f"error: the best model (trial #{best_row['number']}, {result.best_model_dir}) was not exported: "
                  f"{error}; lower the learning rate or temperature and rerun.", file=sys.stderr)
            return _finish_distributed(1)
        summary = {
            "teacher": pick_metrics(teacher_metrics), "best_student": {"arch": result.best_model_arch,
                                                                       **pick_metrics(student_metrics)},
            "baseline_without_distillation": baseline_metrics and pick_metrics(baseline_metrics),
            "speedup": teacher_metrics["latency"] / student_metrics["latency"], "trials": counts,
            "max_trials": None if config.search.strategy == "supernet" else config.search.max_trials,
            "majority_class_rate": majority,
            "wall_time_s": time.time() - start, "best_model": best_dir,
            "deployment": _deployment_section(deployment, protocol, deployed),
            "search": search_strategy_summary(config.search.strategy, output_dir),
        }
        if deployment.export_front:  # evaluation.export_onnx: front: each Pareto-front student, beside its model
            summary["deployment"]["front_exports"] = export_front(
                result.pareto_front, model_cls.from_pretrained,
                lambda: _validation_batches(tokenized["validation"], collator, training), protocol, score_key,
                deployment.runtimes, compute_metrics, preprocess_logits)
        for name, entry in deployed.items():
            if summary.get(name) is not None and entry is not None:
                summary[name].update(entry)
        atomic_write_json(os.path.join(output_dir, "summary.json"), summary)
        print(format_summary(summary, score_key, output_dir))
        return _finish_distributed(0)


@contextlib.contextmanager
def _claimed_output_dir(output_dir: str, fingerprint: dict[str, Any], is_main: bool) -> Iterator[None]:
    """Check, lock and claim ``output_dir`` on the main process; every process raises its error alike."""
    lock = OutputDirLock(output_dir)
    try:  # released on any exit, Ctrl-C while claiming included
        error = None
        if is_main:
            try:
                check_output_dir(output_dir)
                lock.acquire()
                claim_output_dir(output_dir, fingerprint)
            except ConfigError as exc:
                error = str(exc)
            except OSError as exc:  # unwritable, full disk, ...: one line
                error = (f"output_dir {output_dir!r} cannot be written ({exc.strerror or exc}): give a writable "
                         "directory.")
        error = _broadcast(error)
        if error is not None:
            raise OutputDirError(error)
        yield
    finally:
        lock.release()


def _hyperparameters(training: Any, config: AutoDistillationConfig) -> dict[str, Any]:
    """The model card's training hyperparameters: the trials' Trainer settings and the distillation phases'."""
    flash, regular = config.flash_distillation, config.regular_distillation
    found = {"learning_rate": training.learning_rate, "train_batch_size": training.per_device_train_batch_size,
             "optimizer": getattr(training.optim, "value", training.optim),
             "lr_scheduler_type": getattr(training.lr_scheduler_type, "value", training.lr_scheduler_type),
             "seed": training.seed}
    if flash is not None:
        found.update({"flash_distillation_steps": flash.train_steps, "flash_distillation_learning_rate":
                      flash.learning_rate, "flash_distillation_temperature": flash.temperature})
    if regular is not None:
        found.update({"regular_distillation_steps": regular.train_steps, "regular_distillation_learning_rate":
                      regular.learning_rate, "regular_distillation_temperature": regular.temperature})
    return found


def _validation_batches(dataset: Any, collator: Any, training: Any) -> Iterator[Any]:
    """The validation set in evaluation batches, for the deployment checks (same batches for every runtime)."""
    return iter(DataLoader(dataset, batch_size=training.per_device_eval_batch_size, collate_fn=collator))


def _deployment_section(plan: DeploymentPlan, protocol: LatencyProtocol,
                        deployed: dict[str, Optional[dict[str, Any]]]) -> dict[str, Any]:
    """summary.json's ``deployment``: the search's latency runtime, the protocol, the runtimes, the export time."""
    student = deployed.get("best_student") or {}
    return {"latency_runtime": plan.latency_runtime, "runtimes": list(plan.runtimes),
            "latency_protocol": protocol.text(), "onnx_exported": plan.export_onnx,
            "export_s": student.get("export_s")}


def _evaluate(model: Any, training: Any, dataset: Any, collator: Any, compute_metrics: Any,
              preprocess_logits: Any) -> dict[str, Any]:
    evaluator = Trainer(model=model, args=dataclasses.replace(training, report_to=[]), eval_dataset=dataset,
                        data_collator=collator, compute_metrics=compute_metrics,
                        preprocess_logits_for_metrics=preprocess_logits)
    return {k.removeprefix("eval_"): v for k, v in evaluator.evaluate().items()}


def _search(config: AutoDistillationConfig, training: Any, teacher: Any, model_builder: Callable,
            profile: Callable, tokenized: Any, collator: Any, tokenizer: Any, compute_metrics: Any,
            preprocess_logits: Any, teacher_cache: Any, cost_model: Any = None,
            student: tuple[Any, type, bool] | None = None,
            labelled_fraction: Optional[float] = None) -> AutoDistillationResult:
    """Run the OOB search on the recipe's data: built-in flash + regular distillation and evaluation (``student``:
    base config, class and embedding initialisation, which the supernet strategy builds its supernet from;
    ``labelled_fraction``: ``data.labelled_fraction``)."""
    base_config, student_cls, init_embeddings = student or (None, None, False)
    context = OOBContext(
        args=training, train_dataset=tokenized["train"], eval_dataset=tokenized["validation"],
        data_collator=collator, processing_class=tokenizer, compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess_logits, teacher_cache=teacher_cache,
        student_config=base_config, student_cls=student_cls, labelled_fraction=labelled_fraction,
    )
    if config.search.strategy == "supernet":
        _, result = run_supernet_search(context, teacher, config, profile_func=profile, cost_model=cost_model,
                                        init_embeddings_from_teacher=init_embeddings)
        return result
    _, result = run_autodistillation(context, teacher, config, model_builder=model_builder, profile_func=profile,
                                     cost_model=cost_model)
    return result


def _train_baseline(recipe: Recipe, config: AutoDistillationConfig, training: Any, model_builder: Callable,
                    arch: dict[str, Any], teacher: Any, tokenized: Any, collator: Any, compute_metrics: Any,
                    preprocess_logits: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train ``arch`` on labels only (plain Trainer) for as many steps as the distillation took; the model is kept
    in ``output_dir/baseline/model``. Returns (model, its metrics)."""
    flash, regular = config.flash_distillation, config.regular_distillation
    model = model_builder(arch)
    steps = recipe.baseline.train_steps
    if steps is None:
        steps = sum(stage.steps for stage in plan_stages(flash, regular, model, teacher))
    lr = regular.learning_rate if regular and regular.learning_rate else training.learning_rate
    args = dataclasses.replace(training, max_steps=steps, learning_rate=lr,
                               output_dir=os.path.join(training.output_dir, "baseline"), eval_strategy="no")
    logger.info("Baseline: training the best architecture on labels only for %d steps", steps)
    baseline = Trainer(model=model, args=args, train_dataset=tokenized["train"], eval_dataset=tokenized["validation"],
                       data_collator=collator, compute_metrics=compute_metrics,
                       preprocess_logits_for_metrics=preprocess_logits)
    label_stage_output(baseline, "baseline (labels only)")  # a labelled bar, no end-of-training dict
    baseline.train()
    metrics = {k.removeprefix("eval_"): v for k, v in baseline.evaluate().items()}
    metrics["train_steps"] = steps
    baseline.save_model(os.path.join(args.output_dir, "model"))
    return model, metrics


def _broadcast(value: Any) -> Any:
    """Rank 0's value on every rank (identity outside distributed runs)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def _finish_distributed(status: int) -> int:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return status
