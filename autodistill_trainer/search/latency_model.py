"""Cost of a MobileBERT architecture without building it: exact params and FLOPs, predicted latency.

* :func:`mobilebert_costs`: parameters and forward FLOPs from a ``MobileBertConfig`` alone, exactly as
  :func:`~autodistill_trainer.profiling.count_parameters` and :func:`~autodistill_trainer.profiling.count_flops`
  count them on the built ``MobileBertForSequenceClassification`` (FLOPs: ``2*M*N*K`` per matmul, including the
  attention products; element-wise ops, norms and lookups count zero), plus shape terms (matmul count, activation
  elements) for the latency regression.
* :class:`LatencyModel`: latency (ms) predicted by least squares (``numpy.linalg.lstsq``) on
  ``[1, flops, matmuls, activation elements]``, fitted on measured architectures and refitted as measurements
  arrive; kept as JSON in the output directory, one table per key (machine, latency protocol, runtime), so a
  measurement from another machine or protocol never feeds this one's predictions.
* :func:`predicted_budget_violation`: a search budget an architecture breaks by prediction (params and FLOPs
  exactly; latency only beyond the model's own largest relative error on its fitted points), so it can be
  rejected before it is built. Reported latencies stay measured.
"""

from __future__ import annotations

import json
import math
import os
import platform
from typing import Any, Mapping, Sequence

import numpy as np

from ..fileio import atomic_write_json

__all__ = ["FEATURES", "LATENCY_MODEL_FILENAME", "ArchCostModel", "LatencyModel", "kendall_tau", "machine_key", "mape",
           "mobilebert_costs", "predicted_budget_violation"]

LATENCY_MODEL_FILENAME = "latency_model.json"
#: Regression inputs, in order (the constant term first).
FEATURES = ("const", "flops", "matmuls", "activations")


def _linear(n_tokens: int, fan_in: int, fan_out: int) -> tuple[int, int]:
    """(params, flops) of one ``nn.Linear`` with bias applied to ``n_tokens`` rows."""
    return fan_in * fan_out + fan_out, 2 * n_tokens * fan_in * fan_out


def mobilebert_costs(config: Any, batch_size: int = 1, seq_length: int = 64) -> dict[str, int]:
    """``{"params", "flops", "matmuls", "activations"}`` of ``MobileBertForSequenceClassification(config)`` on a
    ``batch_size x seq_length`` batch, from the config alone (nothing is built).

    ``config`` needs MobileBERT's fields (``hidden_size``, ``true_hidden_size``, ``intra_bottleneck_size``,
    ``embedding_size``, ``intermediate_size``, ``num_attention_heads``, ``num_hidden_layers``,
    ``num_feedforward_networks``, ``use_bottleneck``, ``use_bottleneck_attention``, ``key_query_shared_bottleneck``,
    ``trigram_input``, ``classifier_activation``, ``vocab_size``, ``max_position_embeddings``, ``type_vocab_size``,
    ``num_labels``); pass it through :func:`~autodistill_trainer.builders.apply_architecture` first so that
    ``true_hidden_size`` is derived.
    """
    c = config
    hidden, true_hidden, emb = c.hidden_size, c.true_hidden_size, c.embedding_size
    inter, bottleneck = c.intermediate_size, c.intra_bottleneck_size
    all_head = c.num_attention_heads * int(true_hidden / c.num_attention_heads)
    n = batch_size * seq_length
    params = flops = matmuls = activations = 0

    def linear(fan_in: int, fan_out: int, rows: int = n, used: bool = True) -> None:
        nonlocal params, flops, matmuls, activations
        p, f = _linear(rows, fan_in, fan_out)
        params += p
        if used:
            flops, matmuls, activations = flops + f, matmuls + 1, activations + rows * fan_out

    def norm(width: int) -> None:  # LayerNorm and NoNorm: weight and bias
        nonlocal params
        params += 2 * width

    # embeddings: word (no bias), position, token type; the transformation runs only when it changes the width
    params += c.vocab_size * emb + c.max_position_embeddings * hidden + c.type_vocab_size * hidden
    linear(emb * (3 if c.trigram_input else 1), hidden, used=c.trigram_input or emb != hidden)
    norm(hidden)
    for _ in range(c.num_hidden_layers):
        if c.use_bottleneck:
            linear(hidden, bottleneck)
            norm(bottleneck)
            if c.key_query_shared_bottleneck:  # built always, used only without the bottleneck attention
                linear(hidden, bottleneck, used=not c.use_bottleneck_attention)
                norm(bottleneck)
        linear(true_hidden, all_head)  # query
        linear(true_hidden, all_head)  # key
        linear(true_hidden if c.use_bottleneck_attention else hidden, all_head)  # value
        flops += 2 * 2 * batch_size * seq_length * seq_length * all_head  # Q K^T and attention x V
        matmuls += 2
        activations += 2 * batch_size * c.num_attention_heads * seq_length * seq_length
        linear(true_hidden, true_hidden)  # attention output
        norm(true_hidden)
        for _ in range(c.num_feedforward_networks - 1):
            linear(true_hidden, inter)
            linear(inter, true_hidden)
            norm(true_hidden)
        linear(true_hidden, inter)  # intermediate
        linear(inter, true_hidden)  # output
        norm(true_hidden)
        if c.use_bottleneck:
            linear(true_hidden, hidden)  # output bottleneck
            norm(hidden)
    if c.classifier_activation:
        linear(hidden, hidden, rows=batch_size)  # pooler on the first token
    linear(hidden, c.num_labels, rows=batch_size)
    return {"params": params, "flops": flops, "matmuls": matmuls, "activations": activations}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(protocol: Mapping[str, Any], runtime: str) -> str:
    """The key of one latency table: this machine (host, CPU model, core count), the protocol and the runtime."""
    import torch  # torch's version belongs to the runtime: a new kernel library may move every latency

    machine = f"{platform.node()}|{_cpu_name()}|{os.cpu_count()}"
    return json.dumps({"machine": machine, "protocol": dict(protocol), "runtime": runtime, "torch": torch.__version__},
                      sort_keys=True)


