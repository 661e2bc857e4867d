"""Benchmark: does the latency runtime change which students look fast? Eager PyTorch vs ONNX Runtime fp32 / int8.

For ``--archs`` architectures of the demo's search space (recipes/rotten_tomatoes_plain.yaml: MobileBERT students,
4 layers, embedding 64; random weights, which do not change latency), measures the latency in each runtime with the
package's protocol (``deploy.runtimes.measure_runtime_latency``: the profiler's dummy batch, batch 1 x 64 tokens,
1 thread, 10 warm-up runs, median of 30 samples, the thread-CPU timer), and prints the per-architecture table, the
Kendall tau between the eager ranking and each ONNX Runtime ranking (what a search would order differently), the
export time and the peak RSS. Needs the onnx extra.

    python bench/latency_runtimes.py [--archs 16] [--seed 0] [--threads 1] [--seq-length 64] [--repeats 30]
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import add_protocol_args, machine_line, peak_rss_mib, setup_threads  # noqa: E402

setup_threads()

import yaml  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402
from transformers import MobileBertForSequenceClassification  # noqa: E402

from autodistill_trainer.builders import build_model, default_mobilebert_base_config  # noqa: E402
from autodistill_trainer.deploy.onnx_export import export_onnx  # noqa: E402
from autodistill_trainer.deploy.runtimes import measure_runtime_latency  # noqa: E402
from autodistill_trainer.errors import InvalidArchitectureError  # noqa: E402
from autodistill_trainer.profiling import count_parameters, dummy_inputs  # noqa: E402

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes",
                    "rotten_tomatoes_plain.yaml")
RUNTIMES = ("pytorch", "onnxruntime", "onnxruntime-int8")


def demo_space_and_base() -> tuple[dict, dict]:
    """The demo recipe's search space and its ``model.base_config`` overrides."""
    with open(DEMO) as f:
        recipe = yaml.safe_load(f)
    return recipe["auto_distillation"]["search"]["search_space"], recipe["model"]["base_config"]


def sample_archs(space: dict, n: int, seed: int) -> list[dict]:
    """``n`` distinct architectures of ``space``, drawn uniformly without replacement (all when fewer)."""
    grid = [dict(zip(space, values)) for values in itertools.product(*space.values())]
    random.Random(seed).shuffle(grid)
    return grid[:n]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    add_protocol_args(parser)
    args = parser.parse_args()

    space, base_overrides = demo_space_and_base()
    base = default_mobilebert_base_config(num_labels=2, **base_overrides)
    protocol = dict(batch_size=args.batch_size, seq_length=args.seq_length, num_threads=args.threads,
                    warmup=args.warmup, repeats=args.repeats)
    print(machine_line())
    print(f"protocol: batch {args.batch_size} x {args.seq_length} tokens, {args.threads} thread(s), {args.warmup} "
          f"warm-up runs, median of {args.repeats}; base config {base_overrides}; {args.archs} archs of "
          f"{len(list(itertools.product(*space.values())))} (seed {args.seed})")
    rows = []
    start = time.perf_counter()
    for arch in sample_archs(space, args.archs, args.seed):
        try:
            model = build_model(MobileBertForSequenceClassification, base, arch, seed=0,
                                attn_implementation="eager").eval()
        except InvalidArchitectureError as error:
            print(f"  skipped {arch}: {error}")
            continue
        row = {"arch": arch, "params": count_parameters(model)}
        with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
            t0 = time.perf_counter()
            exported = export_onnx(model, tmp, example_inputs=dummy_inputs(model, args.batch_size, args.seq_length))
            row["export_s"] = time.perf_counter() - t0
            for runtime in RUNTIMES:
                result = measure_runtime_latency(model, runtime, onnx_path=exported.paths.get(runtime), **protocol)
                row[runtime] = float(result.median_ms)
        rows.append(row)
    elapsed = time.perf_counter() - start

    names = list(space)
    header = " ".join(f"{n[:12]:>12}" for n in names)
    print(f"\n{header} {'params':>9} {'eager ms':>9} {'ort ms':>8} {'int8 ms':>8} {'eager/ort':>9} {'export s':>8}")
    for row in sorted(rows, key=lambda r: r["pytorch"]):
        values = " ".join(f"{row['arch'][n]:>12}" for n in names)
        print(f"{values} {row['params'] / 1e6:>8.2f}M {row['pytorch']:>9.3f} {row['onnxruntime']:>8.3f} "
              f"{row['onnxruntime-int8']:>8.3f} {row['pytorch'] / row['onnxruntime']:>8.1f}x {row['export_s']:>8.2f}")

    eager = [r["pytorch"] for r in rows]
    print()
    for a, b in (("pytorch", "onnxruntime"), ("pytorch", "onnxruntime-int8"), ("onnxruntime", "onnxruntime-int8"),
                 ("pytorch", "params")):
        tau, p = kendalltau([r[a] for r in rows], [r[b] for r in rows])
        print(f"Kendall tau, {a} vs {b} ranking: {tau:.3f} (p={p:.2g}, n={len(rows)})")
    ort = [r["onnxruntime"] for r in rows]
    print(f"\nmedian over archs: eager {statistics.median(eager):.3f} ms, ort {statistics.median(ort):.3f} ms;"
          f" fastest eager arch is {min(rows, key=lambda r: r['pytorch'])['arch']}, fastest ort arch is "
          f"{min(rows, key=lambda r: r['onnxruntime'])['arch']}")
    print(f"{len(rows)} archs in {elapsed:.0f}s; peak RSS {peak_rss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
