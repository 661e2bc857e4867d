#!/usr/bin/env python
"""Search and distil small, fast students from a teacher, as a recipe says (the ``autodistill`` command).

    accelerate launch run_autodistill.py recipes/rotten_tomatoes_demo.yaml [--key value ...]
    python run_autodistill.py recipes/smoke.yaml --max_trials 2 --output_dir /tmp/smoke
    python run_autodistill.py --help

A thin wrapper of :func:`autodistill_trainer.cli.main` (see that module for the steps and the exit statuses).
"""

from __future__ import annotations

import sys

from autodistill_trainer.cli import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    sys.exit(main())
