"""Sub-networks of a MobileBERT supernet: the nesting rule, extraction, and forward passes on shared weights.

**The nesting rule.** The supernet is the model of the space's largest architecture
(:meth:`~.space.ElasticSpace.supernet_config`). A sub-network's parameters and buffers carry the same names as
the supernet's, and each one is the *leading slice* (along every dimension) of the supernet's tensor of that
name: the first ``hidden_size`` rows/columns of every hidden-wide matrix, LayerNorm and embedding, the first
``intra_bottleneck_size`` of every bottleneck-wide one, the first ``intermediate_size`` of every feed-forward one.
Encoder layers beyond the sub-network's ``num_hidden_layers`` and feed-forward networks beyond its
``num_feedforward_networks`` (``encoder.layer.<i>.ffn.<j>``, the first ``num_feedforward_networks - 1`` stacked
FFNs; MobileBERT's last FFN is the layer's ``intermediate``/``output``) are simply absent: depth and FFN count
nest by prefix. LayerNorms normalise over the sub-network's own width, so a sub-network is its own model, not a
masked supernet.

**Heads.** In MobileBERT ``all_head_size == true_hidden_size == intra_bottleneck_size``: the query/key/value
projections are ``true_hidden_size`` rows whatever the head count, and heads only decide how those rows are split
(``head_size = true_hidden_size / num_attention_heads``). An elastic head count therefore re-partitions the same
leading bottleneck rows into more or fewer heads; it adds or removes no weight. (Making heads nest by "first k
heads of a fixed head size" would tie the bottleneck to the head count, which MobileBERT's shapes do not allow.)
So ``num_attention_heads`` only has to divide the sub-network's ``intra_bottleneck_size``
(:meth:`~.space.ElasticSpace.validate` refuses the rest).

:func:`extract_subnet` clones the slices into a standalone ``MobileBertFor...`` with its own config (save and load
it with plain Transformers); :func:`subnet_forward` runs the same sub-network on *views* of the supernet's
tensors (``torch.func.functional_call`` on a parameterless meta-device skeleton, built once per architecture), so
its gradients land in the shared weights. Both compute the same function of the same numbers.
"""

from __future__ import annotations

import collections
import weakref
from typing import Any, Iterator, Mapping

import torch
from torch import nn
from transformers import MobileBertForSequenceClassification, PreTrainedModel

from ..builders import build_model
from ..errors import ConfigError
from .space import ElasticSpace

__all__ = ["build_supernet", "extract_subnet", "leading_slice", "subnet_forward", "subnet_tensors"]

#: Skeletons kept per space (least recently used dropped first).
SKELETON_CACHE_SIZE = 64

# space -> {(model class, dtype, arch key): meta-device skeleton}; entries go with their space.
_SKELETONS: "weakref.WeakKeyDictionary[ElasticSpace, collections.OrderedDict]" = weakref.WeakKeyDictionary()


def build_supernet(space: ElasticSpace, model_cls: type = MobileBertForSequenceClassification,
                   seed: int | None = None, attn_implementation: str | None = "eager") -> PreTrainedModel:
    """A freshly initialised supernet: ``model_cls`` of the space's largest architecture, built by the plain
    search's :func:`~autodistill_trainer.builders.build_model` (eager attention by default, as the search's)."""
    return build_model(model_cls, space.base_config, space.largest(), seed=seed,
                       attn_implementation=attn_implementation)


