"""README's set-up commands: the test command is exactly what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)]


def test_readme_starts_with_the_main_job_and_the_test_command():
    main, tests = readme_commands()[:2]
    assert "run_autodistill.py recipes/rotten_tomatoes_demo.yaml" in main
    assert "-c constraints-cpu.txt" in main and "-c constraints-cpu.txt" in tests
    assert tests.endswith("python -m pytest")


def test_ci_runs_exactly_the_readme_test_command():
    tests = readme_commands()[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines


def test_cpu_constraint_pins_the_local_torch_wheel():
    assert "torch==2.13.0" in (ROOT / "constraints-cpu.txt").read_text().split()
