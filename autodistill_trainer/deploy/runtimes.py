"""Latency per runtime with one protocol, and the search's profile function on a chosen runtime.

``pytorch`` is :func:`~autodistill_trainer.profiling.measure_latency` (eager). ``onnxruntime`` and
``onnxruntime-int8`` export the model (:func:`~.onnx_export.export_onnx`) to a temporary directory and time an
ONNX Runtime session with the same protocol: the same dummy batch (batch x sequence), ``intra_op_num_threads`` =
the protocol's thread count, the same warm-up, calibration, repeats and median (``profiling.time_samples``). With one
thread ONNX Runtime runs the graph in the calling thread (its process CPU time equals the thread's), so the
``thread_cpu`` timer applies to it as to PyTorch. Parameters and FLOPs always come from the PyTorch model.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from torch import nn

from ..configs.sections import ONNX_EXPORT_SCOPES
from ..errors import ConfigError
from ..profiling import ProfilingUnsupportedError, count_flops, count_parameters, dummy_inputs, measure_latency
from ..timing import LatencyResult, latency_result, resolve_timer, time_samples
from . import ONNX_INSTALL_HINT, ONNX_RUNTIMES, RUNTIMES, missing_onnx_packages, onnx_available

logger = logging.getLogger(__name__)

__all__ = ["DeploymentPlan", "export_scope", "plan_deployment", "fingerprint_with_runtime", "default_runtime",
           "check_runtime", "measure_onnx_latency", "measure_runtime_latency", "runtime_profile_func"]


def default_runtime() -> str:
    """``onnxruntime`` when the ``onnx`` extra is installed, else ``pytorch`` (and one log line saying why)."""
    if onnx_available():
        logger.info("latency runtime: onnxruntime (default; set evaluation.latency_runtime to change it)")
        return "onnxruntime"
    logger.info("latency runtime: pytorch (the default onnxruntime needs `%s`: %s not installed)",
                ONNX_INSTALL_HINT, ", ".join(missing_onnx_packages()))
    return "pytorch"


def check_runtime(runtime: Optional[str], key: str = "evaluation.latency_runtime") -> str:
    """``runtime`` checked (None: :func:`default_runtime`); raises :class:`ConfigError` naming ``key`` for an
    unknown runtime or an ONNX runtime without the ``onnx`` extra installed."""
    if runtime is None:
        return default_runtime()
    if runtime not in RUNTIMES:
        raise ConfigError(f"{key}: {runtime!r} is not a runtime; use one of {', '.join(RUNTIMES)}.")
    missing = missing_onnx_packages()
    if runtime in ONNX_RUNTIMES and missing:
        raise ConfigError(f"{key}: {runtime!r} needs {', '.join(missing)}: run `{ONNX_INSTALL_HINT}`, "
                          "or set it to 'pytorch'.")
    return runtime


def measure_onnx_latency(
    path: str,
    inputs: dict[str, Any],
    num_threads: int = 1,
    warmup: int = 10,
    repeats: int = 30,
    min_sample_ms: float = 20.0,
    max_inner_loops: int = 1000,
    timer: str = "auto",
    estimator: str = "min",
    rounds: int = 3,
) -> LatencyResult:
    """Latency of the ONNX file ``path`` on ``inputs`` (the same batch PyTorch is timed on), in ms per run.

    Session: :func:`~.onnx_export.onnx_session` (``intra_op_num_threads=num_threads``, one inter-op thread). Timing:
    :func:`~autodistill_trainer.timing.time_samples` (warm-up, calibration, ``repeats`` samples in ``rounds``
    rounds) and the ``estimator`` (``min`` or ``median``) as the headline ``latency_ms``.
    """
    from .onnx_export import onnx_session, session_feed  # needs the optional onnx extra: imported on use

    session = onnx_session(path, num_threads)
    feed = session_feed(session, inputs)
    timer = resolve_timer(timer, num_threads == 1)
    samples, inner_loops = time_samples(lambda: session.run(None, feed), warmup=warmup, repeats=repeats,
                                        min_sample_ms=min_sample_ms, max_inner_loops=max_inner_loops, timer=timer,
                                        rounds=rounds)
    batch, seq = feed["input_ids"].shape[:2]
    return latency_result(samples, inner_loops, estimator, rounds, batch_size=int(batch), seq_length=int(seq),
                          num_threads=num_threads, device="cpu", timer=timer)


def measure_runtime_latency(
    model: nn.Module,
    runtime: str,
    batch_size: int = 1,
    seq_length: int = 64,
    num_threads: int = 1,
    warmup: int = 10,
    repeats: int = 30,
    onnx_path: Optional[str] = None,
    **timing: Any,
) -> LatencyResult:
    """Latency of ``model`` in ``runtime`` on the profiler's dummy batch (``batch_size`` x ``seq_length``).

    For an ONNX runtime, ``onnx_path`` is the already exported file of that runtime; without it the model is
    exported to a temporary directory first (removed after). ``timing``: ``min_sample_ms``, ``max_inner_loops``,
    ``timer``, ``estimator``, ``rounds`` as in :func:`~autodistill_trainer.profiling.measure_latency`.
    """
    if runtime == "pytorch":
        return measure_latency(model, batch_size=batch_size, seq_length=seq_length, num_threads=num_threads,
                               warmup=warmup, repeats=repeats, **timing)
    check_runtime(runtime)
    inputs = dummy_inputs(model, batch_size, seq_length)
    if onnx_path is not None:
        return measure_onnx_latency(onnx_path, inputs, num_threads, warmup, repeats, **timing)
    from .onnx_export import export_onnx  # needs the optional onnx extra: imported on use

    with tempfile.TemporaryDirectory(prefix="autodistill-onnx-") as tmp:
        exported = export_onnx(model, tmp, example_inputs=inputs, quantize=runtime == "onnxruntime-int8")
        return measure_onnx_latency(exported.paths[runtime], inputs, num_threads, warmup, repeats, **timing)


def runtime_profile_func(
    runtime: str,
    batch_size: int = 1,
    seq_length: int = 64,
    num_threads: int = 1,
    warmup: int = 10,
    repeats: int = 30,
    **timing: Any,
) -> Callable[[nn.Module], dict[str, Any]]:
    """A ``profile_func`` for :class:`~autodistill_trainer.search.AutoDistillation` measuring latency in ``runtime``.

    The returned function gives ``{"params", "flops", "latency", "latency_cv", "latency_runtime"}``: parameters and
    FLOPs of the PyTorch model, ``latency`` (ms: the protocol's estimate, ``latency_ms``) and ``latency_cv`` from
    :func:`measure_runtime_latency`, and the runtime's name. Use the same function for the teacher so that speed-ups
    compare like with like.
    """
    runtime = check_runtime(runtime)

    def profile(model: nn.Module) -> dict[str, Any]:
        if not isinstance(model, nn.Module):
            raise ProfilingUnsupportedError(f"cannot profile a {type(model).__name__}: it is not a torch nn.Module.")
        latency = measure_runtime_latency(model, runtime, batch_size, seq_length, num_threads, warmup, repeats,
                                          **timing)
        return {
            "params": count_parameters(model),
            "flops": count_flops(model, batch_size=batch_size, seq_length=seq_length),
            "latency": float(latency.latency_ms),
            "latency_cv": float(latency.cv),
            "latency_runtime": runtime,
        }

    return profile


@dataclass(frozen=True)
class DeploymentPlan:
    """What a run does for deployment: ``latency_runtime`` (the search objective's runtime), ``export_onnx``
    (write ``best_model/onnx/``), ``runtimes`` (those the deployment summary reports: ``pytorch``, plus the ONNX
    runtimes when the ``onnx`` extra is installed) and ``export_front`` (also export every Pareto-front student to
    ``<its trial model dir>/onnx/``)."""

    latency_runtime: str
    export_onnx: bool
    runtimes: tuple[str, ...]
    export_front: bool = False


def export_scope(export_onnx: Optional[Union[bool, str]], key: str) -> Optional[str]:
    """``evaluation.export_onnx`` as ``best``, ``front`` or ``none`` (true is ``best``, false ``none``; None stays)."""
    if export_onnx is None:
        return None
    if isinstance(export_onnx, bool):
        return "best" if export_onnx else "none"
    if export_onnx not in ONNX_EXPORT_SCOPES:
        raise ConfigError(f"{key}: {export_onnx!r} is not one of {list(ONNX_EXPORT_SCOPES)} (or true/false); "
                          "use best, front or none.")
    return export_onnx


def plan_deployment(latency_runtime: Optional[str], export_onnx: Optional[Union[bool, str]],
                    prefix: str = "auto_distillation.evaluation") -> DeploymentPlan:
    """Check the recipe's ``latency_runtime`` and ``export_onnx`` (None: the defaults) and resolve them.

    Defaults: ``onnxruntime`` and an export of the best student when the ``onnx`` extra is installed; otherwise
    ``pytorch``, no export, and ONE log line saying what the ONNX options need. An explicit ONNX runtime or export
    (``true``, ``best``, ``front``) without the extra, an unknown runtime, or an ``export_onnx`` that is neither a
    boolean nor one of ``best``/``front``/``none`` raise :class:`ConfigError` naming the key.
    """
    if latency_runtime is not None:
        check_runtime(latency_runtime, f"{prefix}.latency_runtime")
    scope = export_scope(export_onnx, f"{prefix}.export_onnx")
    missing = missing_onnx_packages()
    if scope in ("best", "front") and missing:
        shown = "true" if export_onnx is True else repr(export_onnx)
        raise ConfigError(f"{prefix}.export_onnx: {shown} needs {', '.join(missing)}: run `{ONNX_INSTALL_HINT}`, "
                          "or set it to none.")
    if missing:
        if latency_runtime is None or scope is None:
            logger.info("ONNX export and ONNX Runtime latency are off: they need `%s` (%s not installed); "
                        "latency runtime: pytorch", ONNX_INSTALL_HINT, ", ".join(missing))
        return DeploymentPlan(latency_runtime or "pytorch", False, ("pytorch",))
    if latency_runtime is None:
        logger.info("latency runtime: onnxruntime (default; set %s.latency_runtime to change it)", prefix)
    return DeploymentPlan(latency_runtime or "onnxruntime", scope != "none", RUNTIMES, export_front=scope == "front")


def fingerprint_with_runtime(fingerprint: dict[str, Any], latency_runtime: str) -> dict[str, Any]:
    """The run fingerprint (``run_dir.run_fingerprint``) with the latency runtime among its objectives.

    A study's latencies are comparable only within one runtime, so resuming it in another is refused by the output
    directory's fingerprint check. ``pytorch`` (what studies measured before runtimes existed) adds nothing, so
    those studies still resume in ``pytorch``.
    """
    if latency_runtime == "pytorch":
        return fingerprint
    objectives = {**fingerprint.get("objectives", {}), "latency_runtime": latency_runtime}
    return {**fingerprint, "objectives": objectives}
