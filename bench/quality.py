"""Does distillation beat training on labels? The ablation of issue 16, on a recipe's task and one student.

For one architecture and the recipe's stage lengths, trains the same student under several *variants* (labels only,
logit KD only, flash + logit KD = today's pipeline, and levers on top) at several learning rates and seeds, all
for the same total number of steps, and records the validation accuracy of each run as one JSON line (so a killed
run resumes where it stopped: runs already in the file are skipped). The teacher is fine-tuned once and cached in
``--work-dir`` with the tokenized data and the teacher-output cache, exactly as the CLI does.

Usage (one task per process; run two tasks side by side on two cores)::

    python bench/quality.py recipes/rotten_tomatoes_plain.yaml --variants labels,kd,flash_kd \\
        --lrs 5e-4,1e-3,2e-3 --seeds 1 --out bench/results/quality.jsonl
    python bench/quality.py --report bench/results/quality.jsonl

``--report`` prints, per task, every (variant, learning rate) cell by seed, then each variant at its tuned learning
rate (the best on seed 1, the grid's seed) as mean ± sample standard deviation over the seeds run at that rate, with
the difference to labels-only and the median training wall time per run (a variant's first run also pays the
teacher pass over its new rows: unlabelled, augmented, hidden states). Figures in bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any, Callable

from _common import peak_rss_mib, setup_threads

#: Flash stages of the ``flash`` variants when the recipe has none (the demo recipe's before the ablation): one
#: stage per block, auto mappings (attention KL + layer-output MSE), 60 steps each.
FLASH_DEFAULT = {"block_names": "auto", "layer_mappings_for_knowledge_transfer": "auto", "train_steps": 60}
ARCH = {"hidden_size": 192, "intra_bottleneck_size": 32, "num_attention_heads": 4, "intermediate_size": 256,
        "num_feedforward_networks": 2}

#: variant name -> (uses flash stages, uses logit KD, regular-stage overrides); a ``+unl`` suffix adds
#: ``--unlabeled FILE`` (data.unlabeled_file), ``+aug`` adds ``data.augmentation`` (``--augment-copies``), to the
#: distillation's train set (KD terms only; the labels-only variant has no use for them); ``+lfNN`` gives every
#: batch NN% labelled rows (data.labelled_fraction = NN/100); ``+hid`` adds hidden-state KD to the regular stage
#: (:func:`hidden_state_overrides`); ``+sel`` initialises the student by weight selection from the teacher
#: (model.init_from_teacher: weights; the architecture must have BERT's layout, see ``--arch``). ``labels+sel`` is
#: the same initialisation trained on labels only. ``+imp`` is ``+sel`` from the teacher rewired by importance first
#: (model.selection_order: importance; :mod:`autodistill_trainer.rewiring`).
VARIANTS: dict[str, tuple[bool, bool, dict[str, Any]]] = {
    "labels": (False, False, {}),
    "kd": (False, True, {}),
    "flash_kd": (True, True, {}),
    "kd_t1": (False, True, {"temperature": 1.0}),
    "kd_t4": (False, True, {"temperature": 4.0}),
    "kd_w3": (False, True, {"loss_weights": [3.0]}),
    "kd_only": (False, True, {"add_origin_loss": False}),
    "flash_kd_t4": (True, True, {"temperature": 4.0}),
}


def hidden_state_overrides(regular: Any, student: Any, teacher: Any, weight: float = 1.0) -> dict[str, Any]:
    """The regular stage's mappings plus MSE between each student layer's output and the output of its teacher layer
    (uniform map, as flash's ``auto``; linear matchers where widths differ); the new terms share `weight` equally and
    the existing ones keep theirs (1/n each by default)."""
    from autodistill_trainer.auto_mappings import uniform_layer_map

    existing = list(regular.mappings())
    prefix = {m: f"{m.base_model_prefix}." for m in (student, teacher)}
    layer_map = uniform_layer_map(student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    hidden = [(f"{prefix[student]}encoder.layer.{i}.output", f"{prefix[teacher]}encoder.layer.{t}.output")
              for i, t in enumerate(layer_map)]
    raw = [("", "logits", "", "logits")] if regular.layer_mappings == "auto" else list(regular.layer_mappings)
    weights = regular.loss_weights or [1.0 / len(existing)] * len(existing)
    return {"layer_mappings": raw + hidden, "loss_types": list(regular.validated().loss_types) + ["MSE"] * len(hidden),
            "loss_weights": list(weights) + [weight / len(hidden)] * len(hidden)}


def _key(task: str, variant: str, lr: float, seed: int) -> tuple:
    return task, variant, float(lr), int(seed)


def _done(path: str) -> set[tuple]:
    if not os.path.exists(path):
        return set()
    with open(path) as f:
        return {_key(r["task"], r["variant"], r["lr"], r["seed"]) for r in map(json.loads, f) if r}


class Task:
    """The recipe's data, teacher, teacher cache and student builder, loaded once (as the CLI's steps 2-4)."""

    def __init__(self, recipe_path: str, work_dir: str, overrides: list[str], unlabeled: str | None = None,
                 augment_copies: int = 4):
        import torch  # noqa: F401  (after setup_threads)
        import transformers

        from autodistill_trainer.builders import build_model, student_base_config
        from autodistill_trainer.data import tokenize_dataset
        from autodistill_trainer.embedding_init import TeacherEmbeddingProjection, init_embeddings_from_teacher
        from autodistill_trainer.metrics import build_compute_metrics
        from autodistill_trainer.recipe import load_recipe
        from autodistill_trainer.tasks import TeacherSetup, get_task
        from autodistill_trainer.teacher import load_tokenizer
        from autodistill_trainer.teacher_cache import TeacherOutputCache
        from autodistill_trainer.weight_selection import SelectionSource, select_teacher_weights

        self.recipe = recipe = load_recipe(recipe_path, overrides)
        self.name = recipe.model.name
        self.work_dir = work_dir
        task = get_task(recipe.data.task)
        raw, label_names = task.load_data(recipe.data, recipe.training.seed)
        source = recipe.teacher.model_name_or_path or recipe.teacher.pretrained_encoder
        self.tokenizer = load_tokenizer(source)
        self.tokenized = tokenize_dataset(raw, self.tokenizer, recipe.data.max_length,
                                          cache_dir=os.path.join(work_dir, "cache"))
        self.collator = task.build_collator(self.tokenizer)
        self.compute_metrics = build_compute_metrics(recipe.evaluation.metrics)
        self.training = dataclasses.replace(recipe.training, use_cpu=True, disable_tqdm=True, report_to=[],
                                            save_strategy="no", eval_strategy="no", logging_steps=10**6)
        self.teacher, self.teacher_metrics = task.load_teacher(recipe.teacher, TeacherSetup(
            label_names, self.tokenized["train"], self.tokenized["validation"], work_dir, self.collator,
            self.tokenizer, self.compute_metrics))
        self.teacher.eval()
        if self.teacher_metrics is None:
            self.teacher_metrics = self.evaluate(self.teacher)
        base = student_base_config(recipe.model, recipe.data, vocab_size=len(self.tokenizer),
                                   pad_token_id=self.tokenizer.pad_token_id, label_names=label_names)
        model_cls = getattr(transformers, recipe.model.student_class)
        projection = TeacherEmbeddingProjection(self.teacher) if recipe.model.init_embeddings_from_teacher else None

        def build(arch: dict[str, Any], seed: int, select: bool = False, rewire: bool = False) -> Any:
            student = build_model(model_cls, base, arch, seed=seed, attn_implementation="eager")
            if select:
                select_teacher_weights(student, self._rewired.get() if rewire else self.teacher)
            elif projection is not None:
                init_embeddings_from_teacher(student, projection)
            return student

        self.build: Callable[..., Any] = build
        # model.selection_order: importance, as the CLI does: rewired on first use, then kept
        self._rewired = SelectionSource(self.teacher, "importance", self.tokenized["train"], self.collator)
        self.cache = TeacherOutputCache(self.teacher, os.path.join(work_dir, "cache"), self.collator,
                                        batch_size=self.training.per_device_eval_batch_size)
        self.raw, self.unlabeled, self.augment_copies = raw, unlabeled, augment_copies
        self._train_sets: dict[str, Any] = {}

    def train_set(self, extras: frozenset[str]) -> Any:
        """The distillation's train set: labelled train rows plus unlabelled (``unl``) / augmented (``aug``) rows."""
        from datasets import DatasetDict

        from autodistill_trainer.configs.augmentation import AugmentationArguments
        from autodistill_trainer.data import tokenize_dataset
        from autodistill_trainer.data.unlabeled import distillation_train_data, load_unlabeled_texts

        key = "+".join(sorted(extras))
        if key not in self._train_sets:
            raw, tokenized = {"train": self.raw["train"]}, {"train": self.tokenized["train"]}
            if "unl" in extras:
                raw["unlabeled"] = load_unlabeled_texts(self.unlabeled)
                tokenized["unlabeled"] = tokenize_dataset(DatasetDict({"unlabeled": raw["unlabeled"]}), self.tokenizer,
                                                          self.recipe.data.max_length,
                                                          cache_dir=os.path.join(self.work_dir, "cache"))["unlabeled"]
            augmentation = AugmentationArguments(copies=self.augment_copies) if "aug" in extras else None
            data = dataclasses.replace(self.recipe.data, augmentation=augmentation)
            self._train_sets[key] = distillation_train_data(raw, tokenized, data, self.tokenizer, self.teacher,
                                                            os.path.join(self.work_dir, "cache"))
        return self._train_sets[key]

    def evaluate(self, model: Any) -> dict[str, float]:
        from transformers import Trainer

        args = dataclasses.replace(self.training, output_dir=tempfile.mkdtemp(prefix="quality-eval-"))
        trainer = Trainer(model=model, args=args, eval_dataset=self.tokenized["validation"],
                          data_collator=self.collator, compute_metrics=self.compute_metrics)
        return {k.removeprefix("eval_"): v for k, v in trainer.evaluate().items()}

    def total_steps(self, arch: dict[str, Any]) -> int:
        from autodistill_trainer.schedule import plan_stages

        config = self.recipe.autodistillation
        return sum(s.steps for s in plan_stages(config.flash_distillation, config.regular_distillation,
                                                self.build(arch, 0), self.teacher))

    def run(self, variant: str, arch: dict[str, Any], lr: float, seed: int) -> dict[str, Any]:
        from transformers import Trainer, set_seed

        from autodistill_trainer.configs import parse_distillation
        from autodistill_trainer.schedule import plan_stages, run_distillation

        base, *extras = variant.split("+")
        uses_flash, uses_kd, regular_overrides = VARIANTS[base]
        unknown = [e for e in extras
                   if e not in ("unl", "aug", "hid", "sel", "imp") and not (e[:2] == "lf" and e[2:].isdigit())]
        if unknown:
            raise SystemExit(f"variant {variant!r}: unknown suffix {unknown[0]!r} (unl, aug, hid, sel, imp, lfNN)")
        shares = [int(e[2:]) / 100 for e in extras if e.startswith("lf")]
        data_extras = frozenset(e for e in extras if e in ("unl", "aug"))
        config = self.recipe.autodistillation
        total = self.total_steps(arch)
        set_seed(seed)
        student = self.build(arch, seed, select="sel" in extras or "imp" in extras, rewire="imp" in extras)
        args = dataclasses.replace(self.training, seed=seed, learning_rate=lr,
                                   output_dir=tempfile.mkdtemp(prefix=f"quality-{variant}-"))
        start = time.time()
        if not uses_kd:
            args = dataclasses.replace(args, max_steps=total)
            Trainer(model=student, args=args, train_dataset=self.tokenized["train"],
                    data_collator=self.collator).train()
        else:
            flash = (config.flash_distillation or parse_distillation(FLASH_DEFAULT, None)[0]) if uses_flash else None
            flash_steps = sum(s.steps for s in plan_stages(flash, None, student, self.teacher)) if flash else 0
            if "hid" in extras:
                regular_overrides = {**regular_overrides, **hidden_state_overrides(
                    config.regular_distillation, student, self.teacher)}
            regular = dataclasses.replace(config.regular_distillation, train_steps=total - flash_steps,
                                          learning_rate=None, **regular_overrides)
            if flash is not None:
                flash = dataclasses.replace(flash, learning_rate=None)
            run_distillation(student, self.teacher, args, self.train_set(data_extras), flash, regular,
                             data_collator=self.collator, processing_class=self.tokenizer, teacher_cache=self.cache,
                             labelled_fraction=shares[0] if shares else None)
        wall = time.time() - start
        metrics = self.evaluate(student)
        return {"task": self.name, "variant": variant, "lr": lr, "seed": seed, "arch": arch, "steps": total,
                "accuracy": metrics["accuracy"], "train_wall_s": round(wall, 1), "peak_rss_mib": round(peak_rss_mib()),
                "teacher_accuracy": self.teacher_metrics.get("accuracy")}


