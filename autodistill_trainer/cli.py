"""The ``autodistill`` command: search and distil small, fast students from a teacher, as a recipe says.

    autodistill recipes/smoke.yaml --max_trials 2 --output_dir /tmp/smoke
    accelerate launch run_autodistill.py recipes/rotten_tomatoes_demo.yaml [--key value ...]

:func:`main` parses the command line, validates the recipe and makes the process-wide settings;
:func:`autodistill_trainer.cli_run.run` runs a loaded recipe in numbered steps that call the library (like
Transformers' ``run_glue.py``) and makes no process-wide change.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

import transformers

from .cli_help import usage
from .errors import ConfigError
from .recipe import Recipe, load_recipe

logger = logging.getLogger("autodistill_trainer.cli")

__all__ = ["main", "run"]


def run(recipe: Recipe) -> int:
    """Run a loaded recipe (see :func:`autodistill_trainer.cli_run.run`)."""
    # imported here, not at the top: the training stack (Trainer, datasets, optuna, matplotlib) loads only once a
    # recipe is valid, so a rejected recipe answers without paying for it
    from .cli_run import run as run_recipe

    return run_recipe(recipe)


def main(argv: Optional[list[str]] = None) -> int:
    """Run ``autodistill RECIPE [--key value ...]``; returns the exit status.

    0: done; 1: the search trained nothing, or the best model was not exportable; 2: bad input (one line on stderr
    naming the key, value or file and the fix); 130: interrupted (what was kept is kept; the same command resumes).

    Process-wide settings, made here and nowhere in the library:

    * ``TOKENIZERS_PARALLELISM=false`` unless set: the fast tokenizers' thread pool does not survive the fork of
      DataLoader workers (it warns, or deadlocks).
    * glibc ``mallopt`` (:func:`_keep_freed_memory`): keep freed heap memory instead of trimming it every step.
    * logging: format and level for the whole process (info on the main process, warnings elsewhere).
    * console (:func:`~autodistill_trainer.console.quiet_console`): library progress bars off with ``disable_tqdm``;
      torch's pin_memory warning off without an accelerator.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or "-h" in argv or "--help" in argv:
        print(usage())
        return 0 if argv else 2
    output_dir = None
    try:
        recipe = load_recipe(argv[0], argv[1:])
        output_dir = recipe.training.output_dir
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        _keep_freed_memory()
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                            level=logging.INFO if recipe.training.should_log else logging.WARNING)
        transformers.utils.logging.set_verbosity_warning()
        from .console import quiet_console  # the training stack: imported once the recipe is valid

        quiet_console(recipe.training.disable_tqdm)
        return run(recipe)
    except ConfigError as error:  # bad input, found while validating or loading: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if output_dir is None:
            print("\ninterrupted while reading the recipe: nothing was written.", file=sys.stderr)
        else:
            print(f"\ninterrupted: {output_dir} keeps the finished trials, the teacher and the caches; run the same "
                  "command again to resume.", file=sys.stderr)
        return 130


def _keep_freed_memory() -> None:
    """Ask glibc to keep freed heap memory instead of returning it to the kernel after every step.

    With its default dynamic thresholds, glibc trims the heap top after each training step and page-faults it back
    in on the next (thousands of minor faults per distillation step; see bench/README.md). Process-wide: CLI only.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: 1 GiB
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: 32 MiB
    except (OSError, AttributeError):  # not glibc: nothing to tune
        logger.debug("not glibc: heap trimming left as it is")


if __name__ == "__main__":
    sys.exit(main())
