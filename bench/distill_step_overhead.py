"""Benchmark: overhead of a flash-distillation training step over "plain student step + teacher forward".

Target: a DistillationTrainer step with per-layer attention-KL + hidden-MSE mappings on every student layer
(``auto_flash_config`` of a 6-layer MobileBERT student vs the all-MiniLM-L6-v2 teacher, eager attention on both)
costs at most 1.10x a plain ``Trainer`` step of the same student plus a no-grad teacher forward of the same batch.

Both variants run the Trainer's own ``training_step`` and then ``optimizer.step()`` / ``zero_grad()`` (optimizer from
``trainer.create_optimizer()``), on the same pre-collated batches (batch 32 of real Rotten Tomatoes snippets,
max_length 64, dynamic padding), interleaved round by round (rotating order), after a warm-up. Reported: median
ms per step of each variant (thread CPU time, which with one thread covers the whole step and ignores time the
process was preempted by other jobs; wall time beside it), the ratio of medians and the median of per-round
ratios (PASS/FAIL uses the latter, on CPU time), and, for information, the same with ``early_stop_teacher=False``.

``--config small4`` measures a second configuration (issue 13): a randomly initialised 4-layer BERT teacher (hidden
256, 4 heads, intermediate 1024) and a 4-layer MobileBERT student (hidden 256, bottleneck 64, 2 heads, intermediate
256, 2 feed-forward networks, embedding 64), both eager, on unpadded batches of 16 x 64 random tokens (every position
real), attention KL + layer-output MSE on every layer; the issue's figures were taken with ``--threads 2``.
Peak memory: each variant runs again alone in its own subprocess (warm-up + a few steps) and reports peak RSS
(``ru_maxrss``) and the RSS it had before its first step.

    python bench/distill_step_overhead.py [--config demo|small4] [--repeats 40] [--threads 1] [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import setup_threads  # noqa: E402

THREADS = setup_threads()

import torch  # noqa: E402

torch.set_num_threads(THREADS)

import _common as C  # noqa: E402

TARGET = 1.10
VARIANTS = ("distill", "distill_no_early_stop", "plain_plus_teacher")

#: The second configuration (``--config small4``): models and batches of the issue's measurement.
SMALL4_STUDENT = {"hidden_size": 256, "intra_bottleneck_size": 64, "num_attention_heads": 2, "intermediate_size": 256,
                  "num_feedforward_networks": 2, "num_hidden_layers": 4, "embedding_size": 64}
SMALL4_TEACHER = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024}
SMALL4_BATCH, SMALL4_LENGTH, VOCAB = 16, 64, 30522

DESCRIPTIONS = {
    "demo": ("student: MobileBERT 6 layers, hidden 128, bottleneck 64, 2 heads, intermediate 256, embedding 64 "
             "(eager); teacher: all-MiniLM-L6-v2 6 layers, 12 heads, hidden 384 (eager)"),
    "small4": ("student: MobileBERT 4 layers, hidden 256, bottleneck 64, 2 heads, intermediate 256, 2 FFNs, embedding "
               "64 (eager); teacher: BERT 4 layers, hidden 256, 4 heads, intermediate 1024, random init (eager)"),
}


def build_models(config: str):
    """(student, teacher) of a configuration."""
    if config == "demo":
        return C.build_student(), C.build_teacher()
    from transformers import BertConfig, BertForSequenceClassification, MobileBertForSequenceClassification

    from autodistill_trainer.builders import build_model, default_mobilebert_base_config

    student = build_model(MobileBertForSequenceClassification, default_mobilebert_base_config(num_labels=2),
                          SMALL4_STUDENT, seed=0, attn_implementation="eager")
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(BertConfig(vocab_size=VOCAB, num_labels=2, attn_implementation="eager",
                                                       **SMALL4_TEACHER))
    return student, teacher.eval()


def flat_flash_mappings(student, teacher):
    """All of auto_flash_config's per-block mappings (attention KL + layer-output MSE) in one criterion."""
    from autodistill_trainer.auto_mappings import auto_flash_config

    config = auto_flash_config(student, teacher)
    mappings = [m for block in config["layer_mappings_for_knowledge_transfer"] for m in block]
    losses = [t for block in config["loss_types"] for t in block]
    return mappings, losses