def report(path: str) -> None:
    """Per task: every (variant, lr) cell, then each variant at its tuned learning rate (the best on seed 1, the
    grid's seed) with mean ± sample sd over the seeds run there, and the difference to labels-only."""
    runs: dict[tuple, dict[int, float]] = defaultdict(dict)
    walls: dict[str, list[float]] = defaultdict(list)
    variant_walls: dict[tuple, list[float]] = defaultdict(list)
    teachers: dict[str, float] = {}
    with open(path) as f:
        for r in map(json.loads, f):
            runs[(r["task"], r["variant"], r["lr"])][r["seed"]] = 100 * r["accuracy"]
            walls[r["task"]].append(r["train_wall_s"])
            variant_walls[(r["task"], r["variant"], r["lr"])].append(r["train_wall_s"])
            teachers[r["task"]] = 100 * r["teacher_accuracy"]
    order = list(VARIANTS)
    for task in sorted(teachers):
        print(f"\n## {task}: teacher {teachers[task]:.2f}%, median train time per run "
              f"{statistics.median(walls[task]):.0f} s")
        print("| variant | lr | accuracy % by seed | mean ± sd |")
        print("|---|---|---|---|")
        variants = sorted({v for t, v, _ in runs if t == task}, key=lambda v: (order.index(v.split("+")[0]), v))
        tuned = {}
        for variant in variants:
            cells = {lr: accs for (t, v, lr), accs in runs.items() if t == task and v == variant}
            seeded = [lr for lr in cells if 1 in cells[lr]]
            tuned[variant] = max(seeded, key=lambda lr: cells[lr][1]) if seeded else max(cells)
            for lr in sorted(cells):
                accs = list(cells[lr].values())
                by_seed = ", ".join(f"{cells[lr][k]:.2f}" for k in sorted(cells[lr]))
                print(f"| {variant} | {lr:g} | {by_seed} | {_mean_sd(accs)} |")
        print("\n| variant | tuned lr (best on seed 1) | accuracy % mean ± sd (n) | vs labels (points) | of teacher | "
              "median train s per run |")
        print("|---|---|---|---|---|---|")
        base = statistics.mean(runs[(task, "labels", tuned["labels"])].values()) if "labels" in tuned else None
        for variant in variants:
            accs = list(runs[(task, variant, tuned[variant])].values())
            mean = statistics.mean(accs)
            delta = f"{mean - base:+.2f}" if base is not None else ""
            wall = statistics.median(variant_walls[(task, variant, tuned[variant])])
            print(f"| {variant} | {tuned[variant]:g} | {_mean_sd(accs)} ({len(accs)}) | {delta} | "
                  f"{100 * mean / teachers[task]:.1f}% | {wall:.0f} |")


