"""Parse layer mappings written in any of the design's forms into one typed shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .errors import ConfigError
from .features import OutputProcess


@dataclass(frozen=True)
class LayerMapping:
    """One student feature matched to one teacher feature.

    Attributes:
        student_layer: dotted module name in the student (``""`` is the whole model, e.g. with
            process ``"logits"``).
        student_process: selects from that module's output (index string, key, callable or None).
        teacher_layer: dotted module name in the teacher.
        teacher_process: likewise for the teacher.
    """

    student_layer: str
    student_process: OutputProcess
    teacher_layer: str
    teacher_process: OutputProcess

    @property
    def name(self) -> str:
        """A short readable name, used in logs: the student layer plus its process."""
        process = self.student_process
        shown = process if isinstance(process, (str, int)) else "fn"
        if not self.student_layer:
            return str(shown) if process not in (None, "") else "output"
        return self.student_layer if process in (None, "") else f"{self.student_layer}[{shown}]"


def _check_layer(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(
            f"{where}: a layer must be a dotted module name string ('' for the whole model), got {value!r}."
        )
    return value


def parse_layer_mapping(mapping: Any, where: str = "layer_mappings[0]") -> LayerMapping:
    """Accept ``(student, teacher)``, ``(student, s_proc, teacher, t_proc)``,
    ``[(student, s_proc), (teacher, t_proc)]`` or a :class:`LayerMapping`."""
    if isinstance(mapping, LayerMapping):
        return mapping
    if isinstance(mapping, dict):
        unknown = set(mapping) - {"student_layer", "student_process", "teacher_layer", "teacher_process"}
        if unknown or "student_layer" not in mapping or "teacher_layer" not in mapping:
            raise ConfigError(
                f"{where}: a mapping dict needs keys student_layer and teacher_layer (optional student_process, "
                f"teacher_process); got {sorted(mapping)}."
            )
        return LayerMapping(
            _check_layer(mapping["student_layer"], where),
            mapping.get("student_process"),
            _check_layer(mapping["teacher_layer"], where),
            mapping.get("teacher_process"),
        )
    if isinstance(mapping, (str, bytes)) or not isinstance(mapping, Sequence):
        raise ConfigError(
            f"{where}: expected a mapping like ('student.layer', 'teacher.layer') or "
            f"('student.layer', '1', 'teacher.layer', '1'), got {mapping!r}."
        )
    items = list(mapping)
    if len(items) == 2 and all(isinstance(x, Sequence) and not isinstance(x, str) for x in items):
        sides = []
        for side, name in zip(items, ("student", "teacher")):
            if len(side) not in (1, 2):
                raise ConfigError(f"{where}: the {name} side must be (layer,) or (layer, process), got {side!r}.")
            sides.append((_check_layer(side[0], where), side[1] if len(side) == 2 else None))
        return LayerMapping(sides[0][0], sides[0][1], sides[1][0], sides[1][1])
    if len(items) == 2:
        return LayerMapping(_check_layer(items[0], where), None, _check_layer(items[1], where), None)
    if len(items) == 4:
        return LayerMapping(_check_layer(items[0], where), items[1], _check_layer(items[2], where), items[3])
    raise ConfigError(
        f"{where}: a mapping has 2 items (student_layer, teacher_layer) or 4 items "
        f"(student_layer, student_process, teacher_layer, teacher_process); got {len(items)}: {mapping!r}."
    )


def parse_layer_mappings(mappings: Any, key: str = "layer_mappings") -> list[LayerMapping]:
    """Parse a list of mappings; an empty list is an error."""
    if isinstance(mappings, (str, bytes)) or not isinstance(mappings, Sequence) or len(mappings) == 0:
        raise ConfigError(f"{key}: expected a non-empty list of layer mappings, got {mappings!r}.")
    return [parse_layer_mapping(m, f"{key}[{i}]") for i, m in enumerate(mappings)]


def loss_names(mappings: Sequence[LayerMapping], loss_types: Sequence[str]) -> list[str]:
    """One unique log name per mapping: ``"<loss type>:<mapping name>"``, with ``#2``, ``#3``... on repeats."""
    names, seen = [], {}
    for mapping, loss_type in zip(mappings, loss_types):
        name = f"{loss_type}:{mapping.name}"
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return names
