"""Teacher rewiring: reorder a BERT teacher's heads, feed-forward units and residual dimensions by importance.

Weight selection (:mod:`.weight_selection`) copies the *leading* slices of the teacher's weights into the student.
The leading heads, units and dimensions are an arbitrary choice: the order a pre-trained model keeps them in carries
no meaning. DynaBERT (Hou et al., NeurIPS 2020) "rewires" the network first, so that the leading slices are the most
important ones. Each reordering here is a permutation that leaves the teacher's function unchanged:

* **heads** of a layer: the query/key/value output rows and the attention output's input columns, head by head;
* **feed-forward units** of a layer: ``intermediate.dense`` rows and ``output.dense`` columns;
* **residual dimensions** (one permutation shared by the embeddings and every layer, so the same dimensions stay
  selected throughout): every weight that reads or writes the residual stream, and its LayerNorms;
* **pooler outputs**: the pooler's rows and the classifier's columns.

Importance is measured on a few batches of the task's training texts, run through the teacher once:

* a head: the mean norm of what it adds to the residual stream (its context through its slice of the attention
  output projection), over the batches' real tokens;
* a feed-forward unit: the mean absolute activation times the norm of its output column;
* a residual dimension: the mean absolute value of the embeddings' and every layer's output in that dimension;
* a pooler output: its mean absolute value times the norm of its classifier column.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Iterable, Mapping

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["importance_batches", "importance_orders", "permute_teacher", "rewired_teacher"]

#: Model inputs the importance pass feeds the teacher (labels and other columns are dropped).
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _parts(teacher: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    prefix = getattr(teacher, "base_model_prefix", "")
    base = getattr(teacher, prefix, teacher) if prefix else teacher
    return base, list(base.encoder.layer)


def _heads(teacher: nn.Module) -> tuple[int, int]:
    heads = teacher.config.num_attention_heads
    return heads, teacher.config.hidden_size // heads


@torch.no_grad()
def importance_orders(teacher: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, Any]:
    """Orders (most important first) of the teacher's heads and feed-forward units per layer, its residual
    dimensions and pooler outputs, measured on ``batches`` (model inputs with an ``attention_mask``).

    Returns ``{"heads": [[...] per layer], "units": [[...] per layer], "hidden": [...], "pooler": [...]}``.
    """
    base, layers = _parts(teacher)
    num_heads, head_size = _heads(teacher)
    hidden = teacher.config.hidden_size
    sums: dict[str, torch.Tensor] = {
        "hidden": torch.zeros(hidden, dtype=torch.float64),
        "pooler": torch.zeros(hidden, dtype=torch.float64),
        **{f"heads{i}": torch.zeros(num_heads, dtype=torch.float64) for i in range(len(layers))},
        **{f"units{i}": torch.zeros(layer.intermediate.dense.out_features, dtype=torch.float64)
           for i, layer in enumerate(layers)},
    }
    state: dict[str, Any] = {"mask": None, "tokens": 0}

    def token_sum(values: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [D], over real tokens
        return (values.abs().double() * state["mask"]).sum(dim=(0, 1))

    def head_hook(index: int):
        def hook(module: nn.Module, args: tuple) -> None:
            context = args[0]  # [B, T, heads * head_size]: the heads' outputs before the output projection
            per_head = context.reshape(*context.shape[:2], num_heads, head_size)
            weight = module.weight.reshape(module.out_features, num_heads, head_size)
            added = torch.einsum("bthd,ohd->btho", per_head, weight).norm(dim=-1)  # [B, T, heads]
            sums[f"heads{index}"] += (added.double() * state["mask"]).sum(dim=(0, 1))
        return hook

    def unit_hook(index: int, output_dense: nn.Linear):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            sums[f"units{index}"] += token_sum(output) * output_dense.weight.norm(dim=0).double()
        return hook

    def hidden_hook(module: nn.Module, args: tuple, output: Any) -> None:
        sums["hidden"] += token_sum(output[0] if isinstance(output, tuple) else output)

    classifier = getattr(teacher, "classifier", None)

    def pooler_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        column_norms = classifier.weight.norm(dim=0).double() if isinstance(classifier, nn.Linear) else 1.0
        sums["pooler"] += output.abs().double().sum(dim=0) * column_norms

    handles = [base.embeddings.register_forward_hook(hidden_hook)]
    for i, layer in enumerate(layers):
        handles.append(layer.attention.output.dense.register_forward_pre_hook(head_hook(i)))
        handles.append(layer.intermediate.register_forward_hook(unit_hook(i, layer.output.dense)))
        handles.append(layer.register_forward_hook(hidden_hook))
    if getattr(base, "pooler", None) is not None:
        handles.append(base.pooler.register_forward_hook(pooler_hook))
    was_training = teacher.training
    teacher.eval()
    try:
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k in _INPUTS}
            state["mask"] = inputs["attention_mask"].unsqueeze(-1).double()
            state["tokens"] += int(inputs["attention_mask"].sum())
            teacher(**inputs)
    finally:
        for handle in handles:
            handle.remove()
        teacher.train(was_training)
    if not state["tokens"]:
        raise ValueError("importance_orders needs at least one batch with real tokens.")

    def order(values: torch.Tensor) -> list[int]:
        return torch.argsort(values, descending=True, stable=True).tolist()

    return {"heads": [order(sums[f"heads{i}"]) for i in range(len(layers))],
            "units": [order(sums[f"units{i}"]) for i in range(len(layers))],
            "hidden": order(sums["hidden"]), "pooler": order(sums["pooler"])}


def _rows(linear: nn.Linear, index: torch.Tensor) -> None:
    linear.weight.data = linear.weight.data[index].contiguous()
    if linear.bias is not None:
        linear.bias.data = linear.bias.data[index].contiguous()


def _columns(linear: nn.Linear, index: torch.Tensor) -> None:
    linear.weight.data = linear.weight.data[:, index].contiguous()


def _norm(norm: nn.Module, index: torch.Tensor) -> None:
    for param in (norm.weight, norm.bias):
        if param is not None:
            param.data = param.data[index].contiguous()


@torch.no_grad()
def permute_teacher(teacher: nn.Module, orders: Mapping[str, Any]) -> nn.Module:
    """Apply ``orders`` (as :func:`importance_orders` returns; any key may be missing) to ``teacher`` in place and
    return it. Its outputs are unchanged (up to float rounding); only the order of its heads, units, residual
    dimensions and pooler outputs moves."""
    base, layers = _parts(teacher)
    num_heads, head_size = _heads(teacher)
    hidden = orders.get("hidden")
    if hidden is not None:
        index = torch.as_tensor(hidden)
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            embedding = getattr(base.embeddings, name, None)
            if embedding is not None:
                embedding.weight.data = embedding.weight.data[:, index].contiguous()
        _norm(base.embeddings.LayerNorm, index)
        for layer in layers:
            for linear in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value,
                           layer.intermediate.dense):
                _columns(linear, index)
            for linear in (layer.attention.output.dense, layer.output.dense):
                _rows(linear, index)
            _norm(layer.attention.output.LayerNorm, index)
            _norm(layer.output.LayerNorm, index)
        if getattr(base, "pooler", None) is not None:
            _columns(base.pooler.dense, index)
    for i, layer in enumerate(layers):
        if orders.get("heads") is not None:
            heads = torch.as_tensor(orders["heads"][i])
            index = (heads[:, None] * head_size + torch.arange(head_size)).reshape(-1)
            for linear in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
                _rows(linear, index)
            _columns(layer.attention.output.dense, index)
        if orders.get("units") is not None:
            index = torch.as_tensor(orders["units"][i])
            _rows(layer.intermediate.dense, index)
            _columns(layer.output.dense, index)
    pooler = orders.get("pooler")
    if pooler is not None and getattr(base, "pooler", None) is not None:
        index = torch.as_tensor(pooler)
        _rows(base.pooler.dense, index)
        classifier = getattr(teacher, "classifier", None)
        if isinstance(classifier, nn.Linear) and classifier.in_features == len(pooler):
            _columns(classifier, index)
    return teacher


def rewired_teacher(teacher: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> nn.Module:
    """A copy of ``teacher`` whose heads, feed-forward units, residual dimensions and pooler outputs are sorted by
    their importance on ``batches``, most important first: the source for weight selection (``teacher`` itself is
    left as it is)."""
    orders = importance_orders(teacher, batches)
    logger.info("teacher rewired by importance (top residual dimensions %s...)", orders["hidden"][:8])
    return permute_teacher(copy.deepcopy(teacher), orders)


def importance_batches(dataset: Any, collator: Any, rows: int = 512, batch_size: int = 64) -> Iterable[Any]:
    """Batches of ``rows`` training rows spread evenly over ``dataset`` (a tokenized ``datasets.Dataset``; a file
    sorted by label still gives every label its share), model inputs only, for :func:`importance_orders`."""
    from torch.utils.data import DataLoader

    count = min(rows, len(dataset))
    indices = sorted({round(i * len(dataset) / count) for i in range(count)})
    sample = dataset.select(indices).select_columns([c for c in _INPUTS if c in dataset.column_names])
    return DataLoader(sample, batch_size=batch_size, collate_fn=collator)
