#!/usr/bin/env python
"""Search and distil small, fast students from a teacher, as a recipe says.

    accelerate launch run_autodistill.py recipes/rotten_tomatoes_demo.yaml [--key value ...]
    python run_autodistill.py recipes/smoke.yaml --max_trials 2 --output_dir /tmp/smoke

Any recipe value can be overridden: ``--section.key value`` (``--auto_distillation.search.max_trials 3``)
or ``--key value`` when the key names one field (``--max_trials 3``, ``--learning_rate 1e-3``).
Sections are parsed into dataclasses (see ``autodistill_trainer/config.py``) with HfArgumentParser,
TrainingArguments included. Outputs, in ``output_dir``: ``search_results.json``, ``search_results.csv``
and ``.md``, ``pareto_front.png``, ``summary.json`` and ``best_model/`` (a plain Transformers model
with its tokenizer and model card).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

logger = logging.getLogger("run_autodistill")


def _keep_freed_memory() -> None:
    """Ask glibc to keep freed heap memory instead of returning it to the kernel after every step.

    With its default dynamic thresholds, glibc trims the heap top after each training step and page-faults
    it back in on the next (thousands of minor faults per distillation step; see bench/README.md).
    Process-wide, so done here in the CLI, never in the library.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: 1 GiB
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: 32 MiB
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2

    # 1. Recipe and arguments: validated before anything is loaded.
    from autodistill_trainer.recipe import load_recipe
    from autodistill_trainer.errors import ConfigError

    try:
        recipe = load_recipe(argv[0], argv[1:])
        return run(recipe)
    except ConfigError as error:  # bad input found while loading data or models: no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2


