"""Latency protocol and cheap model metrics (parameters, FLOPs).

The search measures these "cheap objectives" right after building a student and before training it.
Latency follows one fixed protocol (see :func:`measure_latency`) so numbers are comparable across
trials; it is never derived from evaluation throughput.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Mapping

import torch
from torch import nn

from .timing import LatencyResult, latency_result, resolve_timer, time_samples

logger = logging.getLogger(__name__)

__all__ = [
    "LatencyResult",
    "ProfilingUnsupportedError",
    "measure_latency",
    "count_parameters",
    "count_flops",
    "profile_model",
    "dummy_inputs",
    "resolve_timer",
    "time_samples",
    "latency_result",
]


class ProfilingUnsupportedError(ValueError):
    """The model cannot be profiled by this module (not an ``nn.Module``, or no dummy batch can be built for
    it): a limit of the profiler, not a fault of the model. Pass ``inputs=`` or your own profile function."""


#: Seed of the generator that draws dummy token ids (fixed so every call sees the same batch).
DUMMY_INPUT_SEED = 0


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _forward_accepts(model: nn.Module, name: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def dummy_inputs(
    model: nn.Module,
    batch_size: int = 1,
    seq_length: int = 64,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """A deterministic dummy batch for a Transformers model, built from ``model.config``.

    ``input_ids`` are drawn uniformly in ``[0, vocab_size)`` with a fixed seed, ``attention_mask`` is all
    ones, and ``token_type_ids`` (zeros) is added only when the model's ``forward`` takes it.
    """
    config = getattr(model, "config", None)
    vocab_size = getattr(config, "vocab_size", None)
    if vocab_size is None:
        raise ProfilingUnsupportedError(
            f"Cannot build a dummy batch for {type(model).__name__}: it has no `config.vocab_size`; pass `inputs=`."
        )
    max_pos = getattr(config, "max_position_embeddings", None)
    if max_pos is not None and seq_length > max_pos:
        raise ValueError(f"seq_length={seq_length} exceeds the model's max_position_embeddings={max_pos}.")
    device = torch.device(device) if device is not None else _model_device(model)
    generator = torch.Generator().manual_seed(DUMMY_INPUT_SEED)
    input_ids = torch.randint(0, vocab_size, (batch_size, seq_length), generator=generator)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones(batch_size, seq_length, dtype=torch.long)}
    if _forward_accepts(model, "token_type_ids"):
        batch["token_type_ids"] = torch.zeros(batch_size, seq_length, dtype=torch.long)
    return {k: v.to(device) for k, v in batch.items()}


def _move(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, Mapping):
        return {k: _move(v, device) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_move(v, device) for v in inputs)
    return inputs


def _prepare_inputs(model, batch_size, seq_length, inputs, device) -> Any:
    if inputs is None:
        return dummy_inputs(model, batch_size, seq_length, device)
    return _move(inputs, device)


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _shape_of(inputs: Any, batch_size: int, seq_length: int) -> tuple[int, int]:
    """Best-effort (batch, sequence) of user-given inputs, for the record."""
    first = inputs
    if isinstance(inputs, Mapping):
        first = inputs.get("input_ids", next(iter(inputs.values()), None))
    elif isinstance(inputs, (tuple, list)) and inputs:
        first = inputs[0]
    if isinstance(first, torch.Tensor) and first.dim() >= 1:
        return int(first.shape[0]), int(first.shape[1]) if first.dim() >= 2 else 1
    return batch_size, seq_length


def measure_latency(
    model: nn.Module,
    batch_size: int = 1,
    seq_length: int = 64,
    num_threads: int | None = 1,
    warmup: int = 10,
    repeats: int = 30,
    device: torch.device | str | None = None,
    inputs: Any = None,
    min_sample_ms: float = 20.0,
    max_inner_loops: int = 1000,
    timer: str = "auto",
    estimator: str = "min",
    rounds: int = 3,
) -> LatencyResult:
    """Measure the forward latency of ``model`` with a fixed protocol.

    Protocol:

    1. Inputs: ``inputs`` if given (a dict of keyword tensors, a tuple of positional tensors or one tensor),
       else :func:`dummy_inputs` (``batch_size`` x ``seq_length`` random token ids, all-ones mask).
    2. ``model.eval()`` (its previous training mode is restored afterwards) and ``torch.inference_mode()``.
    3. ``torch.set_num_threads(num_threads)`` for the measurement; the previous count is restored after
       (``num_threads=None`` keeps the current count, and that count is recorded).
    4. ``warmup`` untimed forward passes.
    5. Calibration: the number of forward passes per sample (``inner_loops``) is doubled until one sample
       lasts at least ``min_sample_ms`` (capped at ``max_inner_loops``), which lowers timer and scheduler noise.
    6. ``repeats`` timed samples in ``rounds`` rounds 0.5 s apart (:func:`~autodistill_trainer.timing.time_samples`);
       on CUDA ``torch.cuda.synchronize`` runs before starting and before stopping the clock. The garbage
       collector is paused while timing.
    7. Per-forward time of each sample = sample time / ``inner_loops``; the headline ``latency_ms`` is the
       ``estimator`` of the samples: ``min`` (default: the fastest sample, robust to other processes, see
       :mod:`autodistill_trainer.timing`) or ``median``; the median is recorded either way.

    ``timer``: ``"wall"`` uses ``time.perf_counter``. ``"thread_cpu"`` uses ``time.thread_time``, the CPU time
    of the calling thread: with one intra-op thread on CPU all of the forward runs in that thread, so on a
    dedicated core it equals the wall latency, but it does not count time the thread was preempted by other
    processes. On a shared 2-core machine this took the across-call CV of the median from ~30% (wall) to
    ~2-5%. ``"auto"`` (default) picks ``"thread_cpu"`` on CPU with one thread and ``"wall"`` otherwise
    (several threads, CUDA). ``"thread_cpu"`` is refused for CUDA or more than one thread, where it would
    not measure the forward.

    When ``device`` is given the model is moved there (in place).
    """
    if timer not in ("auto", "wall", "thread_cpu"):
        raise ValueError(f"timer must be 'auto', 'wall' or 'thread_cpu', got {timer!r}.")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}.")
    if device is not None:
        model.to(device)
    dev = _model_device(model)
    batch = _prepare_inputs(model, batch_size, seq_length, inputs, dev)
    if inputs is not None:
        batch_size, seq_length = _shape_of(batch, batch_size, seq_length)
    cuda = dev.type == "cuda"
    single_cpu_thread = dev.type == "cpu" and (
        num_threads == 1 if num_threads is not None else torch.get_num_threads() == 1
    )
    timer = resolve_timer(timer, single_cpu_thread)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    previous_threads = torch.get_num_threads()
    was_training = model.training
    try:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        used_threads = torch.get_num_threads()
        model.eval()
        with torch.inference_mode():
            samples, inner_loops = time_samples(
                lambda: _call(model, batch), warmup=warmup, repeats=repeats, min_sample_ms=min_sample_ms,
                max_inner_loops=max_inner_loops, timer=timer, sync=sync, rounds=rounds,
            )
    finally:
        torch.set_num_threads(previous_threads)
        model.train(was_training)

    result = latency_result(samples, inner_loops, estimator, rounds, batch_size=batch_size, seq_length=seq_length,
                            num_threads=used_threads, device=str(dev), timer=timer)
    logger.debug(
        "latency %s: %s %.3f ms (cv %.3f, %d x %d loops, %d threads, %s timer)",
        type(model).__name__,
        estimator,
        result.latency_ms,
        result.cv,
        repeats,
        inner_loops,
        used_threads,
        timer,
    )
    return result


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements; shared (tied) parameters are counted once.

    With ``trainable_only`` only parameters with ``requires_grad`` are counted.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(
    model: nn.Module,
    batch_size: int = 1,
    seq_length: int = 64,
    inputs: Any = None,
) -> int:
    """FLOPs of one forward pass, counted by ``torch.utils.flop_counter.FlopCounterMode``.

    Uses the same inputs as :func:`measure_latency` (the dummy batch unless ``inputs`` is given). The
    counter's convention: a matmul of (M x K) by (K x N) is ``2*M*N*K`` FLOPs; element-wise ops, softmax,
    normalization and embedding lookups count zero. Runs under ``torch.no_grad()`` in eval mode (the
    previous training mode is restored).
    """
    from torch.utils.flop_counter import FlopCounterMode

    batch = _prepare_inputs(model, batch_size, seq_length, inputs, _model_device(model))
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            _call(model, batch)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def profile_model(
    model: nn.Module,
    batch_size: int = 1,
    seq_length: int = 64,
    num_threads: int | None = 1,
    warmup: int = 10,
    repeats: int = 30,
    **latency_kwargs: Any,
) -> dict[str, float | int]:
    """The search's cheap objectives for a freshly built model.

    Raises :class:`ProfilingUnsupportedError` when ``model`` is not an ``nn.Module`` or no dummy batch can
    be built for it (no ``config.vocab_size`` and no ``inputs=``); errors of the model's own forward pass
    propagate as they are.

    Returns ``{"params": int, "flops": int, "latency": float, "latency_cv": float}`` where ``latency`` is the
    forward time in milliseconds from :func:`measure_latency` (its ``latency_ms``) and ``latency_cv`` the coefficient of
    variation of its samples. Extra keyword arguments go to :func:`measure_latency`.
    """
    if not isinstance(model, nn.Module):
        raise ProfilingUnsupportedError(f"cannot profile a {type(model).__name__}: it is not a torch nn.Module.")
    latency = measure_latency(
        model,
        batch_size=batch_size,
        seq_length=seq_length,
        num_threads=num_threads,
        warmup=warmup,
        repeats=repeats,
        **latency_kwargs,
    )
    return {
        "params": count_parameters(model),
        "flops": count_flops(model, batch_size=batch_size, seq_length=seq_length, inputs=latency_kwargs.get("inputs")),
        "latency": float(latency.latency_ms),
        "latency_cv": float(latency.cv),
    }
