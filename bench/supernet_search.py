"""Benchmark: the supernet search vs the plain and multi-fidelity searches on the Rotten Tomatoes demo task.

Every run is the CLI on ``recipes/rotten_tomatoes_demo.yaml`` (the same 2,880-architecture space for all three
strategies; the plain and multi-fidelity runs get ``search.strategy`` overridden), with one fine-tuned teacher for all
(``--teacher-dir``, or fine-tuned once by ``search_efficiency.prepare_teacher``), no baseline, no ONNX export, a
fresh ``output_dir`` each. Per seed (the search seed only; the data split keeps the recipe's training seed):

1. **Supernet search**: proxies evaluated, finalists, compute in full-trial equivalents (FTE, see
   ``autodistill_trainer/search/supernet_compute.py``), wall time and CPU time of the CLI run (the children's
   ``getrusage``; it also holds data loading and the teacher's cache).
2. **Architectures evaluated per CPU-hour**: (proxies + finalists) / CPU-hours of the supernet run, against trained
   architectures / CPU-hours of the plain run (goal >= 20x).
3. **Proxy fidelity**: ``--tau-archs`` (>= 8) proxies spread over the proxy-accuracy range (evenly spaced ranks),
   each also trained standalone by the plain pipeline (a one-architecture plain search, regular distillation from a
   fresh student, as many steps as a finalist trains: ``finalist_budget x regular steps``); Kendall tau between
   proxy accuracy and standalone accuracy (goal >= 0.6).
4. **Finalists vs standalone**: each finalist's accuracy (supernet weights + its own steps) against the same
   architecture trained standalone for the same steps (the finalists are added to the tau set for this).
5. **Equal compute**: plain and multi-fidelity searches with ``max_trials`` = the supernet run's total FTE (rounded
   up); hypervolume of each measured front (``search_efficiency.hypervolume``, reference ``(--ref-accuracy,
   --ref-latency-ms)``) and the most accurate student within ``--latency-budget-ms`` (default: 15% of the
   teacher's latency as the run measured it, the issue's budget).

    python bench/supernet_search.py [--seeds 0 1 2] [--tau-archs 8] [--teacher-dir DIR]
    python bench/supernet_search.py --smoke     # tiny settings: checks the mechanics only (minutes)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from search_efficiency import THREADS, hypervolume, prepare_teacher, run_cli  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "rotten_tomatoes_demo.yaml")
SEARCH = "--auto_distillation.search."


def timed_cli(args_list: list[str], log_path: str) -> tuple[int, float, float]:
    """Run the CLI; return (exit status, wall seconds, CPU seconds of the child processes)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    rc, wall = run_cli(args_list, log_path)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return rc, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def common_args(args: argparse.Namespace, teacher: str) -> list[str]:
    out = ["--teacher.model_name_or_path", teacher, "--teacher.pretrained_encoder", "null", "--baseline.enabled",
           "false", "--auto_distillation.evaluation.export_onnx", "false"]
    if args.regular_steps is not None:
        out += ["--auto_distillation.regular_distillation.train_steps", str(args.regular_steps)]
    for key, value in args.supernet_overrides.items():
        out += [f"{SEARCH}supernet.{key}", str(value)]
    if args.smoke:  # a teacher pass over the whole train set would dwarf the few smoke steps
        out += ["--teacher.cache_outputs", "false", "--data.max_train_samples", "512", "--data.max_eval_samples",
                "128"]
    return out


def front_points(data: dict) -> list[tuple[float, float]]:
    rows = [r for r in data["trials"] if r["status"] == "trained"]
    rows = [r for r in rows if (r.get("fidelity") == "final" if "fidelity" in r else r.get("budget", 1.0) >= 1)]
    return [(float(r["metrics"]["accuracy"]), float(r["metrics"]["latency"])) for r in rows]