def run(recipe) -> int:
    """Run a validated recipe: data, teacher, search, baseline, reports."""
    start = time.time()
    _keep_freed_memory()

    import torch
    import transformers
    from transformers import DataCollatorForLanguageModeling, DataCollatorWithPadding, Trainer, set_seed

    from autodistill_trainer import DistillationTrainer
    from autodistill_trainer.builders import build_model, default_mobilebert_base_config, init_embeddings_from_teacher
    from autodistill_trainer.data import load_pretraining_data, load_text_classification_data, tokenize_dataset
    from autodistill_trainer.metrics import build_compute_metrics, build_preprocess_logits_for_metrics
    from autodistill_trainer.profiling import profile_model
    from autodistill_trainer.report import plot_pareto_front, write_model_card, write_results_table
    from autodistill_trainer.teacher import finetune_teacher, load_pretraining_teacher, load_teacher, load_tokenizer
    from autodistill_trainer.teacher_cache import TeacherOutputCache

    training = recipe.training
    if not torch.cuda.is_available() and not training.use_cpu:
        # Without use_cpu, accelerate runs CPU processes without DDP: ranks would drift apart.
        training = dataclasses.replace(training, use_cpu=True)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
        level=logging.INFO if training.should_log else logging.WARNING,
    )
    transformers.utils.logging.set_verbosity_warning()
    output_dir = training.output_dir
    os.makedirs(output_dir, exist_ok=True)
    set_seed(training.seed)
    if training.process_index == 0:
        with open(os.path.join(output_dir, "recipe.resolved.json"), "w") as f:
            json.dump(recipe.raw, f, indent=2, default=str)

    # 2. Data: labelled texts, or (data.task: pretraining) next-sentence pairs of a corpus' consecutive lines.
    data, teacher_args, evaluation = recipe.data, recipe.teacher, recipe.evaluation
    pretraining = data.task == "pretraining"
    score_key = "mlm_accuracy" if pretraining else "accuracy"
    with training.main_process_first(desc="loading data"):
        if pretraining:
            raw = load_pretraining_data(
                dataset_name=data.dataset_name, dataset_config_name=data.dataset_config_name, train_file=data.train_file,
                validation_file=data.validation_file, text_column=data.text_column,
                validation_split_size=data.validation_split_size, seed=training.seed,
            )
            label_names = None
        else:
            raw, label_names = load_text_classification_data(
                dataset_name=data.dataset_name, dataset_config_name=data.dataset_config_name,
                train_file=data.train_file, validation_file=data.validation_file, text_column=data.text_column,
                text_pair_column=data.text_pair_column, label_column=data.label_column,
                validation_split_size=data.validation_split_size, seed=training.seed,
            )
    if data.max_train_samples:
        raw["train"] = raw["train"].select(range(min(data.max_train_samples, len(raw["train"]))))
    if data.max_eval_samples:
        raw["validation"] = raw["validation"].select(range(min(data.max_eval_samples, len(raw["validation"]))))

    # 3. Tokenizer (the teacher's) and tokenized data, cached in output_dir.
    teacher_source = teacher_args.model_name_or_path or teacher_args.pretrained_encoder
    tokenizer = load_tokenizer(teacher_source, trust_remote_code=teacher_args.trust_remote_code)
    with training.main_process_first(desc="tokenizing"):
        tokenized = tokenize_dataset(raw, tokenizer, data.max_length, cache_dir=os.path.join(output_dir, "cache"))
    if pretraining:  # masks 15% of the tokens (labels: the originals, -100 elsewhere), keeps next_sentence_label
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    else:
        collator = DataCollatorWithPadding(tokenizer)
    compute_metrics = build_compute_metrics(evaluation.metrics)
    preprocess_logits = build_preprocess_logits_for_metrics(evaluation.metrics)  # MLM: argmax ids, not logits
    seq_length = evaluation.latency_seq_length or data.max_length

    def profile(model):
        return profile_model(
            model, batch_size=evaluation.latency_batch_size, seq_length=seq_length,
            num_threads=evaluation.latency_num_threads, warmup=evaluation.latency_warmup, repeats=evaluation.latency_repeats,
        )

    # 4. Teacher: a fine-tuned model, or an encoder fine-tuned once and cached in output_dir/teacher;
    #    for pretraining, a pretrained model with its MLM + next-sentence heads.
    if pretraining:
        teacher = load_pretraining_teacher(teacher_args.model_name_or_path, teacher_args.trust_remote_code)
        teacher_metrics = None
    elif teacher_args.model_name_or_path:
        teacher = load_teacher(teacher_args.model_name_or_path, label_names, teacher_args.trust_remote_code)
        teacher_metrics = None
    else:
        teacher, teacher_metrics = finetune_teacher(
            teacher_args.pretrained_encoder, label_names, tokenized["train"], tokenized["validation"], output_dir,
            teacher_args.finetune, collator, tokenizer, compute_metrics,
            fingerprint=f"{tokenized['train']._fingerprint}-{tokenized['validation']._fingerprint}",
            trust_remote_code=teacher_args.trust_remote_code,
        )
    if teacher_metrics is None:
        evaluator = Trainer(model=teacher, args=dataclasses.replace(training, report_to=[]), eval_dataset=tokenized["validation"],
                            data_collator=collator, compute_metrics=compute_metrics,
                            preprocess_logits_for_metrics=preprocess_logits)
        teacher_metrics = {k.removeprefix("eval_"): v for k, v in evaluator.evaluate().items()}
    teacher.eval()
    teacher_metrics.update(profile(teacher))
    logger.info("Teacher: %s", {k: teacher_metrics[k] for k in (score_key, "latency", "params") if k in teacher_metrics})

    # 5. Students: the base config (recipe overrides on the built-in MobileBERT one) + each architecture.
    model_cls = getattr(transformers, recipe.model.student_class)
    base_overrides = recipe.model.base_config if isinstance(recipe.model.base_config, dict) else {}
    num_labels = len(label_names) if label_names else 2  # pretraining: the 2 next-sentence classes
    if isinstance(recipe.model.base_config, str):
        base_config = transformers.AutoConfig.from_pretrained(recipe.model.base_config)
        base_config.num_labels = num_labels
    else:
        base_config = default_mobilebert_base_config(
            num_labels=num_labels, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id or 0,
            max_position_embeddings=max(512, data.max_length), **base_overrides,
        )
    if label_names:
        base_config.id2label = dict(enumerate(label_names))
        base_config.label2id = {n: i for i, n in enumerate(label_names)}

    def model_builder(arch):
        student = build_model(model_cls, base_config, arch, seed=training.seed, attn_implementation="eager")
        if recipe.model.init_embeddings_from_teacher:
            init_embeddings_from_teacher(student, teacher)
        return student

    teacher_cache = None
    if teacher_args.cache_outputs and pretraining:
        logger.info("teacher.cache_outputs is off for pretraining: the collator masks tokens anew for every batch.")
    elif teacher_args.cache_outputs:
        teacher_cache = TeacherOutputCache(
            teacher, os.path.join(output_dir, "cache"), collator, max_bytes=teacher_args.cache_max_gb * 1e9,
            batch_size=training.per_device_eval_batch_size, main_process_first=training.main_process_first,
        )
    trainer = DistillationTrainer(
        model=model_cls(base_config), teacher_model=teacher, args=training, train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"], data_collator=collator, processing_class=tokenizer,
        compute_metrics=compute_metrics, teacher_dtype=teacher_args.dtype, teacher_cache=teacher_cache,
        preprocess_logits_for_metrics=preprocess_logits,
        # This trainer only drives the search (each stage builds its own criterion); its default criterion
        # compares `logits`, which *ForPreTraining models name `prediction_logits`.
        criterion={"layer_mappings": [("", "prediction_logits", "", "prediction_logits")], "loss_types": ["KL"]}
        if pretraining else None,
    )
    trainer.autodistillation_config = recipe.autodistillation_config

    # 6. Search: each trial builds, profiles, distils (flash then regular) and evaluates a student.
    best_arch = _broadcast(trainer.autodistillation(teacher, model_builder=model_builder, profile_func=profile).best_model_arch)
    agent = trainer.autodistillation_agent
    if best_arch is None:
        if training.process_index == 0:
            print("error: no architecture completed; see search_results.json for the failure reasons.", file=sys.stderr)
        _finish_distributed()
        return 1

    # 7. Baseline: the best architecture trained on labels only, as long as the distillation ran (all ranks).
    rows = agent.search_result
    best_row = _broadcast(next((r for r in rows if r.get("state") == "COMPLETE" and r["arch"] == best_arch), None))
    baseline_metrics = None
    if recipe.baseline.enabled:
        arch_profile = {"latency": best_row["metrics"].get("latency"), "params": best_row.get("params"), "flops": best_row.get("flops")}
        baseline_metrics = _train_baseline(recipe, trainer, model_builder, best_arch, tokenized, collator, compute_metrics, arch_profile)
    if training.process_index != 0:
        return _finish_distributed()

    # 8. Reports and the exported best model.
    pareto_numbers = [p["number"] for p in agent.pareto_front]
    write_results_table(rows, output_dir)
    teacher_point = {"latency": teacher_metrics["latency"], score_key: teacher_metrics.get(score_key), "label": "teacher"}
    baseline_point = None
    if baseline_metrics:
        baseline_point = {"latency": baseline_metrics["latency"], score_key: baseline_metrics.get(score_key),
                          "label": "best arch, no distillation"}
    plot_pareto_front(rows, os.path.join(output_dir, "pareto_front.png"), pareto_numbers=pareto_numbers,
                      teacher=teacher_point, baseline=baseline_point, y_metric=score_key)
    best_dir = os.path.join(output_dir, "best_model")
    from autodistill_trainer.trainer import arch_slug

    trial_model = os.path.join(output_dir, "trials", arch_slug({k: best_arch[k] for k in agent.search_space}), "model")
    if os.path.isdir(best_dir):
        shutil.rmtree(best_dir)
    shutil.copytree(trial_model, best_dir)
    student_metrics = {**best_row["metrics"], "params": best_row.get("params"), "flops": best_row.get("flops")}
    write_model_card(
        best_dir, best_arch, student_metrics, teacher_metrics,
        {
            "algorithm": agent.search_config.search_algorithm, "n_trials": len(rows),
            "completed": sum(r.get("state") == "COMPLETE" for r in rows),
            "objectives": dict(zip(agent.search_config.metrics, agent.search_config.directions)),
            "recipe": recipe.path, "dataset": data.dataset_name or data.train_file,
            "distillation": _distillation_summary(recipe.autodistillation_config),
            "best_trial": best_row["number"],
            "latency_protocol": f"batch {evaluation.latency_batch_size} x {seq_length} tokens, "
                                f"{evaluation.latency_num_threads} thread(s), median of {evaluation.latency_repeats}",
            "baseline_without_distillation": baseline_metrics and {k: baseline_metrics.get(k) for k in (score_key, "latency")},
        },
        base_model=teacher_source, pipeline_tag="fill-mask" if pretraining else "text-classification",
    )
    summary = {
        "teacher": _pick(teacher_metrics), "best_student": {"arch": best_arch, **_pick(student_metrics)},
        "baseline_without_distillation": baseline_metrics and _pick(baseline_metrics),
        "speedup": teacher_metrics["latency"] / student_metrics["latency"],
        "wall_time_s": time.time() - start, "best_model": best_dir,
    }
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    _print_summary(summary, rows, output_dir)
    return _finish_distributed()


