"""Per-trial search metrics for the user's ``report_to`` trackers, as ``search/<metric>`` at step = trial number.

Each distillation stage already reaches the trackers through its Trainer's integration callbacks (per-step losses).
What a dashboard also needs is one point per trial: the objectives and the trial's cost. :class:`SearchTracker`
sends, for each trained trial (COMPLETE), with the trial number as the step:

* ``search/<metric>`` for every numeric metric the evaluation returned (``search/accuracy``, ``search/loss``...),
* ``search/params``, ``search/flops``, ``search/latency`` from the trial's profile,
* ``search/train_loss/<stage>`` for the final training loss of each stage of the trial (``flash_1``, ...,
  ``regular``) when the built-in train function ran it.

TensorBoard (``report_to: [tensorboard]``) gets its own writer under ``<output_dir>/runs/search`` (or
``$TENSORBOARD_LOGGING_DIR/search``), so the tags are exactly ``search/<metric>``. Every other integration receives
the same values through its Transformers callback (``on_log`` with ``state.global_step`` = the trial number); those
callbacks apply their own key conventions (e.g. W&B's ``train/`` prefix). Only the main process reports.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Iterable, Mapping, Sequence

from transformers import TrainerControl, TrainerState, TrainingArguments
from transformers.integrations import TensorBoardCallback, get_reporting_integration_callbacks

logger = logging.getLogger(__name__)

__all__ = ["PREFIX", "SearchTracker", "stage_losses", "trial_scalars"]

#: Namespace of the per-trial values in the trackers.
PREFIX = "search/"

#: Profile fields of a result row sent with every trial.
PROFILE_FIELDS = ("params", "flops", "latency")


def stage_losses(stage_results: Iterable[Any]) -> dict[str, float]:
    """``{"flash_1": loss, ..., "regular": loss}`` from :class:`~autodistill_trainer.schedule.StageResult` s."""
    losses: dict[str, float] = {}
    for stage in stage_results:
        name = "regular" if stage.kind == "regular" else f"{stage.kind}_{stage.index + 1}"
        losses[name] = float(stage.train_loss)
    return losses


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def trial_scalars(row: Mapping[str, Any], losses: Mapping[str, float] | None = None) -> dict[str, float]:
    """The values one trained result row (:func:`~autodistill_trainer.search.results.rows_of`) sends, keyed
    ``search/<name>``: its numeric metrics, its profile (params, FLOPs, latency) and its stages' final losses."""
    values: dict[str, float] = {}
    for name in PROFILE_FIELDS:
        if _number(row.get(name)) is not None:
            values[PREFIX + name] = _number(row[name])
    for name, value in (row.get("metrics") or {}).items():
        if _number(value) is not None:
            values[PREFIX + name] = _number(value)
    for stage, loss in (losses or {}).items():
        if _number(loss) is not None:
            values[f"{PREFIX}train_loss/{stage}"] = _number(loss)
    return values


class SearchTracker:
    """Sends each trained trial's values to the trackers of ``args.report_to`` (see the module docstring).

    Args:
        args: the search's training arguments (``report_to``, ``output_dir``, ``process_index``).
        already_reported: trial numbers not to send again (the trials of earlier runs of a resumed study).
    """

    def __init__(self, args: TrainingArguments, already_reported: Iterable[int] = ()) -> None:
        self.args = args
        self.reported: set[int] = set(already_reported)
        self._writer: Any = None
        self._callbacks: list[Any] = []
        self._started = False
        classes = get_reporting_integration_callbacks(args.report_to) if args.process_index == 0 else []
        self._tensorboard = any(issubclass(cls, TensorBoardCallback) for cls in classes)
        self._callback_classes = [cls for cls in classes if not issubclass(cls, TensorBoardCallback)]

    @property
    def active(self) -> bool:
        """Whether any tracker receives the search's values (``report_to`` names one, main process)."""
        return self._tensorboard or bool(self._callback_classes)

    @property
    def logging_dir(self) -> str:
        """TensorBoard's directory for the search's values."""
        root = os.getenv("TENSORBOARD_LOGGING_DIR") or os.path.join(self.args.output_dir, "runs")
        return os.path.join(os.path.expanduser(root), "search")

    def _start(self) -> None:
        self._started = True
        if self._tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # torch's writer needs the tensorboard package; tensorboardX has its own
                from tensorboardX import SummaryWriter
            self._writer = SummaryWriter(log_dir=self.logging_dir)
        state, control = TrainerState(), TrainerControl()
        for cls in self._callback_classes:
            callback = cls()
            callback.on_train_begin(self.args, state, control)
            self._callbacks.append(callback)

    def log_rows(self, rows: Sequence[Mapping[str, Any]],
                 losses_by_arch: Mapping[str, Mapping[str, float]] | None = None,
                 arch_name: Any = None) -> int:
        """Send the trained rows not sent yet, by trial number; returns how many were sent.

        ``losses_by_arch`` maps ``arch_name(row["arch"])`` to that trial's stage losses (:func:`stage_losses`).
        """
        if not self.active:
            return 0
        sent = 0
        for row in sorted(rows, key=lambda r: r["number"]):
            if row.get("state") != "COMPLETE" or row["number"] in self.reported:
                continue
            losses = (losses_by_arch or {}).get(arch_name(row["arch"])) if arch_name is not None else None
            self.log_trial(row["number"], trial_scalars(row, losses))
            sent += 1
        return sent

    def log_trial(self, number: int, values: Mapping[str, float]) -> None:
        """Send ``values`` (keys ``search/...``) at step ``number``."""
        if not self.active:
            return
        if not self._started:
            self._start()
        self.reported.add(number)
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(key, value, number)
            self._writer.flush()
        state, control = TrainerState(global_step=number), TrainerControl()
        for callback in self._callbacks:
            callback.on_log(self.args, state, control, logs=dict(values))

    def close(self) -> None:
        """Flush and close the writers (a later :meth:`log_trial` opens them again)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        state, control = TrainerState(), TrainerControl()
        for callback in self._callbacks:
            callback.on_train_end(self.args, state, control)
        self._callbacks = []
        self._started = False
