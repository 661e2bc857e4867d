"""Deployment: ONNX export (fp32 and dynamic int8), ONNX Runtime sessions, latency per runtime.

The ONNX parts need the optional extra ``pip install "autodistill-trainer[onnx]"`` (onnx, onnxruntime, onnxscript);
:func:`onnx_available` says whether it is installed. Importing this package never imports them.
"""

from __future__ import annotations

import importlib.util
import logging

from ..configs.sections import LATENCY_RUNTIMES as RUNTIMES

logger = logging.getLogger(__name__)

__all__ = ["RUNTIMES", "ONNX_RUNTIMES", "ONNX_PACKAGES", "ONNX_INSTALL_HINT", "onnx_available", "missing_onnx_packages"]

ONNX_RUNTIMES = ("onnxruntime", "onnxruntime-int8")
#: Import names of the packages the ``onnx`` extra installs.
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
ONNX_INSTALL_HINT = 'pip install "autodistill-trainer[onnx]"'


def missing_onnx_packages() -> list[str]:
    """The packages of the ``onnx`` extra that are not installed (import names), without importing them."""
    return [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]


def onnx_available() -> bool:
    """Whether ONNX export and ONNX Runtime can be used (every package of the ``onnx`` extra is installed)."""
    return not missing_onnx_packages()
