"""Benchmark: cost of the demo recipe's search with the teacher-output cache vs without it.

Runs ``run_autodistill.py <recipe>`` twice, once with ``--teacher.cache_outputs true`` and once with ``false``,
both with the same already fine-tuned teacher (``--teacher.model_name_or_path <dir> --teacher.pretrained_encoder
null``), so that teacher fine-tuning is not part of the comparison, and with overrides that keep it short
(default: 2 trials, flash stages 10 steps, regular stage 300 steps, no baseline). Each run gets its own
``output_dir`` (so the cached run makes its one teacher pass inside the search, as a fresh search would).

The teacher: ``--teacher-dir DIR`` (a fine-tuned sequence-classification model with its tokenizer), else a
preparation run of the CLI fine-tunes ``teacher.pretrained_encoder`` for ``--teacher-steps`` steps (its quality
does not matter for timing) and ``<work>/prep/teacher`` is used; it is reused by later invocations.

Reported per run: wall time and user+sys CPU time of the whole process (``/usr/bin/time -v`` if present, else
``resource.getrusage(RUSAGE_CHILDREN)``), peak RSS, the search part (sum of the ``trial ... in Xs`` log lines),
each distillation stage's time, and the ratios no-cache / cache. Target: none fixed (the brief asks for the
figures); PASS means the cached search is not slower than the uncached one (wall and CPU ratio >= 1.0) and
its regular stages after the first made no teacher pass.

    python bench/search_cost.py [--teacher-dir DIR] [--work /tmp/bench_search_cost] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL_OVERRIDES = [
    "--max_trials",
    "2",
    "--auto_distillation.regular_distillation.train_steps",
    "300",
    "--auto_distillation.flash_distillation.train_steps",
    "10",
    "--baseline.enabled",
    "false",
]
QUICK_OVERRIDES = ["--max_trials", "1", "--baseline.enabled", "false"]


def run_cli(args_list: list[str], log_path: str, threads: int) -> dict:
    """Run the CLI under /usr/bin/time -v; return wall, cpu, peak RSS, return code."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
    )
    cmd = [sys.executable, os.path.join(REPO, "run_autodistill.py"), *args_list]
    timer = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    if timer:
        cmd = [timer, "-v", *cmd]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = open(log_path, errors="replace").read()
    result = {
        "rc": rc,
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "peak_rss_mib": after.ru_maxrss / 1024,
        "rss_source": "getrusage(RUSAGE_CHILDREN) (max over children so far)",
    }
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        result["peak_rss_mib"], result["rss_source"] = int(m.group(1)) / 1024, "/usr/bin/time -v"
    trial_lines = re.findall(r"trial \d+/\d+ \(#\d+\) (\{.*?\}) -> .* in ([\d.]+)s", text)
    trials = [float(secs) for _, secs in trial_lines]
    stages = re.findall(r"Stage (.+?) done: train loss [\d.na-]+ in ([\d.]+)s", text)
    result.update(
        search_s=sum(trials),
        trials_s=trials,
        archs=[arch for arch, _ in trial_lines],
        stages=[(name, float(s)) for name, s in stages],
        teacher_passes=len(re.findall(r"Computing teacher outputs for", text)),
        cache_reads=len(re.findall(r"Training steps read the cached teacher outputs", text)),
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recipe", default=None, help="default: recipes/rotten_tomatoes_plain.yaml (--quick: recipes/smoke.yaml)"
    )
    parser.add_argument("--teacher-dir", default=None, help="an already fine-tuned teacher (skips the preparation run)")
    parser.add_argument("--teacher-steps", type=int, default=60, help="fine-tuning steps of the preparation run")
    parser.add_argument("--work", default="/tmp/bench_search_cost", help="output directories of the runs")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the runs")
    parser.add_argument("--order", choices=["cache-first", "nocache-first"], default="nocache-first")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke recipe, 1 tiny trial per run (~30 s with a "
        "prepared teacher; the first time a ~15 s preparation run fine-tunes one); PASS checks only "
        "the mechanics (one teacher pass, the regular stages read the cache)",
    )
    parser.add_argument("overrides", nargs="*", help="extra CLI overrides after --, applied to both runs")
    args = parser.parse_args()
    recipe = args.recipe or os.path.join(REPO, "recipes", "smoke.yaml" if args.quick else "rotten_tomatoes_plain.yaml")
    work = os.path.join(args.work, "quick" if args.quick else "full")
    os.makedirs(work, exist_ok=True)
    overrides = (QUICK_OVERRIDES if args.quick else FULL_OVERRIDES) + list(args.overrides)

    import platform

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; runs use OMP_NUM_THREADS={args.threads}"
    )
    print(f"recipe: {os.path.relpath(recipe, REPO)}; overrides: {' '.join(overrides)}")

    teacher_dir = args.teacher_dir
    if teacher_dir is None:
        prep = os.path.join(work, "prep")
        teacher_dir = os.path.join(prep, "teacher")
        if not os.path.isfile(os.path.join(teacher_dir, "config.json")):
            steps = 4 if args.quick else args.teacher_steps
            print(f"preparing the teacher: CLI fine-tunes the recipe's encoder for {steps} steps -> {teacher_dir}")
            r = run_cli(
                [
                    recipe,
                    "--output_dir",
                    prep,
                    "--teacher.finetune.max_steps",
                    str(steps),
                    "--teacher.cache_outputs",
                    "false",
                    "--max_trials",
                    "1",
                    "--baseline.enabled",
                    "false",
                    "--auto_distillation.regular_distillation.train_steps",
                    "1",
                    "--auto_distillation.flash_distillation.train_steps",
                    "1",
                ],
                os.path.join(work, "prep.log"),
                args.threads,
            )
            print(f"  preparation run: rc {r['rc']}, {r['wall_s']:.0f} s (not part of the comparison)")
            if r["rc"] != 0 or not os.path.isfile(os.path.join(teacher_dir, "config.json")):
                print(f"preparation failed; see {os.path.join(work, 'prep.log')}")
                print("FAIL")
                return 1
        else:
            print(f"teacher: reusing {teacher_dir}")
    else:
        print(f"teacher: {teacher_dir}")

    results = {}
    order = [True, False] if args.order == "cache-first" else [False, True]
    for cache in order:
        name = "cache" if cache else "no_cache"
        out = os.path.join(work, name)
        shutil.rmtree(out, ignore_errors=True)  # a fresh output_dir: no cache file or tokenized data carried over
        print(f"run {name}: ...", flush=True)
        r = run_cli(
            [
                recipe,
                "--output_dir",
                out,
                "--teacher.model_name_or_path",
                teacher_dir,
                "--teacher.pretrained_encoder",
                "null",
                "--teacher.cache_outputs",
                str(cache).lower(),
                *overrides,
            ],
            os.path.join(work, f"{name}.log"),
            args.threads,
        )
        results[name] = r
        print(
            f"  rc {r['rc']}: wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB "
            f"({r['rss_source']}), search part {r['search_s']:.1f} s "
            f"(trials {', '.join(f'{t:.1f}' for t in r['trials_s'])}), "
            f"teacher passes {r['teacher_passes']}, stages reading the cache {r['cache_reads']}"
        )
        for arch in r["archs"]:
            print(f"    trial arch {arch}")
        for stage, secs in r["stages"]:
            print(f"    stage {stage}: {secs:.1f} s")
        if r["rc"] != 0:
            print(f"  run failed; see {os.path.join(work, name + '.log')}")

    c, n = results["cache"], results["no_cache"]
    if c["rc"] or n["rc"]:
        print("FAIL: a run failed")
        return 1
    if c["archs"] != n["archs"]:
        print(f"note: the two runs trained different architectures ({c['archs']} vs {n['archs']}): compare with care")
    wall_ratio, cpu_ratio = n["wall_s"] / c["wall_s"], n["cpu_s"] / c["cpu_s"]
    search_ratio = n["search_s"] / c["search_s"] if c["search_s"] else float("nan")
    regular_c = sum(s for name, s in c["stages"] if "regular" in name.lower())
    regular_n = sum(s for name, s in n["stages"] if "regular" in name.lower())
    print(
        f"\nno cache / cache: wall {wall_ratio:.3f}, CPU {cpu_ratio:.3f}, search part {search_ratio:.3f}; "
        f"regular stages {regular_n:.1f} s vs {regular_c:.1f} s (the first cached one includes the teacher pass)"
    )
    print(f"peak RSS: cache {c['peak_rss_mib']:.0f} MiB, no cache {n['peak_rss_mib']:.0f} MiB")
    summary = {
        "recipe": recipe,
        "overrides": overrides,
        "threads": args.threads,
        "teacher_dir": teacher_dir,
        "results": results,
        "ratios": {"wall": wall_ratio, "cpu": cpu_ratio, "search": search_ratio},
    }
    with open(os.path.join(work, "search_cost.json"), "w") as f:
        json.dump(summary, f, indent=2)
    # The cache must make exactly one teacher pass and every regular stage must read it; in full mode the cached
    # search must also not be slower. (The smoke recipe's 6-step stages are too short for the pass to pay off.)
    mechanics = c["teacher_passes"] == 1 and c["cache_reads"] == len(c["trials_s"]) and n["teacher_passes"] == 0
    ok = mechanics and (args.quick or (wall_ratio >= 1.0 and cpu_ratio >= 1.0))
    print(
        f"\n{'PASS' if ok else 'FAIL'}: search without cache / with cache = {wall_ratio:.2f}x wall, "
        f"{cpu_ratio:.2f}x CPU "
        f"(cached run made {c['teacher_passes']} teacher pass(es), {c['cache_reads']} stage(s) read the cache"
        f"{'; quick mode judges only these' if args.quick else ''}); {args.threads} thread(s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
