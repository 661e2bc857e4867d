"""Reading recipe YAML as plain data, safely: no Python objects, no duplicate keys, no alias bombs, bounded depth.

:class:`RecipeLoader` is a ``yaml.SafeLoader`` (it never constructs Python objects) that also

* reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``; PyYAML would give the string ``'1e-3'``);
* refuses a key written twice in one mapping (naming the key and both lines): PyYAML would keep the last one
  silently, so a second ``auto_distillation:`` block would replace the first;
* refuses nesting deeper than :data:`MAX_DEPTH` levels (instead of a ``RecursionError``);
* refuses documents whose aliases expand to more than :data:`MAX_EXPANDED_NODES` nodes ("billion laughs"):
  the nodes are counted while composing, before any value is built or formatted.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

#: Deepest nesting of mappings/lists a recipe may use (the shipped recipes use 5).
MAX_DEPTH = 32
#: Most nodes a document may hold once its aliases are expanded (the shipped recipes hold about 200).
MAX_EXPANDED_NODES = 10_000


class RecipeYAMLError(yaml.MarkedYAMLError):
    """A document that is valid YAML but refused as a recipe (duplicate key, alias bomb, too deep)."""


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus YAML 1.2 floats, refusal of duplicate keys, a depth limit and an alias budget."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self._expanded = 0
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = self.anchors.get(event.anchor)
            if node is not None:
                self._count(self._sizes.get(id(node), 1), event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise RecipeYAMLError(
                None, None, f"nesting deeper than {MAX_DEPTH} levels; a recipe is a few levels of mappings and lists",
                event.start_mark,
            )
        before = self._expanded
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._count(1, event.start_mark)
        self._sizes[id(node)] = self._expanded - before
        return node

    def _count(self, nodes: int, mark: Any) -> None:
        self._expanded += nodes
        if self._expanded > MAX_EXPANDED_NODES:
            raise RecipeYAMLError(
                None, None, f"aliases expand the document to more than {MAX_EXPANDED_NODES} values (a YAML 'billion "
                "laughs' bomb?); write the values out, or use fewer aliases", mark,
            )

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base constructor explains it
                    continue
                if first is not None:
                    shown = repr(key) if len(repr(key)) <= 80 else repr(key)[:77] + "..."
                    raise RecipeYAMLError(
                        None, None, f"duplicate key {shown} (first written at line {first.line + 1}); "
                        "a key may appear once per mapping: merge the two or remove one", key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_load(stream: Any) -> Any:
    """Parse YAML as plain data (mappings, lists, strings, numbers, booleans, null), never Python objects."""
    return yaml.load(stream, Loader=RecipeLoader)  # noqa: S506 - RecipeLoader is a SafeLoader subclass


def yaml_error_message(error: yaml.YAMLError, source: str) -> str:
    """A one-line message for a YAML error: where, and what; Python tags get an explanation."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if isinstance(error, RecipeYAMLError):
        return f"{source}{where}: {problem}."
    match = re.search(r"tag '?(tag:yaml\.org,2002:)?(python/[^' ]*)", problem)
    if match:
        return (
            f"{source}{where} uses the YAML tag '!!{match.group(2)}', which would build a Python object; recipes are "
            "plain data (read with yaml.safe_load), so tags that construct or call Python objects are refused. "
            "Write the value as a string, number, list or mapping."
        )
    return f"{source} is not valid YAML{where}: {problem}."