def latency_budget(out: str, args: argparse.Namespace) -> float:
    """``--latency-budget-ms``, else 15% of the teacher's latency as the run measured it (``summary.json``)."""
    if args.latency_budget_ms is not None:
        return args.latency_budget_ms
    path = os.path.join(out, "summary.json")  # absent when the run trained nothing: no student within any budget
    return 0.15 * float(json.load(open(path))["teacher"]["latency"]) if os.path.isfile(path) else float("nan")


def quality(data: dict, args: argparse.Namespace, budget_ms: float) -> dict:
    points = front_points(data)
    within = [p for p in points if p[1] <= budget_ms]
    return {"hypervolume": hypervolume(points, args.ref_accuracy, args.ref_latency_ms), "budget_ms": budget_ms,
            "best_within_budget": max(within)[0] if within else None, "finals": len(points)}


def run_strategy(kind: str, seed: int, args: argparse.Namespace, teacher: str, max_trials: int | None = None) -> dict:
    """One CLI run of ``kind`` (its exit status, wall and CPU seconds kept in ``<out>.run.json``); with ``--reuse``,
    a finished run of the same name is read instead of run again."""
    out = os.path.join(args.work, f"{kind}-seed{seed}")
    path, record = os.path.join(out, "search_results.json"), out + ".run.json"
    if args.reuse and os.path.isfile(path) and os.path.isfile(record):
        run = json.load(open(record))
        rc, wall, cpu = run["rc"], run["wall_s"], run["cpu_s"]
        print(f"    {kind} seed {seed}: reusing {out} ({record})", flush=True)
    else:
        shutil.rmtree(out, ignore_errors=True)
        extra: list[str] = []
        if kind != "supernet":
            extra = [f"{SEARCH}supernet", "null", f"{SEARCH}strategy", kind, f"{SEARCH}max_trials", str(max_trials)]
            if kind == "multi_fidelity":
                extra += [f"{SEARCH}multi_fidelity", f"{{min_fraction: {args.min_fraction}, reduction_factor: 3}}"]
        rc, wall, cpu = timed_cli([RECIPE, "--output_dir", out, f"{SEARCH}seed", str(seed),
                                   *common_args(args, teacher), *extra], out + ".log")
        json.dump({"rc": rc, "wall_s": wall, "cpu_s": cpu}, open(record, "w"))
    if rc not in (0, 1) or not os.path.isfile(path):
        raise RuntimeError(f"{kind} seed {seed}: rc {rc}; see {out}.log")
    data = json.load(open(path))
    trained = [r for r in data["trials"] if r["status"] in ("trained", "failed")]
    return {"kind": kind, "seed": seed, "wall_s": wall, "cpu_s": cpu, "data": data, "evaluated": len(trained),
            **quality(data, args, latency_budget(out, args))}


def spread(rows: list[dict], n: int) -> list[dict]:
    """``n`` rows at evenly spaced ranks of proxy accuracy (all of them when there are fewer)."""
    rows = sorted(rows, key=lambda r: (r["metrics"]["accuracy"], r["number"]))
    if len(rows) <= n:
        return rows
    return [rows[round(i * (len(rows) - 1) / (n - 1))] for i in range(n)]


def standalone(arch: dict, steps: int, seed: int, args: argparse.Namespace, teacher: str) -> float | None:
    """Accuracy of ``arch`` trained by the plain pipeline for ``steps`` regular-distillation steps.

    The run's ``data.cache_dir`` is the seed's supernet run's cache: same data and teacher, so the tokenized splits
    and the teacher's logits are read, not recomputed (these runs are not timed).
    """
    name = "-".join(f"{v}" for v in arch.values())
    out = os.path.join(args.work, f"standalone-seed{seed}-{name}")
    shutil.rmtree(out, ignore_errors=True)
    shared = os.path.join(args.work, f"supernet-seed{seed}", "cache")
    space = "{" + ", ".join(f"{k}: [{v}]" for k, v in arch.items()) + "}"
    overrides = [f"{SEARCH}supernet", "null", f"{SEARCH}strategy", "plain", f"{SEARCH}max_trials", "1",
                 f"{SEARCH}search_space", space, f"{SEARCH}search_algorithm", "random",
                 "--auto_distillation.regular_distillation.train_steps", str(steps)]
    base = common_args(args, teacher)
    if "--auto_distillation.regular_distillation.train_steps" in base:  # the finalists' steps win
        i = base.index("--auto_distillation.regular_distillation.train_steps")
        del base[i:i + 2]
    if os.path.isdir(shared):
        overrides += ["--data.cache_dir", shared]
    rc, _, _ = timed_cli([RECIPE, "--output_dir", out, f"{SEARCH}seed", str(seed), *base, *overrides], out + ".log")
    path = os.path.join(out, "search_results.json")
    if rc != 0 or not os.path.isfile(path):
        print(f"    standalone {arch}: rc {rc}; see {out}.log")
        return None
    rows = [r for r in json.load(open(path))["trials"] if r["status"] == "trained"]
    return float(rows[0]["metrics"]["accuracy"]) if rows else None


