"""Benchmark: a regular-distillation step reading cached teacher logits vs a plain student step.

Target: a DistillationTrainer step with mapping ('classifier', 'classifier') KL (T=2) + the student's own loss,
reading the teacher's logits from a :class:`TeacherOutputCache` (fp16, memory-mapped Arrow), costs at most 1.05x
a plain ``Trainer`` step of the same student (6-layer MobileBERT, hidden 128, bottleneck 64, 2 heads,
intermediate 256, embedding 64). For comparison the same distillation step with the live teacher
(all-MiniLM-L6-v2, eager attention) is timed too.

A step here is what one training iteration costs: read the batch's rows from the trainer's own train
dataloader's dataset and collate them with its collator (the cached variant reads the memory-mapped teacher
columns and pads them), then ``trainer.training_step`` and ``optimizer.step()`` / ``zero_grad()`` (optimizer from
``trainer.create_optimizer()``). All variants use the same example indices (batch 32 of Rotten Tomatoes snippets,
max_length 64, dynamic padding), interleaved round by round after a warm-up; median thread-CPU ms (one thread:
the whole step; insensitive to preemption by other jobs) and wall ms. PASS/FAIL uses the median of per-round
CPU-time ratios.

Also reported: the one-off cost of the teacher pass that fills the cache (the first ``get_train_dataloader()``),
that it happens once (``cache.passes`` stays 1 after a second ``dataset_for``, whose time is printed), what a
new cache object on the same directory costs (a rerun: reads the file, no pass), the cache file size, and peak
RSS (``ru_maxrss``) before and after the cache pass.

    python bench/regular_step_cached.py [--repeats 30] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import setup_threads  # noqa: E402

THREADS = setup_threads()

import torch  # noqa: E402

torch.set_num_threads(THREADS)

import _common as C  # noqa: E402

TARGET = 1.05
REGULAR = {
    "layer_mappings": [("classifier", "classifier")],
    "loss_types": ["KL"],
    "add_origin_loss": True,
    "temperature": 2.0,
}


def step_for(name, trainer, index_sets):
    """A Step that fetches batch k from the trainer's own train dataloader data and trains on it."""
    loader = trainer.get_train_dataloader()
    dataset, collate = loader.dataset, loader.collate_fn
    optimizer = trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); training_step reads it
    model = trainer.model

    def run(k: int):
        batch = C.fetch(dataset, collate, index_sets[k])
        trainer.training_step(model, batch)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step = C.Step(name, run)
    step.columns = list(getattr(dataset, "column_names", []))
    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--train-samples", type=int, default=None, help="truncate the training set (default: all 11,528)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke mode (<30 s): 512 training examples, few rounds")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.warmup, args.batches, args.train_samples = 8, 1, 8, args.train_samples or 512

    from transformers import Trainer

    from autodistill_trainer import DistillationTrainer
    from autodistill_trainer.teacher_cache import TeacherOutputCache

    print(C.machine_line())
    tokenized, tokenizer, collator = C.load_data(max_length=64, train_samples=args.train_samples)
    train = tokenized["train"]
    print(
        f"data: Rotten Tomatoes train {len(train):,} examples, batch 32, max_length 64, dynamic padding; "
        f"{THREADS} thread(s)"
    )
    index_sets = C.index_batches(len(train), 32, args.batches, seed=0)
    rss0 = C.peak_rss_mib()

    with tempfile.TemporaryDirectory() as tmp:
        teacher = C.build_teacher()
        cache_dir = os.path.join(tmp, "cache")
        cache = TeacherOutputCache(teacher, cache_dir, collator, batch_size=64)

        cached_trainer = DistillationTrainer(
            model=C.build_student(),
            teacher_model=teacher,
            criterion=dict(REGULAR),
            teacher_cache=cache,
            args=C.training_args(os.path.join(tmp, "cached")),
            train_dataset=train,
            data_collator=collator,
        )
        t0 = time.perf_counter()
        c0 = time.process_time()
        cached_trainer.get_train_dataloader()  # first call: the one teacher pass
        fill_wall, fill_cpu = time.perf_counter() - t0, time.process_time() - c0
        passes_after_fill = cache.passes
        rss_after_fill = C.peak_rss_mib()
        files = [f for f in os.listdir(cache_dir) if f.endswith(".arrow")]
        size_mib = sum(os.path.getsize(os.path.join(cache_dir, f)) for f in files) / 2**20
        print(
            f"\none-off teacher pass filling the cache: {fill_wall:.1f} s wall ({fill_cpu:.1f} s CPU) for "
            f"{len(train):,} examples at batch 64 ({1000 * fill_wall / len(train):.2f} ms/example); "
            f"cache.passes = {passes_after_fill}; file {size_mib:.2f} MiB ({', '.join(files)})"
        )
        assert cached_trainer._cached_columns, "the cached trainer does not read cached columns"

        t0 = time.perf_counter()
        again = cache.dataset_for(train, cached_trainer.criterion.layer_mappings)
        second = time.perf_counter() - t0
        print(
            f"second dataset_for (same cache object): {1000 * second:.0f} ms, cache.passes = {cache.passes} "
            f"({'no new pass' if cache.passes == passes_after_fill else 'A NEW PASS WAS MADE'}); "
            f"columns {[c for c in again.column_names if c.startswith('teacher_')]}"
        )
        fresh = TeacherOutputCache(teacher, cache_dir, collator, batch_size=64)
        t0 = time.perf_counter()
        fresh.dataset_for(train, cached_trainer.criterion.layer_mappings)
        rerun = time.perf_counter() - t0
        print(
            f"new cache object on the same directory (a rerun): {1000 * rerun:.0f} ms (teacher fingerprint + file "
            f"open), passes = {fresh.passes}"
        )
        once = cache.passes == 1 and fresh.passes == 0

        cached = step_for("distill, cached teacher logits", cached_trainer, index_sets)
        live = step_for(
            "distill, live teacher",
            DistillationTrainer(
                model=C.build_student(),
                teacher_model=C.build_teacher(),
                criterion=dict(REGULAR),
                args=C.training_args(os.path.join(tmp, "live")),
                train_dataset=train,
                data_collator=collator,
            ),
            index_sets,
        )
        plain = step_for(
            "plain Trainer step (student only)",
            Trainer(
                model=C.build_student(),
                args=C.training_args(os.path.join(tmp, "plain")),
                train_dataset=train,
                data_collator=collator,
            ),
            index_sets,
        )
        print(f"columns read: cached {cached.columns}; plain {plain.columns}")
        steps = [cached, plain, live]
        print(f"timing: warm-up {args.warmup} rounds, {args.repeats} interleaved rounds")
        C.interleave(steps, len(index_sets), args.warmup, args.repeats)

    print()
    for s in steps:
        print(C.summary_line(s))
    ratio = C.paired_ratio(cached, plain)
    print(
        f"\nratio cached distill / plain: {ratio:.3f} (median of paired ratios, CPU time); ratio of medians "
        f"{C.median(cached.cpu) / C.median(plain.cpu):.3f}; wall {C.paired_ratio(cached, plain, 'wall'):.3f}"
    )
    print(
        f"ratio live-teacher distill / plain: {C.paired_ratio(live, plain):.3f} (CPU), wall "
        f"{C.paired_ratio(live, plain, 'wall'):.3f}"
    )
    saved = C.median(live.cpu) - C.median(cached.cpu)
    if saved > 0:
        print(
            f"the cache saves {saved:.0f} ms CPU per step: the {fill_wall:.0f} s pass pays for itself after "
            f"~{1000 * fill_wall / saved:.0f} steps (one epoch at batch 32 = {len(train) // 32} steps)"
        )
    print(
        f"peak RSS: {rss0:.0f} MiB after loading data, {rss_after_fill:.0f} MiB after the cache pass, "
        f"{C.peak_rss_mib():.0f} MiB at the end (three students, two teachers in one process)"
    )
    ok = ratio <= TARGET and once
    print(
        f"\n{'PASS' if ok else 'FAIL'}: cached regular-distillation step {ratio:.3f}x a plain step (target <= "
        f"{TARGET:.2f}x); teacher pass made once: {once}; {THREADS} thread(s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
