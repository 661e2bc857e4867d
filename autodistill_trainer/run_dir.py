"""The CLI's output directory: checked, locked, bound to one run fingerprint, and written only where it is ours.

* :func:`check_output_dir`: ``/``, the home directory, a file, an unwritable directory, or a directory holding
  files that are not this product's output (no marker file) are refused with one line.
* :class:`OutputDirLock`: ``output_dir/.autodistill.lock`` (pid + host) so two runs never share a directory; a lock
  whose pid is dead on this host is stale and taken over.
* :func:`run_fingerprint` / :func:`claim_output_dir`: a study, its teacher and its caches belong to one fingerprint of
  (data and the content hash of its files, teacher source, task, search space, objectives), stored in
  ``output_dir/.autodistill.json``; once the run has its teacher (:func:`commit_output_dir`), a rerun with another
  fingerprint is refused, saying what differs.
* :func:`export_best_model`: copies a trained model to ``best_model/`` only if its tensors are finite, and only
  replaces a ``best_model/`` this product wrote (its manifest lists every file), swapping directories by rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from typing import Any, Callable, Mapping, Optional

import torch
from safetensors import safe_open

from .errors import ConfigError
from .fileio import atomic_write_json, pid_alive
from .validation.environment import LOCK_FILE, MARKER_FILE, check_output_dir

__all__ = [
    "MARKER_FILE", "LOCK_FILE", "BEST_MODEL_DIR", "OutputDirError", "NonFiniteModelError", "check_output_dir",
    "OutputDirLock", "run_fingerprint", "claim_output_dir", "commit_output_dir", "atomic_write_json",
    "check_finite_weights", "export_best_model",
]

BEST_MODEL_DIR = "best_model"
EXPORT_MANIFEST = ".autodistill_export.json"


class OutputDirError(ConfigError):
    """The output directory cannot be used as it is (the message says why and the fix)."""


class NonFiniteModelError(RuntimeError):
    """A model about to be exported holds NaN or infinite weights."""


class OutputDirLock:
    """``output_dir/.autodistill.lock``: one run per output directory (context manager)."""

    def __init__(self, output_dir: str) -> None:
        self.path = os.path.join(output_dir, LOCK_FILE)
        self.output_dir = output_dir
        self.held = False

    def acquire(self) -> None:
        """Create the lock file, or raise :class:`OutputDirError` naming the run that holds it."""
        os.makedirs(self.output_dir, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner == {}:
                    continue  # released meanwhile
                pid = owner.get("pid") if owner else None
                if isinstance(pid, int) and pid > 0 and owner.get("host") == me["host"] and not pid_alive(pid):
                    self._remove_stale()
                    continue
                who = f"pid {owner.get('pid')} on {owner.get('host')}" if owner else "another run"
                raise OutputDirError(
                    f"output_dir {self.output_dir!r} is in use by {who} ({self.path}): wait for it to finish, or "
                    "use another output_dir (delete the lock file only if that run is gone)."
                ) from None
            self.held = True  # from here on, release() removes it (even if interrupted while writing)
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return
        raise OutputDirError(f"could not take the lock {self.path}: another run keeps taking it; retry.")

    def _owner(self) -> Optional[dict]:
        try:
            with open(self.path, encoding="utf-8") as f:
                owner = json.load(f)
        except FileNotFoundError:
            return {}  # released meanwhile: retry
        except (OSError, ValueError):
            return None  # unreadable (being written): treat as held
        return owner if isinstance(owner, dict) else None

    def _remove_stale(self) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass  # another process removed the same stale lock first

    def release(self) -> None:
        """Remove the lock file if this object holds it."""
        if self.held:
            self.held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass  # removed by hand meanwhile: nothing left to release

    def __enter__(self) -> "OutputDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


#: Fingerprint components added after the first release: a marker written without one is compared without it (and
#: then rebound to the full fingerprint), so an upgrade does not refuse the directories of earlier runs.
LATER_COMPONENTS = ("student",)


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def run_fingerprint(data_args: Any, teacher: Any, search: Any, model: Any = None) -> dict[str, Any]:
    """What a study, its teacher and its caches belong to: one JSON-able dict per component.

    ``data``: the data section (``DataArguments``, but ``cache_dir``) with the content hash of each local file;
    ``teacher`` (``TeacherArguments``): its source and fine-tuning arguments; ``task``; ``search_space`` and
    ``objectives`` (metrics and directions) of ``search`` (a ``SearchConfig``); ``student`` (when ``model``, the
    recipe's ``ModelArguments``, is given): what builds the students besides the searched fields (class, base
    config, initialisation from the teacher), so that a resumed study never mixes students built differently.
    """
    data = dict(vars(data_args))
    data.pop("cache_dir", None)  # where caches live changes no result
    for key in ("train_file", "validation_file"):
        if data.get(key) and os.path.isfile(data[key]):
            data[f"{key}_sha256"] = _file_digest(data[key])
    return json.loads(json.dumps({
        "data": data,
        "teacher": {"model_name_or_path": teacher.model_name_or_path, "pretrained_encoder": teacher.pretrained_encoder,
                    "finetune": teacher.finetune},
        "task": data_args.task,
        "search_space": {k: list(v) for k, v in search.search_space.items()},
        "objectives": {"metrics": list(search.metrics), "higher_is_better": list(search.higher_is_better)},
        **({"student": _student_component(model)} if model is not None else {}),
    }, default=str))


def _student_component(model: Any) -> dict[str, Any]:
    """How the students are built (``selection_order`` only where weight selection uses it, so runs without
    selection keep the fingerprint they had before the key existed)."""
    student = {"student_class": model.student_class, "base_config": model.base_config,
               "init_embeddings_from_teacher": model.init_embeddings_from_teacher,
               "select_teacher_weights": model.select_teacher_weights}
    if model.select_teacher_weights:
        student["selection_order"] = model.selection_order
    return student


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    diffs = []
    for key in new:
        if key not in old:
            diffs.append(key)
        elif isinstance(new[key], dict) and isinstance(old[key], dict):
            diffs += [f"{key}.{k}" for k in sorted(set(old[key]) | set(new[key])) if old[key].get(k) != new[key].get(k)]
        elif old[key] != new[key]:
            diffs.append(key)
    return diffs


def _without_new_components(fingerprint: dict, old: Mapping[str, Any]) -> dict:
    """``fingerprint`` without the components an older marker did not record (``student``, added later)."""
    return {k: v for k, v in fingerprint.items() if k in old or k not in LATER_COMPONENTS}


def claim_output_dir(output_dir: str, fingerprint: Mapping[str, Any]) -> bool:
    """Bind ``output_dir`` to ``fingerprint`` (write the marker), or refuse a directory bound to another one.

    A marker with another fingerprint is refused once :func:`commit_output_dir` has marked the directory as holding
    a teacher and a study for it; before that (a first run stopped early: bad data, Ctrl-C) the directory is simply
    bound to the new fingerprint. Returns True when this is a new binding, False when it resumes one.
    """
    marker = os.path.join(output_dir, MARKER_FILE)
    old = _read_marker(output_dir)
    if old is not None:
        if old.get("fingerprint") == dict(fingerprint):
            return False
        if isinstance(old.get("fingerprint"), dict) and old["fingerprint"] == _without_new_components(
                dict(fingerprint), old["fingerprint"]):
            # a directory from a version whose fingerprint had fewer components: bind it to the full fingerprint
            atomic_write_json(marker, {**old, "fingerprint": dict(fingerprint)})
            return False
        others = [n for n in os.listdir(output_dir) if n not in (MARKER_FILE, LOCK_FILE)]
        if old.get("committed") and others:
            differs = ", ".join(_differences(old.get("fingerprint") or {}, fingerprint)[:4]) or "the recipe"
            raise OutputDirError(
                f"output_dir {output_dir!r} holds a study for other inputs ({differs} differ): use a new output_dir, "
                "or delete this one to start over."
            )
    os.makedirs(output_dir, exist_ok=True)
    atomic_write_json(marker, {"product": "autodistill-trainer", "fingerprint": dict(fingerprint), "committed": False})
    return True


def commit_output_dir(output_dir: str) -> None:
    """Mark ``output_dir`` as holding a teacher (and soon a study) for its fingerprint: from now on, other inputs
    are refused by :func:`claim_output_dir`."""
    marker = _read_marker(output_dir)
    if marker is None:
        raise OutputDirError(f"output_dir {output_dir!r} lost its {MARKER_FILE} during the run: rerun the command.")
    if not marker.get("committed"):
        atomic_write_json(os.path.join(output_dir, MARKER_FILE), {**marker, "committed": True})


def _read_marker(output_dir: str) -> Optional[dict]:
    marker = os.path.join(output_dir, MARKER_FILE)
    if not os.path.isfile(marker):
        return None
    try:
        with open(marker, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict):
        raise OutputDirError(f"{marker} is unreadable: delete output_dir {output_dir!r} or use another.")
    return data


def check_finite_weights(model_dir: str) -> None:
    """Raise :class:`NonFiniteModelError` if a floating-point tensor of the model in ``model_dir`` is NaN or inf."""
    files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    if not files:
        raise NonFiniteModelError(f"no .safetensors weights in {model_dir}")
    for name in files:
        with safe_open(os.path.join(model_dir, name), framework="pt") as weights:
            for key in weights.keys():
                tensor = weights.get_tensor(key)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    raise NonFiniteModelError(f"{name}: tensor {key!r} holds NaN or infinite values")


def _ours(directory: str) -> bool:
    """Whether every file under ``directory`` is listed in its export manifest (so this product wrote it)."""
    try:
        with open(os.path.join(directory, EXPORT_MANIFEST), encoding="utf-8") as f:
            listed = set(json.load(f)["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    present = {os.path.relpath(os.path.join(root, name), directory)
               for root, _, names in os.walk(directory) for name in names} - {EXPORT_MANIFEST}
    return present <= listed


def export_best_model(model_dir: str, output_dir: str, finish: Optional[Callable[[str], None]] = None) -> str:
    """Copy the trained model in ``model_dir`` to ``output_dir/best_model`` and return that path.

    The weights are checked first (:func:`check_finite_weights`). The copy is staged next to ``best_model``,
    ``finish(staging_dir)`` adds files (the model card), a manifest lists every file, then the staged directory
    replaces ``best_model`` by rename. An existing ``best_model`` is replaced only if its manifest lists all of
    its files; otherwise :class:`OutputDirError` is raised and nothing is touched.
    """
    check_finite_weights(model_dir)
    target = os.path.join(output_dir, BEST_MODEL_DIR)
    if os.path.lexists(target) and not (os.path.isdir(target) and _ours(target)):
        raise OutputDirError(
            f"{target} holds files autodistill did not write: move them elsewhere (or use another output_dir)."
        )
    staging = f"{target}.tmp-{os.getpid()}"
    previous = f"{target}.old-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(model_dir, staging)
    if finish is not None:
        finish(staging)
    files = sorted(os.path.relpath(os.path.join(root, name), staging)
                   for root, _, names in os.walk(staging) for name in names)
    atomic_write_json(os.path.join(staging, EXPORT_MANIFEST), {"source": model_dir, "files": files})
    if os.path.isdir(target):
        os.rename(target, previous)
    os.rename(staging, target)
    shutil.rmtree(previous, ignore_errors=True)
    return target
