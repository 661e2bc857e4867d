"""Capture intermediate module outputs by dotted name with forward hooks.

A *layer* is a dotted module name as printed by ``model.named_modules()`` (for example
``"bert.encoder.layer.0.attention.self"``). A *process* selects a tensor from that module's
output, as the design's ``layer_output_process`` does:

- ``None`` or ``""``: the output itself (it must be a tensor);
- an index string such as ``"1"`` (or an int): ``output[1]`` of a tuple/list output;
- a key such as ``"logits"``: ``output["logits"]`` or ``output.logits`` of a ``ModelOutput``/dict;
- a callable: ``process(output)``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Union

import torch
from torch import nn

from .errors import ConfigError, did_you_mean

logger = logging.getLogger(__name__)

OutputProcess = Union[None, str, int, Callable[[Any], torch.Tensor]]


def get_module(model: nn.Module, name: str, role: str = "model") -> nn.Module:
    """Return the submodule called `name`, or raise a ConfigError listing the closest real names."""
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name]
    raise ConfigError(
        f"{role} has no module named {name!r} ({type(model).__name__})."
        f"{did_you_mean(name, [n for n in modules if n])}"
        " Layer names are dotted paths as listed by model.named_modules()."
    )


def select_output(output: Any, process: OutputProcess, where: str = "") -> torch.Tensor | None:
    """Apply a layer-output process (see module docstring) to a module's raw output."""
    if process is None or process == "":
        return output
    if callable(process):
        return process(output)
    if isinstance(process, int) or (isinstance(process, str) and process.lstrip("-").isdigit()):
        index = int(process)
        if isinstance(output, (tuple, list)):
            if -len(output) <= index < len(output):
                return output[index]
            raise ConfigError(
                f"{where}: output index {index} does not exist; the module returns a tuple of {len(output)} "
                f"items (valid indices 0..{len(output) - 1})."
            )
        if hasattr(output, "to_tuple"):  # ModelOutput: positional access over its non-None fields
            values = output.to_tuple()
            if -len(values) <= index < len(values):
                return values[index]
            raise ConfigError(
                f"{where}: output index {index} does not exist; the output has fields {list(output.keys())}."
            )
        raise ConfigError(
            f"{where}: output index {index} was given but the module returns a single "
            f"{type(output).__name__}; drop the index to use the output itself."
        )
    if isinstance(process, str):
        if isinstance(output, dict) or hasattr(output, "keys"):
            if process in output.keys():
                return output[process]
            raise ConfigError(
                f"{where}: output key {process!r} does not exist; available keys: {list(output.keys())}."
                f"{did_you_mean(process, list(output.keys()))}"
            )
        if hasattr(output, process):
            return getattr(output, process)
        raise ConfigError(
            f"{where}: output key {process!r} was given but the module returns a {type(output).__name__}."
        )
    raise ConfigError(f"{where}: a layer-output process must be an index string, a key or a callable, got {process!r}.")


class StopForward(Exception):
    """Raised by a capture hook to end a forward once every needed feature is captured."""


class FeatureCapture:
    """Forward hooks that store selected outputs of named modules during ordinary forwards.

    ``features[name]`` holds the latest captured tensor of each hooked (module, process) pair (for a
    module that runs several times per forward, its last call's output).
    Captured tensors keep their autograd graph (student side); `clear()` drops them so nothing piles
    up between steps; `remove()` removes every hook.
    """

    def __init__(self, model: nn.Module, layers: Iterable[tuple[str, OutputProcess]], role: str = "model"):
        self.model = model
        self.role = role
        self.enabled = True
        self.stop_after: tuple[str, str] | None = None  # raise StopForward once this key is captured
        # How often each key was captured since the last clear() (a module may run several times per
        # forward, e.g. ALBERT's shared layer), and the key captured last.
        self.capture_counts: dict[tuple[str, str], int] = {}
        self.last_captured: tuple[str, str] | None = None
        self.features: dict[Any, torch.Tensor | None] = {}
        self._transforms: dict[tuple[str, str], list[tuple[Any, Callable[[torch.Tensor], torch.Tensor]]]] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        by_module: dict[str, list[OutputProcess]] = {}
        for name, process in layers:
            by_module.setdefault(name, [])
            if process not in by_module[name]:
                by_module[name].append(process)
        for name, processes in by_module.items():
            module = get_module(model, name, role)
            self._handles.append(module.register_forward_hook(self._make_hook(name, processes)))

    @staticmethod
    def key(name: str, process: OutputProcess) -> tuple[str, str]:
        """The dictionary key of a (layer, process) pair."""
        return (name, process if isinstance(process, str) else repr(process))

    def _make_hook(self, name: str, processes: list[OutputProcess]):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not self.enabled:
                return
            for process in processes:
                where = f"{self.role} layer {name!r}" + (f" process {process!r}" if process not in (None, "") else "")
                key = self.key(name, process)
                value = self.features[key] = select_output(output, process, where)
                self.capture_counts[key] = self.capture_counts.get(key, 0) + 1
                self.last_captured = key
                for out_key, transform in self._transforms.get(key, ()):
                    self.features[out_key] = transform(value)
            if self.stop_after is not None and self.key(name, processes[-1]) == self.stop_after:
                raise StopForward

        return hook

    def add_transform(
        self, name: str, process: OutputProcess, out_key: Any, transform: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        """Also store ``transform(feature)`` under `out_key` at capture time.

        The transform runs inside the model's forward, so modules it uses (e.g. feature matchers
        attached to a DDP-wrapped student) take part in that forward like any other parameter.
        """
        self._transforms.setdefault(self.key(name, process), []).append((out_key, transform))

    def get(self, name: str, process: OutputProcess) -> torch.Tensor | None:
        """The latest captured feature of (name, process); raises if the module did not run."""
        key = self.key(name, process)
        if key not in self.features:
            raise RuntimeError(
                f"{self.role} layer {name!r} produced no output in the last forward: it was not called. "
                "Check that the mapping names a module used by the model's forward."
            )
        return self.features[key]

    def early_stop_key(self) -> tuple[str, str] | None:
        """The key at which a forward like the last one may stop early: the last capture of that forward,
        provided its module ran only once (a module that runs several times per forward, e.g. ALBERT's
        shared layer, must reach its last call, whose output is the feature kept); else None."""
        last = self.last_captured
        if last is not None and self.capture_counts.get(last) != 1:
            logger.debug("%s module %r runs %d times per forward: no early stop.", self.role, last[0],
                         self.capture_counts[last])
            return None
        return last

    def clear(self) -> None:
        """Drop every captured feature (call once per step)."""
        self.features.clear()
        self.capture_counts.clear()
        self.last_captured = None

    def remove(self) -> None:
        """Remove all hooks and drop captured features."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()
