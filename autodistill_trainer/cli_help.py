"""``autodistill --help``: the recipe's sections and fields (from the config dataclasses) and the override syntax."""

from __future__ import annotations

import dataclasses
import re
import textwrap
from typing import Any

from .configs.distillation import FlashDistillationConfig, RegularDistillationConfig
from .configs.search import SearchConfig
from .configs.sections import BaselineArguments, DataArguments, EvaluationArguments, ModelArguments, TeacherArguments

__all__ = ["usage", "SECTIONS"]

#: (recipe path, dataclass) of every section a recipe may hold, in the order a recipe usually lists them.
SECTIONS: tuple[tuple[str, Any], ...] = (
    ("model", ModelArguments),
    ("teacher", TeacherArguments),
    ("data", DataArguments),
    ("auto_distillation.search", SearchConfig),
    ("auto_distillation.flash_distillation", FlashDistillationConfig),
    ("auto_distillation.regular_distillation", RegularDistillationConfig),
    ("auto_distillation.evaluation", EvaluationArguments),
    ("baseline", BaselineArguments),
)

_HEAD = """\
usage: autodistill RECIPE.yaml [--section.key VALUE | --key VALUE ...]
       accelerate launch run_autodistill.py RECIPE.yaml [overrides]   (several processes)

Search student architectures and distil them from a teacher, as the recipe says (see recipes/*.yaml).

Overrides: --section.key VALUE sets any recipe value (--auto_distillation.search.max_trials 3); --key VALUE when
key names exactly one recipe field (--max_trials 3, --learning_rate 1e-3); --key=VALUE works too. Values are
YAML: 3 is an int, [1, 2] a list, {a: 1} a dict, true a bool, null clears a value.

Outputs in output_dir: search_results.json/.csv/.md, pareto_front.png, summary.json, best_model/ (a plain
Transformers model with its tokenizer and model card), recipe.resolved.json, and the study, teacher and caches
that let the same command resume. Exit status: 0 done, 1 nothing trained or not exportable, 2 bad input,
130 interrupted.

Recipe sections and their keys:
"""


def _type_name(annotation: Any) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = str(text).replace("typing.", "")
    optional = re.fullmatch(r"Optional\[(.*)\]", text)
    text = optional.group(1) if optional else text
    union = re.fullmatch(r"Union\[(.*)\]", text)
    if not union:
        return text
    parts, depth, current = [], 0, ""
    for char in union.group(1):  # split on the top-level commas only: Union[dict[str, X], str]
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts, current = [*parts, current.strip()], ""
        else:
            current += char
    return " | ".join([*parts, current.strip()])


def _section(path: str, cls: Any) -> list[str]:
    doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    lines = [f"  {path}:" + (f"  {doc}" if doc and not doc.startswith(cls.__name__ + "(") else "")]
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        help_text = f.metadata.get("help", "")
        head = f"    {f.name} ({_type_name(f.type)})"
        if help_text:
            wrapped = textwrap.wrap(help_text, width=112 - 8)
            lines.append(head + ":")
            lines += [" " * 8 + w for w in wrapped]
        else:
            lines.append(head)
    return lines


def usage() -> str:
    """The help text: usage, override syntax, outputs, then every recipe section and key."""
    lines = [_HEAD.rstrip("\n")]
    for path, cls in SECTIONS:
        lines += _section(path, cls)
    lines += [
        "  (flash/regular: layer_mappings may be written layer_mappings_for_knowledge_transfer, the design's name)",
        "  auto_distillation.train:  any transformers.TrainingArguments field (learning_rate, seed, ...)",
        "  output_dir:  where everything is written (default outputs/<model.name>); refused if it holds other files",
    ]
    return "\n".join(lines)