def make_variant(name: str, student, teacher, batches, out_dir: str):
    """A `_common.Step` running one full training step of variant `name` on batch k."""
    from transformers import Trainer

    from autodistill_trainer import DistillationTrainer
    from autodistill_trainer.criterion import IntermediateLayersKnowledgeDistillationLoss

    args = C.training_args(os.path.join(out_dir, name))
    if name == "plain_plus_teacher":
        trainer = Trainer(model=student, args=args)
        teacher_keys = ("input_ids", "attention_mask", "token_type_ids")

        def extra(batch):
            with torch.no_grad():
                teacher(**{k: batch[k] for k in teacher_keys if k in batch})
    else:
        mappings, losses = flat_flash_mappings(student, teacher)
        criterion = IntermediateLayersKnowledgeDistillationLoss(
            student, teacher, mappings, loss_types=losses, early_stop_teacher=(name == "distill")
        )
        trainer = DistillationTrainer(model=student, teacher_model=teacher, criterion=criterion, args=args)

        def extra(batch):
            return None

    optimizer = trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); training_step reads it
    model = trainer.model

    def run(k: int):
        batch = dict(batches[k])
        extra(batch)
        trainer.training_step(model, batch)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step = C.Step(name, run)
    step.trainer = trainer
    return step


def prepare(args):
    if args.config == "small4":  # unpadded random-token batches: every position is real
        generator = torch.Generator().manual_seed(0)
        shape = (SMALL4_BATCH, SMALL4_LENGTH)
        return [{"input_ids": torch.randint(1, VOCAB, shape, generator=generator),
                 "attention_mask": torch.ones(shape, dtype=torch.long),
                 "token_type_ids": torch.zeros(shape, dtype=torch.long),
                 "labels": torch.randint(0, 2, (SMALL4_BATCH,), generator=generator)} for _ in range(args.batches)]
    tokenized, tokenizer, collator = C.load_data(max_length=64)
    train = tokenized["train"]
    index_sets = C.index_batches(len(train), 32, args.batches, seed=0)
    batches = [C.fetch(train, collator, idx) for idx in index_sets]
    return batches


