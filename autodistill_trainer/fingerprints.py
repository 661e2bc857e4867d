"""Fingerprints that key the teacher-output cache: of a layer-output process (including callables, by what
they compute) and of a model's weights (a full hash, and a cheap token that tells when to recompute it)."""

from __future__ import annotations

import functools
import hashlib
import types
from typing import Any

import torch
from torch import nn

_MAX_TENSOR_ELEMENTS = 1 << 20  # tensors captured by a process and hashed whole (larger: not cacheable)
_SAMPLES_PER_TENSOR = 16


def _value_key(value: Any, depth: int = 0) -> str | None:
    """A stable text for a value a function depends on, or None when it has none we can trust."""
    if depth > 8:
        return None
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return f"{type(value).__name__}:{value!r}"
    if isinstance(value, (tuple, list, frozenset, set)):
        items = [_value_key(v, depth + 1) for v in value]
        if any(item is None for item in items):
            return None
        if isinstance(value, (set, frozenset)):
            items = sorted(items)
        return f"{type(value).__name__}({','.join(items)})"
    if isinstance(value, dict):
        items = [(_value_key(k, depth + 1), _value_key(v, depth + 1)) for k, v in value.items()]
        if any(k is None or v is None for k, v in items):
            return None
        return "dict(" + ",".join(f"{k}={v}" for k, v in sorted(items)) + ")"
    if isinstance(value, torch.Tensor):
        if value.numel() > _MAX_TENSOR_ELEMENTS:
            return None
        data = value.detach().cpu().contiguous()
        digest = hashlib.sha256(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"").hexdigest()
        return f"tensor({data.dtype},{tuple(data.shape)},{digest[:16]})"
    if isinstance(value, types.ModuleType):
        return f"module:{value.__name__}"
    if isinstance(value, torch.dtype):
        return f"dtype:{value}"
    if isinstance(value, types.CodeType):
        return _code_key(value, depth + 1)
    if callable(value):
        return process_fingerprint(value, depth + 1)
    return None


def _code_key(code: types.CodeType, depth: int) -> str | None:
    consts = [_value_key(c, depth + 1) for c in code.co_consts]
    if any(c is None for c in consts):
        return None
    return "code(" + "|".join([code.co_code.hex(), ",".join(code.co_names), ",".join(consts)]) + ")"


def process_fingerprint(process: Any, depth: int = 0) -> str | None:
    """What a layer-output process computes, as text; None when it cannot be told from the process itself.

    Strings, ints and None stand for themselves. A Python function (lambda, def, nested function) is
    identified by its bytecode, constants, the names it reads, its defaults, the values in its closure
    and the values of the globals it reads, so two different lambdas never share a key and an edited
    function gets a new one. A ``functools.partial`` is its function plus its arguments; a builtin
    (``torch.sigmoid``) is its qualified name. Anything else (a callable object, a bound method, a closure
    over a model) returns None: such a process is not cached and the live teacher serves it.
    """
    if depth > 8:
        return None
    if process is None or isinstance(process, (str, int)):
        return repr(process)
    if isinstance(process, functools.partial):
        parts = [process_fingerprint(process.func, depth + 1), _value_key(process.args, depth + 1),
                 _value_key(process.keywords, depth + 1)]
        return None if any(p is None for p in parts) else "partial(" + "|".join(parts) + ")"
    if isinstance(process, types.FunctionType):
        parts = [_code_key(process.__code__, depth), _value_key(process.__defaults__, depth + 1),
                 _value_key(process.__kwdefaults__, depth + 1)]
        cells = []
        for cell in process.__closure__ or ():
            try:
                cells.append(_value_key(cell.cell_contents, depth + 1))
            except ValueError:  # an empty cell
                cells.append("empty")
        for name in process.__code__.co_names:  # globals it reads (attribute names that are no global are skipped)
            if name in process.__globals__:
                value = _value_key(process.__globals__[name], depth + 1)
                parts.append(None if value is None else f"{name}={value}")
        parts += cells
        if any(p is None for p in parts):
            return None
        return "function(" + "|".join(parts) + ")"
    if isinstance(process, types.BuiltinFunctionType) or type(process).__name__ == "builtin_function_or_method":
        return f"builtin:{getattr(process, '__module__', '')}.{process.__qualname__}"
    return None


def model_fingerprint(model: nn.Module) -> str:
    """A hash of a model's class, config and every weight (identifies the teacher in cache keys)."""
    digest = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def weights_token(model: nn.Module) -> str:
    """A cheap token that changes when a model's weights change: for every parameter and buffer its name,
    shape, storage address, in-place version counter and a few evenly spaced values. Used to decide when
    :func:`model_fingerprint` must be recomputed (e.g. a teacher changed in place between two stages)."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            flat = tensor.detach().reshape(-1)
            index = torch.linspace(0, max(0, flat.numel() - 1), min(_SAMPLES_PER_TENSOR, flat.numel())).long()
            samples = flat[index.to(flat.device)].double().cpu().numpy().tobytes() if flat.numel() else b""
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.data_ptr()}|{tensor._version}|".encode())
            digest.update(samples)
    return digest.hexdigest()