def fidelity_part(run: dict, args: argparse.Namespace, teacher: str) -> dict:
    """Kendall tau proxy vs standalone, and finalists vs standalone at the same steps."""
    from autodistill_trainer.search.latency_model import kendall_tau

    data, seed = run["data"], run["seed"]
    summary = data["supernet"]
    steps = math.ceil(summary["finalist_budget"] * summary["trial_steps"] - 1e-9)
    proxies = [r for r in data["trials"] if r.get("fidelity") == "proxy" and r["status"] == "trained"]
    finals = [r for r in data["trials"] if r.get("fidelity") == "final" and r["status"] == "trained"]
    by_arch = {json.dumps(r["arch"], sort_keys=True): r for r in proxies}
    chosen = {json.dumps(r["arch"], sort_keys=True): r for r in spread(proxies, args.tau_archs)}
    for r in finals:
        key = json.dumps(r["arch"], sort_keys=True)
        if key in by_arch:
            chosen.setdefault(key, by_arch[key])
    pairs, finalist_pairs = [], []
    for key, proxy in chosen.items():
        acc = standalone(proxy["arch"], steps, seed, args, teacher)
        if acc is None:
            continue
        pairs.append((float(proxy["metrics"]["accuracy"]), acc))
        final = next((r for r in finals if json.dumps(r["arch"], sort_keys=True) == key), None)
        if final is not None:
            finalist_pairs.append((float(final["metrics"]["accuracy"]), acc))
        print(f"    {proxy['arch']}: proxy {pairs[-1][0]:.4f}, standalone ({steps} steps) {acc:.4f}"
              + (f", finalist {final['metrics']['accuracy']:.4f}" if final else ""), flush=True)
    tau = kendall_tau([p for p, _ in pairs], [s for _, s in pairs]) if len(pairs) >= 2 else float("nan")
    gain = statistics.mean(f - s for f, s in finalist_pairs) if finalist_pairs else float("nan")
    return {"tau": tau, "n_tau": len(pairs), "finalist_minus_standalone": gain, "n_finalists": len(finalist_pairs),
            "standalone_steps": steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tau-archs", type=int, default=8, help="proxies also trained standalone (>= 8)")
    parser.add_argument("--regular-steps", type=int, default=None, help="override regular train_steps (1 FTE)")
    parser.add_argument("--min-fraction", type=float, default=0.111)
    parser.add_argument("--ref-accuracy", type=float, default=0.5, help="hypervolume reference accuracy")
    parser.add_argument("--ref-latency-ms", type=float, default=10.0, help="hypervolume reference latency")
    parser.add_argument("--latency-budget-ms", type=float, default=None,
                        help="default: 15%% of the teacher's latency as each run measured it")
    parser.add_argument("--teacher-dir", default=None)
    parser.add_argument("--teacher-steps", type=int, default=60)
    parser.add_argument("--work", default="/tmp/bench_supernet_search")
    parser.add_argument("--reuse", action="store_true", help="read finished runs of the same names in --work "
                        "instead of running them again (e.g. after the fidelity part failed)")
    parser.add_argument("--smoke", action="store_true", help="1 seed, a few steps and candidates: mechanics only")
    args = parser.parse_args()
    args.supernet_overrides = {}
    if args.smoke:
        args.seeds, args.tau_archs, args.regular_steps, args.work = [0], 3, 6, args.work + "-smoke"
        args.supernet_overrides = {"train_steps": 4, "num_candidates": 6, "eval_samples": 64, "finalists": 2,
                                   "finalist_budget": 0.5, "latency_measurements": 8}
    os.makedirs(args.work, exist_ok=True)
    from _common import machine_line

    print(machine_line(), f"threads {THREADS}")
    teacher = prepare_teacher(args)
    if teacher is None:
        print(f"teacher preparation failed; see {args.work}/prep.log")
        return 1
    results = []
    for seed in args.seeds:
        sn = run_strategy("supernet", seed, args, teacher)
        summary = sn["data"]["supernet"]
        fte = summary["compute_fte"]["total"]
        print(f"seed {seed} supernet: {summary['proxies_evaluated']} proxies, {summary['finalists_trained']} "
              f"finalists, compute {fte:.2f} FTE {summary['compute_fte']}, wall {sn['wall_s']:.0f} s, cpu "
              f"{sn['cpu_s']:.0f} s, hypervolume {sn['hypervolume']:.4f}, best <= {sn['budget_ms']:.2f} ms "
              f"{sn['best_within_budget']}", flush=True)
        equal = max(1, math.ceil(fte - 1e-9))
        others = {}
        for kind in ("plain", "multi_fidelity"):
            trials = max(equal, 3) if kind == "multi_fidelity" else equal  # 3 FTE: the least one full result needs
            others[kind] = run_strategy(kind, seed, args, teacher, trials)
            o = others[kind]
            print(f"seed {seed} {kind} (max_trials {trials}): {o['evaluated']} evaluated, wall {o['wall_s']:.0f} s, "
                  f"cpu {o['cpu_s']:.0f} s, hypervolume {o['hypervolume']:.4f}, best <= {o['budget_ms']:.2f} "
                  f"ms {o['best_within_budget']}", flush=True)
        rate_sn = (summary["proxies_evaluated"] + summary["finalists_trained"]) / (sn["cpu_s"] / 3600)
        rate_plain = others["plain"]["evaluated"] / (others["plain"]["cpu_s"] / 3600)
        print(f"seed {seed}: architectures per CPU-hour: supernet {rate_sn:.0f} vs plain {rate_plain:.1f} "
              f"({rate_sn / rate_plain:.1f}x, goal >= 20x)", flush=True)
        fid = fidelity_part(sn, args, teacher)
        print(f"seed {seed}: Kendall tau proxy vs standalone {fid['tau']:.3f} over {fid['n_tau']} archs (goal >= "
              f"0.6); finalists - standalone at {fid['standalone_steps']} steps: "
              f"{fid['finalist_minus_standalone']:+.4f} over {fid['n_finalists']}", flush=True)
        results.append({"seed": seed, "rate_ratio": rate_sn / rate_plain, **fid,
                        **{f"hv_{k}": v["hypervolume"] for k, v in {"supernet": sn, **others}.items()},
                        **{f"best_{k}": v["best_within_budget"] for k, v in {"supernet": sn, **others}.items()}})
        json.dump(results, open(os.path.join(args.work, "supernet_search.json"), "w"), indent=1)  # after each seed
    mean = {k: statistics.mean(r[k] for r in results) for k in ("rate_ratio", "tau", "hv_supernet", "hv_plain",
                                                                  "hv_multi_fidelity")}
    print(f"mean over seeds {args.seeds}: archs/CPU-hour {mean['rate_ratio']:.1f}x, tau {mean['tau']:.3f}, "
          f"hypervolume supernet {mean['hv_supernet']:.4f} vs plain {mean['hv_plain']:.4f} vs multi-fidelity "
          f"{mean['hv_multi_fidelity']:.4f}")
    ok = mean["rate_ratio"] >= 20 and mean["tau"] >= 0.6
    print("PASS: archs/CPU-hour and tau goals met" if ok else "FAIL: a goal is not met (see the figures above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
