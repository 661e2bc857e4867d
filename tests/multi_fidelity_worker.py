"""A toy multi-fidelity search in its own process (tests/test_multi_fidelity.py): kill -9 and PostgreSQL tests.

Every ``train_func(model, budget)`` call appends ``start``/``done`` lines ``<pid> <budget> <arch json>`` to --log.
``--die-at-budget B``: the process kills itself (SIGKILL) the first time it starts training at budget B, once
the log holds no earlier death (a marker file next to the log), so a rerun with the same flag goes on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

torch.set_num_threads(1)

from autodistill_trainer.search import AutoDistillation  # noqa: E402
from search_worker import _append  # noqa: E402  (tests/ is this script's directory)

SPACE = {"a": [1, 2, 3, 4, 5], "b": [1, 2, 3, 4]}


class Toy(torch.nn.Module):
    def __init__(self, arch: dict) -> None:
        super().__init__()
        self.arch = dict(arch)
        self.budget = None
        self.lin = torch.nn.Linear(2, 2)


def toy_accuracy(arch: dict, budget: float) -> float:
    """Higher with a and with the budget; b costs latency and helps a little."""
    return round(0.5 + 0.05 * arch["a"] + 0.01 * arch["b"] + 0.1 * budget, 6)


def toy_profile(model: Toy) -> dict:
    return {"params": 10 * model.arch["a"] + model.arch["b"], "flops": 100 * model.arch["a"],
            "latency": 1.0 + model.arch["a"] + 0.5 * model.arch["b"]}


def make_config(args: argparse.Namespace) -> dict:
    return {"search": {
        "search_space": SPACE, "search_algorithm": "random", "metrics": ["accuracy", "latency"],
        "higher_is_better": [True, False], "max_trials": args.max_trials, "seed": args.seed,
        "storage": args.storage, "study_name": args.study, "heartbeat_interval": 1, "grace_period": 3,
        "multi_fidelity": {"min_fraction": 0.111, "reduction_factor": 3},
    }}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["create", "worker"])
    p.add_argument("--storage")
    p.add_argument("--study", default="mf")
    p.add_argument("--out", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--max-trials", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--hostname")
    p.add_argument("--die-at-budget", type=float)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{os.getpid()}] %(name)s: %(message)s")
    marker = args.log + ".died"

    def train_func(model: Toy, budget: float) -> None:
        arch = json.dumps(model.arch, sort_keys=True)
        _append(args.log, f"start {os.getpid()} {budget} {arch}")
        if args.die_at_budget is not None and budget == args.die_at_budget and not os.path.exists(marker):
            _append(marker, arch)
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(args.sleep)
        model.budget = budget
        _append(args.log, f"done {os.getpid()} {budget} {arch}")

    def eval_func(model: Toy) -> dict:
        return {"accuracy": toy_accuracy(model.arch, model.budget)}

    agent = AutoDistillation(Toy, make_config(args), train_func, eval_func, toy_profile, output_dir=args.out)
    if args.hostname:
        agent.hostname = args.hostname
    if args.mode == "create":
        agent.study  # noqa: B018 - creates the study and its schema
        return
    agent.search_loop()


if __name__ == "__main__":
    main()
