"""Timing of one forward call: warm-up, calibration, samples in rounds, and the latency estimate.

Used for PyTorch (:func:`~autodistill_trainer.profiling.measure_latency`) and ONNX Runtime
(:func:`~autodistill_trainer.deploy.runtimes.measure_onnx_latency`) alike, so every model and runtime is timed with
one protocol.

Why the default estimate is the fastest sample, taken over several rounds: on a shared machine another process
only ever *adds* time to a sample (cache and memory-bandwidth contention, frequency changes; with the thread-CPU timer
preemption is already excluded), and its load comes in bursts that last longer than one sample. Measured on this
project's 2-core VM (bench/search_efficiency.py, 24 demo-space students in ONNX Runtime, the other core busy with
development jobs, then additionally saturated by a spinning process): Kendall tau between the two rankings was 0.72
for the median of 30 consecutive samples and 0.91 for the fastest of 30 samples taken in 3 rounds 0.5 s apart. This
is the advice of Python's ``timeit`` ("the lowest value gives a lower bound for how fast your machine can run the
given code snippet; higher values ... are typically ... caused by other processes interfering"). ``median`` remains
available (``evaluation.latency_estimator: median``) and the median is recorded beside the estimate either way.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

__all__ = ["ESTIMATORS", "ROUND_PAUSE_S", "LatencyResult", "resolve_timer", "round_sizes", "time_samples",
           "latency_result", "estimate"]

#: How a latency is estimated from the samples: ``min`` (the fastest sample, default) or ``median``.
ESTIMATORS = ("min", "median")

#: Seconds between two rounds of samples (lets a burst of load from other processes pass).
ROUND_PAUSE_S = 0.5


@dataclass
class LatencyResult:
    """Result of one latency measurement. Times are per forward pass, in milliseconds.

    ``latency_ms`` is the headline number: the ``estimator`` (``min`` or ``median``) of the samples. ``cv`` is
    ``std_ms / mean_ms`` over the ``repeats`` timed samples, taken in ``rounds`` rounds. ``samples_ms`` holds each
    sample (already divided by ``inner_loops``, the number of forward passes each sample timed). ``timer`` is
    ``"wall"`` (``time.perf_counter``) or ``"thread_cpu"`` (``time.thread_time``), see :func:`resolve_timer`.
    """

    latency_ms: float
    median_ms: float
    mean_ms: float
    std_ms: float
    cv: float
    min_ms: float
    repeats: int
    batch_size: int
    seq_length: int
    num_threads: int
    device: str
    inner_loops: int = 1
    timer: str = "wall"
    estimator: str = "min"
    rounds: int = 1
    samples_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of all fields (JSON-serializable)."""
        return asdict(self)


def resolve_timer(timer: str, single_cpu_thread: bool) -> str:
    """The timer of a measurement: ``"auto"`` is ``"thread_cpu"`` for one CPU thread, else ``"wall"``.

    Raises ValueError for an unknown timer, or ``"thread_cpu"`` when the work does not run in one CPU thread.
    """
    if timer not in ("auto", "wall", "thread_cpu"):
        raise ValueError(f"timer must be 'auto', 'wall' or 'thread_cpu', got {timer!r}.")
    if timer == "auto":
        return "thread_cpu" if single_cpu_thread else "wall"
    if timer == "thread_cpu" and not single_cpu_thread:
        raise ValueError("timer='thread_cpu' needs a CPU model measured with num_threads=1; use timer='wall'.")
    return timer


def round_sizes(repeats: int, rounds: int) -> list[int]:
    """How ``repeats`` samples split into ``rounds`` rounds: as even as possible, earlier rounds one larger, no
    empty round (``rounds`` is capped at ``repeats``). ``round_sizes(30, 3) == [10, 10, 10]``,
    ``round_sizes(10, 3) == [4, 3, 3]``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}.")
    rounds = min(rounds, repeats)
    base, extra = divmod(repeats, rounds)
    return [base + (1 if i < extra else 0) for i in range(rounds)]


def time_samples(
    call: Callable[[], Any],
    warmup: int = 10,
    repeats: int = 30,
    min_sample_ms: float = 20.0,
    max_inner_loops: int = 1000,
    timer: str = "wall",
    sync: Callable[[], None] | None = None,
    rounds: int = 1,
    pause_s: float = ROUND_PAUSE_S,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[float], int]:
    """Time any forward ``call`` (PyTorch or ONNX Runtime): the protocol's warm-up, calibration and samples.

    ``warmup`` untimed calls, calibration of the calls per sample (``inner_loops``, doubled or extrapolated until
    one sample lasts ``min_sample_ms``, capped at ``max_inner_loops``), then ``repeats`` timed samples with the
    garbage collector paused, in ``rounds`` rounds (:func:`round_sizes`) separated by ``pause_s`` seconds of
    ``sleep``. ``timer`` is ``"wall"`` or ``"thread_cpu"`` (see :func:`resolve_timer`); ``sync`` runs before
    starting and before stopping the clock. Returns (per-call milliseconds of each sample, inner_loops).
    """
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}.")
    sizes = round_sizes(repeats, rounds)
    clock = time.thread_time if timer == "thread_cpu" else time.perf_counter
    sync = sync or (lambda: None)

    def timed(loops: int) -> float:
        sync()
        start = clock()
        for _ in range(loops):
            call()
        sync()
        return clock() - start

    for _ in range(warmup):
        call()
    sync()
    inner_loops = 1
    while True:
        elapsed = timed(inner_loops)
        if elapsed * 1000.0 >= min_sample_ms or inner_loops >= max_inner_loops:
            break
        # Jump close to the target instead of only doubling when the first sample is very short.
        guess = int(inner_loops * min_sample_ms / max(elapsed * 1000.0, 1e-6) * 1.1) + 1
        inner_loops = min(max_inner_loops, max(inner_loops * 2, guess))
    samples: list[float] = []
    for index, size in enumerate(sizes):
        if index:
            sleep(pause_s)
            call()  # one untimed call: caches touched by whatever ran during the pause are warmed again
        gc_was_enabled = gc.isenabled()
        gc.collect()
        gc.disable()
        try:
            samples.extend(timed(inner_loops) * 1000.0 / inner_loops for _ in range(size))
        finally:
            if gc_was_enabled:
                gc.enable()
    return samples, inner_loops


def estimate(samples: list[float], estimator: str) -> float:
    """The latency estimate of ``samples``: the fastest (``min``) or the ``median``."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {list(ESTIMATORS)}, got {estimator!r}.")
    return min(samples) if estimator == "min" else statistics.median(samples)


def latency_result(samples: list[float], inner_loops: int, estimator: str = "min", rounds: int = 1,
                   **fields: Any) -> LatencyResult:
    """A :class:`LatencyResult` from the per-call samples of :func:`time_samples` (``fields``: the other fields)."""
    mean = statistics.fmean(samples)
    std = statistics.pstdev(samples) if len(samples) > 1 else 0.0
    return LatencyResult(latency_ms=estimate(samples, estimator), median_ms=statistics.median(samples), mean_ms=mean,
                         std_ms=std, cv=std / mean if mean > 0 else math.nan, min_ms=min(samples),
                         repeats=len(samples), inner_loops=inner_loops, estimator=estimator,
                         rounds=len(round_sizes(len(samples), rounds)), samples_ms=samples, **fields)