def mape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Mean absolute percentage error (%) of ``predicted`` against ``measured``."""
    return 100.0 * float(np.mean([abs(p - m) / m for p, m in zip(predicted, measured)]))


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b rank correlation of two sequences (ties counted as in tau-b)."""
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx == dy:
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denominator if denominator else 0.0


class LatencyModel:
    """Latency predicted from :func:`mobilebert_costs` features, fitted on measured architectures.

    Args:
        key: the table's key (:func:`machine_key`): measurements from other keys are kept in the file, never used.
        path: the JSON file (e.g. ``output_dir/latency_model.json``); None keeps everything in memory.
        min_points: measurements needed before :meth:`predict` answers (default 8: four coefficients, and some
            left to estimate the error).
    """

    def __init__(self, key: str, path: str | None = None, min_points: int = 8) -> None:
        self.key, self.path, self.min_points = key, path, min_points
        self._tables: dict[str, list[dict[str, Any]]] = {}
        if path is not None and os.path.exists(path):
            with open(path) as fh:
                self._tables = json.load(fh).get("tables", {})
        self.coefficients: list[float] | None = None
        self.max_relative_error: float | None = None
        self.fit()

    @property
    def points(self) -> list[dict[str, Any]]:
        """This key's measurements: ``{"arch", "features", "latency"}``."""
        return self._tables.setdefault(self.key, [])

    @staticmethod
    def _row(features: Mapping[str, float]) -> list[float]:
        return [1.0] + [float(features[name]) for name in FEATURES[1:]]

    def add(self, arch: Mapping[str, Any], features: Mapping[str, float], latency_ms: float) -> None:
        """Record one measurement (an arch measured again replaces its previous one), refit, and save."""
        arch_id = json.dumps(dict(arch), sort_keys=True)
        kept = [p for p in self.points if json.dumps(p["arch"], sort_keys=True) != arch_id]
        kept.append({"arch": dict(arch), "features": {k: float(features[k]) for k in FEATURES[1:]},
                     "latency": float(latency_ms)})
        self._tables[self.key] = kept
        self.fit()
        if self.path is not None:
            atomic_write_json(self.path, {"features": list(FEATURES), "tables": self._tables})

    def fit(self) -> None:
        """Least squares on this key's points (features scaled to unit maximum for conditioning); no-op below
        ``min_points``. Sets ``coefficients`` and ``max_relative_error`` (largest on the fitted points)."""
        points = self.points
        if len(points) < self.min_points:
            self.coefficients, self.max_relative_error = None, None
            return
        x = np.array([self._row(p["features"]) for p in points])
        y = np.array([p["latency"] for p in points])
        scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
        solution, *_ = np.linalg.lstsq(x / scale, y, rcond=None)
        self.coefficients = list(solution / scale)
        fitted = x @ np.array(self.coefficients)
        self.max_relative_error = float(np.max(np.abs(fitted - y) / y))

    def predict(self, features: Mapping[str, float]) -> float | None:
        """Predicted latency (ms), or None while fewer than ``min_points`` measurements exist."""
        if self.coefficients is None:
            return None
        return float(np.dot(self._row(features), self.coefficients))


