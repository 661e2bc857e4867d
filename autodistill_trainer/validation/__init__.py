"""Checks of a recipe that need the outside world: files and paths, installed packages, storage URLs, and names
against the models' structure.

Value and range checks live with the typed configs (:mod:`autodistill_trainer.configs`); this module is called by
:func:`autodistill_trainer.recipe.build_recipe` once those passed. Nothing here loads weights or data:

* :func:`check_metric_names`: metrics are shipped, or scripts the recipe consented to run (``trust_remote_code``).
* :func:`check_report_to`: the ``report_to`` integrations are known and installed.
* :func:`check_storage_url`: an Optuna storage URL parses, its SQLite directory is writable, a server answers.
* :func:`check_paths`: local teacher/encoder/base-config paths and data files exist; ``offline:`` names resolve.
* :func:`build_student_base_config` / :func:`check_search_space`: the student's base config overrides are
  MobileBERT fields, the search-space names are config fields the CLI does not set, and at least one
  architecture is valid.
* :func:`check_module_names`: hand-written block names and layer mappings name real modules, checked against a
  student and a teacher instantiated on the ``meta`` device (no memory, no weights; the teacher's
  ``config.json`` only).
"""

from .environment import (
    STORAGE_CONNECT_TIMEOUT_S,
    check_output_dir,
    check_metric_names,
    check_paths,
    check_report_to,
    check_storage_url,
    hub_offline,
    resolve_model_source,
)
from .models import (
    build_student_base_config,
    check_auto_blocks,
    check_latency_seq_length,
    check_module_names,
    check_search_space,
    check_task,
    check_weight_selection,
    student_class,
    student_module_names,
    teacher_module_names,
)

__all__ = [
    "STORAGE_CONNECT_TIMEOUT_S",
    "build_student_base_config",
    "check_auto_blocks",
    "check_latency_seq_length",
    "check_metric_names",
    "check_module_names",
    "check_output_dir",
    "check_paths",
    "check_report_to",
    "check_search_space",
    "check_storage_url",
    "check_task",
    "check_weight_selection",
    "hub_offline",
    "resolve_model_source",
    "student_class",
    "student_module_names",
    "teacher_module_names",
]