def leading_slice(tensor: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The view ``tensor[:shape[0], :shape[1], ...]`` (the nesting rule for one tensor)."""
    return tensor[tuple(slice(0, n) for n in shape)]


def _named_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from module.named_parameters(remove_duplicate=False)
    yield from module.named_buffers(remove_duplicate=False)


def subnet_tensors(supernet: nn.Module, skeleton: nn.Module) -> dict[str, torch.Tensor]:
    """``{name: leading slice of the supernet's tensor}`` for every parameter and buffer of ``skeleton``.

    Raises:
        ConfigError: the supernet lacks a tensor of that name or is narrower in some dimension (it was not
            built from this space's :meth:`~.space.ElasticSpace.supernet_config`).
    """
    own = dict(_named_tensors(supernet))
    views: dict[str, torch.Tensor] = {}
    for name, tensor in _named_tensors(skeleton):
        source = own.get(name)
        if source is None or source.ndim != tensor.ndim or any(s < n for s, n in zip(source.shape, tensor.shape)):
            found = "absent" if source is None else f"of shape {tuple(source.shape)}"
            raise ConfigError(f"the supernet's {name} is {found} but the sub-network needs {tuple(tensor.shape)}: "
                              "build the supernet from this space's supernet_config() (supernet.build_supernet).")
        views[name] = leading_slice(source, tensor.shape)
    return views


def _dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())


def _meta_model(model_cls: type, config: Any, dtype: torch.dtype) -> nn.Module:
    with torch.device("meta"):
        model = model_cls(config)
    return model.to(dtype=dtype)


def _arch_key(arch: Mapping[str, Any]) -> tuple:
    return tuple(sorted(arch.items()))


def _skeleton(supernet: nn.Module, arch: Mapping[str, Any], space: ElasticSpace, depth: int | None) -> nn.Module:
    """The meta-device model of ``arch`` (cached per space, model class, dtype, architecture and depth)."""
    cache = _SKELETONS.setdefault(space, collections.OrderedDict())
    key = (type(supernet), _dtype(supernet), _arch_key(arch), depth)
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    config = space.sub_config(arch)
    if depth is not None:
        if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= config.num_hidden_layers:
            raise ValueError(f"depth must be an integer in [1, {config.num_hidden_layers}] (the architecture's "
                             f"num_hidden_layers), got {depth!r}.")
        config.num_hidden_layers = depth
    skeleton = _meta_model(type(supernet), config, key[1])
    cache[key] = skeleton
    while len(cache) > SKELETON_CACHE_SIZE:
        cache.popitem(last=False)
    return skeleton


def extract_subnet(supernet: PreTrainedModel, arch: Mapping[str, Any], space: ElasticSpace) -> PreTrainedModel:
    """A standalone copy of sub-network ``arch``: the supernet's class with ``space.sub_config(arch)`` and cloned
    leading slices of the supernet's tensors, in eval mode (as ``from_pretrained`` returns models).

    It needs nothing from this package: ``save_pretrained``/``from_pretrained`` and ``pipeline()`` take it as any
    Transformers model. Raises :class:`~autodistill_trainer.errors.InvalidArchitectureError` for an ``arch``
    outside the space.
    """
    config = space.sub_config(arch)
    model = _meta_model(type(supernet), config, _dtype(supernet))
    views = subnet_tensors(supernet, model)
    device = next(iter(views.values())).device
    model.to_empty(device=device)
    with torch.no_grad():
        for name, tensor in _named_tensors(model):
            tensor.copy_(views[name])
    return model.eval()


def subnet_forward(supernet: nn.Module, arch: Mapping[str, Any], space: ElasticSpace, *, depth: int | None = None,
                   **inputs: Any) -> Any:
    """Run sub-network ``arch`` on ``inputs`` with views of the supernet's tensors (gradients reach the supernet).

    The output is the sub-network's own (``logits``, and ``loss`` when ``labels`` are given); the sub-network runs
    in the supernet's train/eval mode. Equals ``extract_subnet(supernet, arch, space)(**inputs)`` up to floating
    point. ``depth`` (at most the architecture's ``num_hidden_layers``) runs only its first ``depth`` layers (flash
    distillation of one block needs no later layer).
    """
    skeleton = _skeleton(supernet, arch, space, depth)
    skeleton.train(supernet.training)
    return torch.func.functional_call(skeleton, subnet_tensors(supernet, skeleton), args=(), kwargs=inputs,
                                      strict=True)
