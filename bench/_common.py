"""Shared helpers of the step benchmarks: thread set-up, real data, the demo models, paired timing, peak RSS.

Not a benchmark itself. Every benchmark imports this first (it sets the thread count before torch loads).
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any, Callable, Sequence


def setup_threads(argv: Sequence[str] | None = None) -> int:
    """Read ``--threads N`` (default 1) from argv and pin OMP/MKL/torch to it; call before importing torch."""
    argv = list(sys.argv if argv is None else argv)
    threads = 1
    for i, token in enumerate(argv):
        if token == "--threads" and i + 1 < len(argv):
            threads = int(argv[i + 1])
        elif token.startswith("--threads="):
            threads = int(token.split("=", 1)[1])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    return threads


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def peak_rss_mib() -> float:
    """Peak resident set size of this process (MiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def current_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ``/proc/self/clear_refs`` 5); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def hwm_rss_mib() -> float:
    """Peak RSS since start or since the last :func:`reset_peak_rss` (``VmHWM``), MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def machine_line() -> str:
    import torch

    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}, "
        f"torch {torch.__version__}, torch threads {torch.get_num_threads()} "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}), "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


# ------------------------------------------------------------------------------------------- data and models
STUDENT_ARCH = {
    "hidden_size": 128,
    "intra_bottleneck_size": 64,
    "num_attention_heads": 2,
    "intermediate_size": 256,
    "num_feedforward_networks": 2,
    "num_hidden_layers": 6,
    "embedding_size": 64,
}


def load_data(max_length: int = 64, train_samples: int | None = None):
    """Tokenized Rotten Tomatoes demo splits (teacher's tokenizer, no padding), the tokenizer and a padding collator."""
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from autodistill_trainer.data import load_rotten_tomatoes_demo, offline_teacher_path, tokenize_dataset

    tokenizer = AutoTokenizer.from_pretrained(offline_teacher_path())
    raw = load_rotten_tomatoes_demo()
    if train_samples:
        raw["train"] = raw["train"].select(range(min(train_samples, len(raw["train"]))))
    tokenized = tokenize_dataset(raw, tokenizer, max_length)
    return tokenized, tokenizer, DataCollatorWithPadding(tokenizer)


def build_student(seed: int = 0):
    """The 6-layer MobileBERT student (hidden 128, bottleneck 64, 2 heads, intermediate 256, embedding 64), eager."""
    from transformers import MobileBertForSequenceClassification

    from autodistill_trainer.builders import build_model, default_mobilebert_base_config

    return build_model(
        MobileBertForSequenceClassification,
        default_mobilebert_base_config(num_labels=2),
        STUDENT_ARCH,
        seed=seed,
        attn_implementation="eager",
    )


def build_teacher(path: str | None = None):
    """all-MiniLM-L6-v2 with a sequence-classification head (random head unless `path` is a fine-tuned dir), eager."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from autodistill_trainer.data import offline_teacher_path

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        path or offline_teacher_path(), num_labels=2, attn_implementation="eager"
    )
    return model.eval()


def training_args(output_dir: str, **kwargs: Any):
    from transformers import TrainingArguments

    defaults = dict(
        output_dir=output_dir,
        per_device_train_batch_size=32,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    defaults.update(kwargs)
    return TrainingArguments(**defaults)


def index_batches(n_examples: int, batch_size: int, count: int, seed: int = 0) -> list[list[int]]:
    """`count` random batches of example indices (a fixed, shared order so variants see the same batches)."""
    import random

    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < batch_size * count:
        perm = list(range(n_examples))
        rng.shuffle(perm)
        order.extend(perm)
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(count)]


def fetch(dataset, collator, indices: list[int]) -> dict:
    """What a DataLoader worker does for one batch: read the rows, collate them."""
    rows = dataset.__getitems__(indices) if hasattr(dataset, "__getitems__") else [dataset[i] for i in indices]
    return collator(rows)


class Step:
    """One timed variant: ``run(batch_number)`` does a full step; ``cpu``/``wall`` collect ms per step."""

    def __init__(self, name: str, run: Callable[[int], Any]):
        self.name, self.run = name, run
        self.cpu: list[float] = []
        self.wall: list[float] = []
        self.faults: list[int] = []  # minor page faults of the calling thread during the step

    def timed(self, k: int) -> None:
        gc.collect()
        f0 = _thread_minflt()
        w0, c0 = time.perf_counter(), time.thread_time()
        self.run(k)
        c1, w1 = time.thread_time(), time.perf_counter()
        self.faults.append(_thread_minflt() - f0)
        self.cpu.append(1000 * (c1 - c0))
        self.wall.append(1000 * (w1 - w0))


def _thread_minflt() -> int:
    who = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
    return resource.getrusage(who).ru_minflt


def interleave(
    steps: Sequence[Step], n_batches: int, warmup: int, repeats: int, log: Callable[[str], None] = print
) -> None:
    """Warm up each variant, then `repeats` rounds; round r runs every variant on batch r (rotating the order)."""
    for r in range(warmup):
        for s in steps:
            s.run(r % n_batches)
    t0 = time.perf_counter()
    for r in range(repeats):
        k = r % n_batches
        order = list(steps[r % len(steps) :]) + list(steps[: r % len(steps)])
        for s in order:
            s.timed(k)
        if (r + 1) % max(1, repeats // 4) == 0:
            log(f"  ... {r + 1}/{repeats} rounds, {time.perf_counter() - t0:.0f} s")


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def paired_ratio(a: Step, b: Step, attr: str = "cpu") -> float:
    """Median over rounds of a/b (same batch in each round)."""
    return statistics.median(x / y for x, y in zip(getattr(a, attr), getattr(b, attr)))


def summary_line(s: Step) -> str:
    q = statistics.quantiles(s.cpu, n=4) if len(s.cpu) >= 4 else [min(s.cpu), median(s.cpu), max(s.cpu)]
    return (
        f"{s.name:<44} cpu median {median(s.cpu):8.1f} ms (IQR {q[0]:.1f}-{q[-1]:.1f})   "
        f"wall median {median(s.wall):8.1f} ms   page faults/step {median(s.faults):8.0f}"
    )


def add_protocol_args(parser: Any) -> None:
    """The latency protocol's command-line options (threads, batch, sequence length, warm-up, repeats)."""
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seq-length", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