def memory_child(variant: str, args) -> int:
    """Run one variant alone: models + warm-up, then reset the peak-RSS mark and run the measured steps."""
    batches = torch.load(args.batches_file)
    student, teacher = build_models(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        step = make_variant(variant, student, teacher, batches, tmp)
        step.run(0)  # warm-up: optimizer state, allocator pools
        rss_before = C.current_rss_mib()
        reset = C.reset_peak_rss()
        for k in range(args.memory_steps):
            step.run(k % len(batches))
        step_peak = C.hwm_rss_mib() if reset else float("nan")
    print(
        json.dumps(
            {
                "variant": variant,
                "rss_before_steps_mib": rss_before,
                "step_peak_rss_mib": step_peak,
                "process_peak_rss_mib": C.peak_rss_mib(),
                "steps": args.memory_steps,
            }
        )
    )
    return 0


def profile_variants(steps, batches, n: int = 5) -> None:
    """torch.profiler table of each variant's step (where the time goes)."""
    from torch.profiler import ProfilerActivity, profile

    for s in steps:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for k in range(n):
                s.run(k % len(batches))
        print(f"\n--- torch.profiler: {s.name}, {n} steps (self CPU time, top 20) ---")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(DESCRIPTIONS), default="demo",
                        help="demo: the demo's student and MiniLM teacher; small4: 4-layer BERT -> 4-layer MobileBERT")
    parser.add_argument("--repeats", type=int, default=40, help="timed rounds (each runs every variant once)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", type=int, default=20, help="distinct batches cycled through")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-steps", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table per variant")
    parser.add_argument("--quick", action="store_true", help="smoke mode (<30 s): few rounds, memory skipped")
    parser.add_argument("--memory-child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--batches-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.warmup, args.batches, args.no_memory = 4, 1, 4, True
    if args.memory_child:
        return memory_child(args.memory_child, args)

    print(C.machine_line())
    print(DESCRIPTIONS[args.config])
    batches = prepare(args)
    lengths = [int(b["input_ids"].shape[1]) for b in batches]
    if args.config == "small4":
        print(f"data: {len(batches)} unpadded batches of {SMALL4_BATCH} x {SMALL4_LENGTH} random tokens")
    else:
        print(
            f"data: {len(batches)} batches of 32 Rotten Tomatoes snippets, max_length 64, dynamic padding "
            f"(padded lengths {min(lengths)}-{max(lengths)}, mean {sum(lengths) / len(lengths):.1f})"
        )
    base_student, base_teacher = build_models(args.config)
    mappings, losses = flat_flash_mappings(base_student, base_teacher)
    widths = (base_student.config.hidden_size, base_teacher.config.hidden_size)
    print(
        f"distillation criterion: {len(mappings)} mappings ({losses.count('KL')} attention KL, {losses.count('MSE')} "
        f"layer-output MSE with Linear{widths} matchers where the widths differ), all student layers"
    )

    with tempfile.TemporaryDirectory() as tmp:
        # Each variant gets its own student and teacher copies so that no hooks of one fire in another.
        steps = {
            name: make_variant(name, copy.deepcopy(base_student), copy.deepcopy(base_teacher), batches, tmp)
            for name in VARIANTS
        }
        order = [steps["distill"], steps["plain_plus_teacher"], steps["distill_no_early_stop"]]
        print(f"timing: warm-up {args.warmup} rounds, {args.repeats} interleaved rounds, {THREADS} thread(s)")
        C.interleave(order, len(batches), args.warmup, args.repeats)
        if args.profile:
            profile_variants(order, batches)

    print()
    for s in order:
        print(C.summary_line(s))
    d, p, n = steps["distill"], steps["plain_plus_teacher"], steps["distill_no_early_stop"]
    ratio = C.paired_ratio(d, p)
    ratio_of_medians = C.median(d.cpu) / C.median(p.cpu)
    ratio_ne = C.paired_ratio(n, p)
    print(
        f"\nratio distill / (plain + teacher fwd): {ratio:.3f} (median of paired ratios, CPU time); "
        f"ratio of medians {ratio_of_medians:.3f}; wall {C.paired_ratio(d, p, 'wall'):.3f}"
    )
    print(
        f"  with early_stop_teacher=False: {ratio_ne:.3f} (CPU), wall {C.paired_ratio(n, p, 'wall'):.3f}  "
        f"[early stop with all layers mapped skips only the pooler + classifier]"
    )

    if not args.no_memory:
        print(
            "\npeak memory (each variant alone in a subprocess that loads only the batches and the models; "
            f"one warm-up step, then the peak-RSS mark is reset and {args.memory_steps} steps run):"
        )
        with tempfile.TemporaryDirectory() as tmp:
            batches_file = os.path.join(tmp, "batches.pt")
            torch.save([dict(b) for b in batches[:8]], batches_file)
            for name in VARIANTS:
                cmd = [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--memory-child",
                    name,
                    "--config",
                    args.config,
                    "--threads",
                    str(THREADS),
                    "--batches-file",
                    batches_file,
                    "--memory-steps",
                    str(args.memory_steps),
                ]
                out = subprocess.run(cmd, capture_output=True, text=True)
                line = next((text for text in out.stdout.splitlines() if text.startswith("{")), None)
                if out.returncode or line is None:
                    print(f"  {name}: failed ({out.returncode}): {out.stderr[-500:]}")
                    continue
                m = json.loads(line)
                print(
                    f"  {name:<24} peak RSS during steps {m['step_peak_rss_mib']:6.0f} MiB (process peak "
                    f"{m['process_peak_rss_mib']:.0f} MiB; RSS before the steps {m['rss_before_steps_mib']:.0f} MiB, "
                    f"step peak - before = {m['step_peak_rss_mib'] - m['rss_before_steps_mib']:.0f} MiB)"
                )
    else:
        print(
            f"\npeak RSS of this process (all three variants): {C.peak_rss_mib():.0f} MiB (per-variant memory skipped)"
        )

    ok = ratio <= TARGET
    print(
        f"\n{'PASS' if ok else 'FAIL'}: distillation step {ratio:.3f}x plain step + teacher forward "
        f"(target <= {TARGET:.2f}x), "
        f"{THREADS} thread(s), config {args.config}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
