"""Reading a study file's YAML safely: plain values only, ``1e-3`` a number, and aliases bounded.

An alias (``*a``) stands for the whole node its anchor (``&a``) names, so a few hundred bytes of nested
aliases ("billion laughs") describe a document of billions of values. PyYAML shares the node rather
than copying it, but whatever walks the result afterwards (validation, an error message's ``repr``)
walks every expansion. The loader counts the values a document holds once its aliases are expanded,
as it composes it, and stops past :data:`MAX_VALUES`: far above any study file, far below what
exhausts memory. A key given twice in one mapping is an error (PyYAML keeps the last silently, so
``trials: 3`` above ``trials: 4`` ran 4 trials); a merge (``<<: *a``) may still override.
"""

from __future__ import annotations

import re

import yaml

__all__ = ["MAX_VALUES", "AliasBombError", "DuplicateKeyError", "Dumper", "Loader", "problem"]

MAX_VALUES = 100_000  # values (scalars, lists, mappings) of a document with its aliases expanded


class AliasBombError(yaml.YAMLError):
    """The document holds more than :data:`MAX_VALUES` values once its aliases are expanded."""

    def __init__(self, mark: yaml.Mark | None) -> None:
        self.problem_mark = mark
        self.problem = f"more than {MAX_VALUES:,} values once its aliases (*name) are expanded"
        super().__init__(self.problem)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping gives one key twice."""

    def __init__(self, key: object, mark: yaml.Mark | None) -> None:
        self.problem_mark = mark
        self.problem = f"key {key!r} given twice"
        super().__init__(self.problem)


class Loader(yaml.SafeLoader):
    """Safe YAML (no ``!!python`` tags) where ``1e-3`` is a float, not a string as in YAML 1.1, and
    where aliases cannot expand past :data:`MAX_VALUES` values."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._expanded: dict[int, int] = {}  # id(node) -> the values it stands for, aliases expanded

    def compose_node(self, parent, index):
        alias = self.check_event(yaml.AliasEvent)
        node = super().compose_node(parent, index)
        if alias:  # the anchored node again: it counts again, in full (an unfinished one counts 1)
            return node
        if isinstance(node, yaml.MappingNode):
            self._check_unique(node)
        children = node.value if isinstance(node, yaml.SequenceNode) else ()
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        size = 1 + sum(self._expanded.get(id(child), 1) for child in children)
        if size > MAX_VALUES:
            raise AliasBombError(node.start_mark)
        self._expanded[id(node)] = size
        return node

    def _check_unique(self, node: yaml.MappingNode) -> None:
        """Each key once in a mapping as written, merged ones included (each mapping is checked as it
        is composed, before a merge flattens it into another); one merge key (``<<: [*a, *b]`` merges several)."""
        seen, merges = set(), 0
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merges += 1
                if merges > 1:
                    raise DuplicateKeyError("<<", key_node.start_mark)
            elif isinstance(key_node, yaml.ScalarNode):
                key = self.construct_object(key_node)
                if key in seen:
                    raise DuplicateKeyError(key, key_node.start_mark)
                seen.add(key)


def _exponents_are_floats(cls: type, base: type) -> None:
    """``1e-3`` and ``2.5E+4`` resolve to floats for ``cls`` (YAML 1.1 reads them as strings), in
    its own copy of ``base``'s resolvers: PyYAML's own loaders and dumpers stay as they are."""
    cls.yaml_implicit_resolvers = {k: list(v) for k, v in base.yaml_implicit_resolvers.items()}
    cls.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


_exponents_are_floats(Loader, yaml.SafeLoader)


class Dumper(yaml.SafeDumper):
    """Safe YAML output that :class:`Loader` reads back as written: a string such as ``"1e5"`` is
    quoted (the loader would read it unquoted as a number)."""


_exponents_are_floats(Dumper, yaml.SafeDumper)


def problem(exc: yaml.YAMLError) -> str:
    """What is wrong with a YAML text and where, on one line."""
    mark = getattr(exc, "problem_mark", None)
    text = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{text}{where}".replace("\n", " ")