def _train_baseline(recipe, trainer, model_builder, arch, tokenized, collator, compute_metrics, profile_of_arch):
    """Train `arch` on labels only (plain Trainer) for as many steps as the distillation took."""
    from transformers import Trainer

    from autodistill_trainer.configs.distillation import parse_distillation

    flash, regular = parse_distillation(recipe.autodistillation_config.get("flash_distillation"),
                                        recipe.autodistillation_config.get("regular_distillation"))
    model = model_builder(arch)
    steps = recipe.baseline.train_steps
    if steps is None:
        steps = (regular.train_steps if regular else 0)
        if flash is not None:
            from autodistill_trainer.schedule import resolve_flash_config

            steps += sum(s.train_steps for s in resolve_flash_config(flash, model, trainer.teacher_model).stages())
    lr = regular.learning_rate if regular and regular.learning_rate else recipe.training.learning_rate
    args = dataclasses.replace(trainer.args, max_steps=steps, learning_rate=lr,
                               output_dir=os.path.join(trainer.args.output_dir, "baseline"), eval_strategy="no")
    logger.info("Baseline: training the best architecture on labels only for %d steps", steps)
    baseline = Trainer(model=model, args=args, train_dataset=tokenized["train"], eval_dataset=tokenized["validation"],
                       data_collator=collator, compute_metrics=compute_metrics,
                       preprocess_logits_for_metrics=trainer.preprocess_logits_for_metrics)
    baseline.train()
    metrics = {k.removeprefix("eval_"): v for k, v in baseline.evaluate().items()}
    metrics.update(profile_of_arch)  # same architecture: the search's latency, params and FLOPs
    metrics["train_steps"] = steps
    return metrics


