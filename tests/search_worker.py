"""Helper processes for the multi-process search tests (tests/test_search_distributed.py).

Modes:
  create   create the study once up front (schema race on fresh databases)
  worker   one search worker sharing a study; logs "start"/"done" lines (pid, arch) to --log
  ddp      two torch.distributed (gloo) ranks running one search together; each rank logs its archs
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

torch.set_num_threads(1)

from autodistill_trainer.search import AutoDistillation  # noqa: E402


class Toy(torch.nn.Module):
    def __init__(self, arch: dict) -> None:
        super().__init__()
        self.arch = dict(arch)
        self.lin = torch.nn.Linear(2, 2)


def toy_accuracy(arch: dict) -> float:
    return 0.5 + 0.04 * arch["a"] - 0.01 * (arch["b"] - 2) ** 2


def fake_profile(model: Toy) -> dict:
    return {
        "params": 10 * model.arch["a"] + model.arch["b"],
        "flops": 100 * model.arch["a"],
        "latency": 1.0 + model.arch["a"] + 0.1 * model.arch["b"],
    }


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def make_config(args: argparse.Namespace) -> dict:
    return {
        "search": {
            "search_space": {"a": [1, 2, 3], "b": [1, 2, 3]} if args.space == "3x3" else {"a": [1, 2], "b": [1, 2, 3]},
            "search_algorithm": args.algorithm,
            "metrics": ["accuracy", "latency"],
            "higher_is_better": [True, False],
            "max_trials": args.max_trials,
            "seed": args.seed,
            "storage": args.storage,
            "study_name": args.study,
            "heartbeat_interval": args.heartbeat,
            "grace_period": args.grace,
        }
    }


def run_worker(args: argparse.Namespace) -> None:
    first = {"pending": True}

    def train_func(model: Toy) -> None:
        arch = json.dumps(model.arch, sort_keys=True)
        _append(args.log, f"start {os.getpid()} {arch}")
        delay = args.first_sleep if (first["pending"] and args.first_sleep) else args.sleep
        first["pending"] = False
        time.sleep(delay)
        _append(args.log, f"done {os.getpid()} {arch}")

    def eval_func(model: Toy) -> dict:
        return {"accuracy": toy_accuracy(model.arch)}

    agent = AutoDistillation(Toy, make_config(args), train_func, eval_func, fake_profile, output_dir=args.out)
    if args.hostname:
        agent.hostname = args.hostname
    if args.mode == "create":
        agent.study  # noqa: B018 - creates the study and its schema
        return
    agent.search_loop()


def _ddp_rank(rank: int, args: argparse.Namespace) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{args.out}/ddp_init", rank=rank, world_size=2)
    log = os.path.join(args.out, f"rank{rank}.log")

    def train_func(model: Toy) -> Toy:
        t = torch.ones(1) * (rank + 1)
        dist.all_reduce(t)  # collective: hangs unless both ranks train the same trial
        assert t.item() == 3.0
        _append(log, json.dumps(model.arch, sort_keys=True))
        return model

    def eval_func(model: Toy) -> dict:
        t = torch.tensor([toy_accuracy(model.arch)])
        dist.all_reduce(t)
        return {"accuracy": float(t.item()) / 2}

    cfg = make_config(args)
    cfg["search"]["storage"] = f"sqlite:///{args.out}/ddp.db"
    agent = AutoDistillation(Toy, cfg, train_func, eval_func, fake_profile, output_dir=args.out)
    best = agent.search_loop()
    with open(os.path.join(args.out, f"rank{rank}.result.json"), "w") as fh:
        json.dump({"best": best, "n_rows": len(agent.search_result), "has_study": agent.study is not None}, fh)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["create", "worker", "ddp"])
    p.add_argument("--storage")
    p.add_argument("--study", default="toy")
    p.add_argument("--out", required=True)
    p.add_argument("--log")
    p.add_argument("--max-trials", type=int, default=6)
    p.add_argument("--sleep", type=float, default=0.2)
    p.add_argument("--first-sleep", type=float, default=0.0)
    p.add_argument("--hostname")
    p.add_argument("--heartbeat", type=int, default=1)
    p.add_argument("--grace", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--algorithm", default="random")
    p.add_argument("--space", default="3x3")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{os.getpid()}] %(name)s: %(message)s")
    if args.mode == "ddp":
        import torch.multiprocessing as mp

        mp.spawn(_ddp_rank, args=(args,), nprocs=2, join=True)
    else:
        run_worker(args)


if __name__ == "__main__":
    main()