def _mean_sd(values: list[float]) -> str:
    sd = f"{statistics.stdev(values):.2f}" if len(values) > 1 else "n/a"
    return f"{statistics.mean(values):.2f} ± {sd}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", nargs="?")
    parser.add_argument("--variants", default="labels,kd,flash_kd", help=f"comma-separated, of {list(VARIANTS)}")
    parser.add_argument("--lrs", default="1e-3")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--arch", default=json.dumps(ARCH), help="JSON architecture (default: the demo's best)")
    parser.add_argument("--work-dir", help="teacher, tokenized data and teacher cache (default outputs/quality/NAME)")
    parser.add_argument("--out", default="bench/results/quality.jsonl")
    parser.add_argument("--report", metavar="JSONL", help="print the table of a results file and exit")
    parser.add_argument("--unlabeled", help="unlabelled text file for '+unl' variants")
    parser.add_argument("--augment-copies", type=int, default=4, help="augmented copies per text ('+aug' variants)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    args = parser.parse_args()
    if args.report:
        report(args.report)
        return 0
    setup_threads()
    overrides = [f"--{item.split('=', 1)[0]}={item.split('=', 1)[1]}" for item in args.set]
    recipe_name = os.path.splitext(os.path.basename(args.recipe))[0]
    work_dir = args.work_dir or os.path.join("outputs", "quality", recipe_name)
    os.makedirs(work_dir, exist_ok=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    task = Task(args.recipe, work_dir, overrides, args.unlabeled, args.augment_copies)
    arch = json.loads(args.arch)
    done = _done(args.out)
    print(f"{task.name}: teacher {task.teacher_metrics.get('accuracy'):.4f}, {task.total_steps(arch)} steps per run",
          flush=True)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for lr in [float(x) for x in args.lrs.split(",")]:
            for variant in args.variants.split(","):
                if _key(task.name, variant, lr, seed) in done:
                    continue
                row = task.run(variant, arch, lr, seed)
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{variant:12s} lr {lr:g} seed {seed}: {100 * row['accuracy']:.2f}% "
                      f"({row['train_wall_s']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