def _pick(metrics):
    return {k: metrics.get(k) for k in ("accuracy", "f1", "mlm_accuracy", "latency", "params", "flops") if metrics.get(k) is not None}


def _distillation_summary(config):
    phases = [name.replace("_distillation", "") for name in ("flash_distillation", "regular_distillation") if config.get(name)]
    return " + ".join(phases)


def _print_summary(summary, rows, output_dir):
    teacher, student, baseline = summary["teacher"], summary["best_student"], summary["baseline_without_distillation"]

    score = "mlm_accuracy" if "mlm_accuracy" in teacher or "mlm_accuracy" in student else "accuracy"

    def line(name, m):
        acc = f"{100 * m[score]:.2f}%" if m.get(score) is not None else "n/a"
        return f"  {name:<28} {acc:>9} {m['latency']:>9.2f} ms {m.get('params', 0) / 1e6:>8.2f}M"

    print("\n=== autodistill summary ===")
    print(f"  {'':<28} {score.replace('mlm_accuracy', 'mlm acc'):>9} {'latency':>12} {'params':>9}")
    print(line("teacher", teacher))
    print(line("best student (distilled)", student))
    if baseline:
        print(line("same arch, no distillation", baseline))
    print(f"  speed-up vs teacher: {summary['speedup']:.1f}x   trials: {len(rows)}   wall time: {summary['wall_time_s'] / 60:.1f} min")
    print(f"  best architecture: {student['arch']}")
    print(f"  outputs: {output_dir}/ (search_results.json/.csv/.md, pareto_front.png, best_model/)")


def _broadcast(value):
    """Rank 0's value on every rank (identity outside distributed runs)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def _finish_distributed() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
