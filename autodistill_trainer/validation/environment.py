"""Validation against the outside world: metric scripts, installed integrations, storage URLs, paths, the Hub."""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import re
from typing import Any

from ..configs import checks
from ..errors import ConfigError, did_you_mean

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------- metrics


def check_metric_names(metrics: list[str], key: str, trust_remote_code: bool = False) -> None:
    """Shipped metrics run our code; any other name is a metric script (a local path or the Hub) that
    ``evaluate.load`` imports, which needs ``trust_remote_code``. A name very close to a shipped one is a typo."""

    from ..metrics import SHIPPED_METRICS

    for spec in metrics:
        name = spec.partition(":")[0]
        if name in SHIPPED_METRICS:
            continue
        is_path = os.path.exists(spec) or os.path.exists(name)
        close = difflib.get_close_matches(name.lower(), list(SHIPPED_METRICS), n=1, cutoff=0.75)
        if close and not is_path:
            raise ConfigError(
                f"{key}: {checks.shown(spec)} is not a shipped metric ({', '.join(SHIPPED_METRICS)}) nor a local path. "
                f"Did you mean: {close[0]!r}? (Other names are loaded from the Hub with evaluate.load.)"
            )
        if not trust_remote_code:
            where = "the local metric script" if is_path else "the Hub metric"
            raise ConfigError(
                f"{key}: {checks.shown(spec)} is not a shipped metric ({', '.join(SHIPPED_METRICS)}); loading "
                f"{where} imports and runs its code: set auto_distillation.evaluation.trust_remote_code: true "
                "to allow it."
            )


# ------------------------------------------------------------------------------------------------- integrations

# report_to names whose Python module differs from the name
_INTEGRATION_MODULES = {"azure_ml": "azureml", "flyte": "flytekit", "tensorboard": "tensorboard"}


def _known_report_integrations() -> set[str] | None:
    try:
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK
    except ImportError:  # pragma: no cover - layout changed
        return None
    return set(INTEGRATION_TO_CALLBACK)


def check_report_to(args: Any, where: str) -> None:
    """Every ``report_to`` integration is one transformers knows and its package is installed."""
    known = _known_report_integrations()
    report_to = args.report_to if isinstance(args.report_to, (list, tuple)) else [args.report_to]
    for name in report_to:
        if name in ("all", "none", None):
            continue
        if known is not None and name not in known:
            raise ConfigError(
                f"{where}.report_to: unknown integration {checks.shown(name)}; use [] (none), 'all' or some of "
                f"{sorted(known)}.{did_you_mean(str(name), sorted(known))}"
            )
        module = _INTEGRATION_MODULES.get(name, name)
        installed = importlib.util.find_spec(module) is not None
        if name == "tensorboard":
            installed = installed or importlib.util.find_spec("tensorboardX") is not None
        if not installed:
            raise ConfigError(
                f"{where}.report_to: {name!r} is not installed (no module {module!r}); pip install {module}, or "
                f"remove it from report_to."
            )


# ------------------------------------------------------------------------------------------------- storage

STORAGE_CONNECT_TIMEOUT_S = 5


