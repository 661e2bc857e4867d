"""Benchmark: is the latency protocol stable enough (CV of the median across calls <= 3%)?

Measures a small MobileBERT student and a tiny BERT, each with ``--calls`` calls of ``measure_latency``
(batch 1, sequence 64 by default), and prints per model: median of the call medians, the coefficient of
variation of the medians across calls, parameters, FLOPs, peak RSS and the thread count, then PASS/FAIL.
PASS/FAIL judges the default protocol (``timer="auto"``: thread CPU time with one thread); the wall-clock
timer is measured too, for comparison, since it depends on what else runs on the machine (load average shown).

    python bench/latency_cv.py [--calls 10] [--threads 1] [--batch-size 1] [--seq-length 64]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, MobileBertForSequenceClassification  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from autodistill_trainer.builders import build_model, default_mobilebert_base_config  # noqa: E402
from autodistill_trainer.profiling import count_flops, count_parameters, measure_latency  # noqa: E402
from _common import add_protocol_args  # noqa: E402  (bench/ is this script's directory)

CV_TARGET = 0.03


def peak_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def models():
    mobile = build_model(
        MobileBertForSequenceClassification,
        default_mobilebert_base_config(num_labels=2),
        {
            "hidden_size": 128,
            "intra_bottleneck_size": 64,
            "num_attention_heads": 2,
            "intermediate_size": 256,
            "num_feedforward_networks": 2,
            "num_hidden_layers": 6,
        },
        seed=0,
    )
    torch.manual_seed(0)
    bert = BertForSequenceClassification(
        BertConfig(
            vocab_size=30522,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=512,
            num_labels=2,
        )
    )
    return {"mobilebert-h128-b64-L6": mobile, "bert-tiny-h128-L2": bert}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    add_protocol_args(parser)
    args = parser.parse_args()

    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cpus, torch {torch.__version__}"
    )
    print(
        f"protocol: batch {args.batch_size} x seq {args.seq_length}, {args.threads} thread(s), "
        f"warmup {args.warmup}, repeats {args.repeats}, {args.calls} calls per model"
    )
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    all_pass = True
    for name, model in models().items():
        print(
            f"{name}: params {count_parameters(model):,}, "
            f"FLOPs {count_flops(model, args.batch_size, args.seq_length):,}"
        )
        for timer in ("auto", "wall"):
            t0 = time.perf_counter()
            results = [
                measure_latency(
                    model,
                    batch_size=args.batch_size,
                    seq_length=args.seq_length,
                    num_threads=args.threads,
                    warmup=args.warmup,
                    repeats=args.repeats,
                    timer=timer,
                )
                for _ in range(args.calls)
            ]
            medians = [r.median_ms for r in results]
            cv = statistics.pstdev(medians) / statistics.fmean(medians)
            verdict = ""
            if timer == "auto":
                ok = cv <= CV_TARGET
                all_pass &= ok
                verdict = f" [{'PASS' if ok else 'FAIL'} <= {100 * CV_TARGET:.0f}%]"
            print(
                f"  timer={timer} ({results[0].timer}): median of medians {statistics.median(medians):.3f} ms "
                f"(min {min(medians):.3f}, max {max(medians):.3f}), CV across calls {100 * cv:.2f}%{verdict}, "
                f"within-call CV {100 * statistics.median(r.cv for r in results):.2f}%, "
                f"inner loops {results[0].inner_loops}, threads {results[0].num_threads}, "
                f"{time.perf_counter() - t0:.1f} s"
            )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"peak RSS {peak_rss_mib():.0f} MiB")
    print("PASS" if all_pass else "FAIL")
    return 0 if all_pass else 1


if __name__ == "__main__":
    raise SystemExit(main())
