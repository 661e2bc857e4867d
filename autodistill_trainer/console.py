"""A quiet console: stage-labelled progress bars and logs, library bars that honour ``disable_tqdm``.

* :func:`label_stage_output`: a distillation stage's Trainer shows its progress bar labelled with the trial and
  stage (``trial 3 flash 2/4 mobilebert.encoder.layer.1``) or, with ``disable_tqdm``, prints its periodic logs with
  that label; the Trainer's end-of-training dict (runtime, samples/s) is not printed: the schedule logs one line
  per finished stage (its loss and time) instead.
* :func:`quiet_console`: process-wide (called by the CLI, never by the library): with ``disable_tqdm`` the progress
  bars of datasets, Transformers (weight loading/saving) and huggingface_hub are off too; on a machine without an
  accelerator, torch's "pin_memory ... no accelerator is found" warning is not shown (pinning does nothing there).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from transformers.trainer_callback import PrinterCallback, ProgressCallback

logger = logging.getLogger(__name__)

__all__ = ["StageLogPrinter", "StageProgressCallback", "label_stage_output", "quiet_console"]

#: Key of the Trainer's end-of-training log (with runtime and throughput), which the stage's own line replaces.
TRAIN_SUMMARY_KEY = "train_runtime"

#: torch's DataLoader warning on every loader when pinning is asked for without an accelerator.
PIN_MEMORY_WARNING = r"'pin_memory' argument is set as true but no accelerator is found"


def _shown(logs: dict[str, Any]) -> dict[str, Any]:
    return {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in logs.items() if k != "total_flos"}


class StageProgressCallback(ProgressCallback):
    """The Trainer's progress bar, labelled with the stage (``trial 3 flash 2/6 mobilebert.encoder.layer.1``)."""

    def __init__(self, label: str):
        super().__init__()
        self.label = label

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description(self.label)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and TRAIN_SUMMARY_KEY not in logs:
            super().on_log(args, state, control, logs=logs, **kwargs)


class StageLogPrinter(PrinterCallback):
    """``PrinterCallback`` (used when ``disable_tqdm``) with the stage's label, without the end-of-training dict."""

    def __init__(self, label: str):
        super().__init__()
        self.label = label

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or TRAIN_SUMMARY_KEY in logs or not state.is_local_process_zero:
            return
        print(f"{self.label}: {_shown(logs)}")


def label_stage_output(trainer: Any, label: str) -> None:
    """Replace ``trainer``'s progress bar (or, with ``disable_tqdm``, its log printer) by the labelled one."""
    if trainer.args.disable_tqdm:
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(StageLogPrinter(label))
    else:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(StageProgressCallback(label))


def _accelerator_available() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


def quiet_console(disable_tqdm: bool) -> None:
    """Process-wide console settings of a run (see the module docstring); the CLI calls it once."""
    if disable_tqdm:
        import datasets
        import huggingface_hub.utils
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        huggingface_hub.utils.disable_progress_bars()
    if not _accelerator_available():
        warnings.filterwarnings("ignore", message=PIN_MEMORY_WARNING, category=UserWarning)