def check_storage_url(url: str, key: str) -> None:
    """An Optuna storage URL parses (sqlalchemy's ``make_url``); a SQLite file's directory exists and is writable;
    a database server answers within :data:`STORAGE_CONNECT_TIMEOUT_S` seconds (checked once, here)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as error:
        raise ConfigError(f"{key} {checks.shown(url)} is not a database URL ({error}); write e.g. "
                          "sqlite:///path/to/study.db or postgresql://user@host/db.") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:":
            raise ConfigError(f"{key} {checks.shown(url)} names no file; an in-memory database cannot be shared by "
                              "the search: write sqlite:///path/to/study.db.")
        directory = os.path.dirname(os.path.abspath(database)) or "."
        if not os.path.isdir(directory):
            raise ConfigError(f"{key} {checks.shown(url)}: directory {directory!r} does not exist; create it or "
                              "fix the path (sqlite:///relative.db, sqlite:////absolute/path.db).")
        if not os.access(directory, os.W_OK):
            raise ConfigError(f"{key} {checks.shown(url)}: directory {directory!r} is not writable.")
        return
    from sqlalchemy import create_engine

    try:
        engine = create_engine(parsed, connect_args={"connect_timeout": STORAGE_CONNECT_TIMEOUT_S})
    except (ImportError, SQLAlchemyError, TypeError) as error:
        raise ConfigError(f"{key} {checks.shown(url)} cannot be used: {checks.shown(str(error), 160)}; install "
                          "its database driver or fix the URL.") from None
    try:
        with engine.connect():
            pass
    except (SQLAlchemyError, OSError) as error:
        reason = str(getattr(error, "orig", error)).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ConfigError(f"{key} {checks.shown(url)}: cannot connect ({checks.shown(reason, 160)}); fix the URL or "
                          "start the database server.") from None
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------------------------- paths

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def resolve_model_source(name_or_path: str, key: str) -> str:
    """``offline:`` names resolved; a path that is neither an existing directory nor a Hub id is an error."""
    from ..teacher import resolve_model_path

    try:
        resolved = resolve_model_path(name_or_path)
    except FileNotFoundError as error:
        raise ConfigError(f"{key} {checks.shown(name_or_path)}: {error}") from None
    except ConfigError as error:
        raise ConfigError(f"{key}: {error}") from None
    if os.path.exists(resolved):
        if not os.path.isdir(resolved):
            raise ConfigError(f"{key} {checks.shown(name_or_path)} is a file; give the directory holding config.json "
                              "(a save_pretrained output).")
        if not os.path.isfile(os.path.join(resolved, "config.json")):
            raise ConfigError(f"{key} {checks.shown(name_or_path)} holds no config.json; give a directory written by "
                              "save_pretrained.")
        return resolved
    if not _HUB_ID.match(name_or_path):
        raise ConfigError(
            f"{key} {checks.shown(name_or_path)} is neither an existing directory nor a Hub model id ('name' or "
            "'org/name'); fix the path (or use 'offline:all-MiniLM-L6-v2')."
        )
    return resolved


def check_paths(teacher: Any, data: Any, model: Any) -> None:
    """Teacher, encoder and base-config sources resolve; local data files exist (and are files)."""
    if teacher.model_name_or_path:
        resolve_model_source(teacher.model_name_or_path, "teacher.model_name_or_path")
    if teacher.pretrained_encoder:
        resolve_model_source(teacher.pretrained_encoder, "teacher.pretrained_encoder")
    if isinstance(model.base_config, str):
        resolve_model_source(model.base_config, "model.base_config")
    for key in ("train_file", "validation_file"):
        path = getattr(data, key)
        if path and os.path.isdir(path):
            raise ConfigError(f"data.{key} {checks.shown(path)} is a directory; give the path of a local csv or "
                              "json file.")
        if path and not os.path.isfile(path):
            raise ConfigError(f"data.{key} {checks.shown(path)} does not exist; give the path of a local csv or "
                              "json file.")
    if data.validation_file and not data.train_file:
        raise ConfigError("data.validation_file is given without data.train_file; give both local files.")



def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set: nothing can be downloaded."""
    return any(os.environ.get(v, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


#: Files autodistill keeps in its output directory: the marker binding it to a run's inputs, and the lock.
MARKER_FILE = ".autodistill.json"
LOCK_FILE = ".autodistill.lock"


def check_output_dir(path: str) -> None:
    """Refuse an output directory that is unsafe or not ours (see the module docstring); create nothing."""
    real = os.path.realpath(path)
    home = os.path.realpath(os.path.expanduser("~"))
    if real == os.path.realpath(os.sep) or real == home:
        raise ConfigError(f"output_dir {path!r} is {'/' if real != home else 'your home directory'}: "
                             "give a dedicated directory (e.g. outputs/<name>).")
    if os.path.exists(real) and not os.path.isdir(real):
        raise ConfigError(f"output_dir {path!r} is a file, not a directory: give a directory path.")
    existing = real
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir {path!r} is not writable ({existing} is read-only): give a writable path.")
    if os.path.isdir(real) and not os.path.isfile(os.path.join(real, MARKER_FILE)):
        foreign = sorted(name for name in os.listdir(real) if name != LOCK_FILE)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise ConfigError(
                f"output_dir {path!r} already holds files that are not autodistill output ({shown}): "
                "give a new or empty directory."
            )