def predicted_budget_violation(
    predicted: Mapping[str, float | None], cfg: Any, max_relative_error: float | None
) -> tuple[str, str] | None:
    """``(key, reason)`` of a budget ``predicted`` surely breaks, or None.

    ``params`` and ``flops`` are exact: over budget is over budget. ``latency`` is a prediction: it breaks
    ``max_latency_ms`` only when over it by more than ``max(max_relative_error, 10%)``.
    """
    margin = max(max_relative_error or 0.0, 0.10)
    for budget_name, key in (("max_params", "params"), ("max_flops", "flops"), ("max_latency_ms", "latency")):
        budget, value = getattr(cfg, budget_name), predicted.get(key)
        if budget is None or value is None:
            continue
        limit = budget * (1 + margin) if key == "latency" else budget
        if value > limit:
            unit = " ms" if key == "latency" else ""
            return key, f"predicted {key} {value:g}{unit} > budget {budget:g}{unit} (not built)"
    return None


class ArchCostModel:
    """Costs of a search-space architecture before it is built: what :class:`AutoDistillation` asks
    (``cost_model=``) to reject budget breakers unbuilt, and feeds with every measured profile.

    Args:
        base_config: the students' MobileBERT base config (the built-in builder's).
        latency_model: the fitted latency table of this machine, protocol and runtime.
        batch_size / seq_length: the latency protocol's batch (FLOPs are counted on it).
    """

    def __init__(self, base_config: Any, latency_model: LatencyModel, batch_size: int = 1, seq_length: int = 64):
        self.base_config, self.latency_model = base_config, latency_model
        self.batch_size, self.seq_length = batch_size, seq_length

    @classmethod
    def for_output_dir(cls, base_config: Any, output_dir: str, protocol: Mapping[str, Any], runtime: str,
                       batch_size: int, seq_length: int) -> "ArchCostModel":
        """The model cached in ``output_dir/latency_model.json`` under this machine's, protocol's and runtime's key."""
        path = os.path.join(output_dir, LATENCY_MODEL_FILENAME)
        return cls(base_config, LatencyModel(machine_key(protocol, runtime), path), batch_size, seq_length)

    def features(self, arch: Mapping[str, Any]) -> dict[str, int] | None:
        """:func:`mobilebert_costs` of ``arch`` (None when its config cannot be made: the builder will say why)."""
        from ..builders import apply_architecture
        from ..errors import ConfigError, InvalidArchitectureError

        try:
            config = apply_architecture(self.base_config, arch)
        except (ConfigError, InvalidArchitectureError, ValueError):
            return None
        return mobilebert_costs(config, self.batch_size, self.seq_length)

    def predict(self, arch: Mapping[str, Any]) -> dict[str, float | None] | None:
        """``{"params", "flops" (exact), "latency" (predicted, None before enough measurements)}`` or None."""
        features = self.features(arch)
        if features is None:
            return None
        latency = self.latency_model.predict(features)
        return {"params": features["params"], "flops": features["flops"], "latency": latency}

    @property
    def max_relative_error(self) -> float | None:
        return self.latency_model.max_relative_error

    def observe(self, arch: Mapping[str, Any], profile: Mapping[str, Any]) -> None:
        """Add a measured latency (a profile of a built ``arch``) to the table and refit."""
        features = self.features(arch)
        if features is not None and isinstance(profile.get("latency"), (int, float)) and profile["latency"] > 0:
            self.latency_model.add(arch, features, float(profile["latency"]))
