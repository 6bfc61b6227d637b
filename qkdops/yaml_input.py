"""One loader for every YAML file people and tools hand us: links.yaml, jobs.yaml, SLO specs, game-day
scenarios, the metric catalogue.

PyYAML's ``SafeLoader`` builds no arbitrary objects, but on its own it

* shares the target of every alias, so a few hundred bytes of nested aliases ("billion laughs")
  become a value with 10⁹ reachable nodes — harmless until something walks or prints it: an error
  message that echoed such a value in links.yaml took gigabytes and was 312 MB long (issue 15);
* nests without limit (its composer recurses: a deep enough document ends in RecursionError);
* keeps the last of two equal keys in a mapping without a word.

``load_text`` and ``load_file`` refuse all three, and documents over ``MAX_BYTES``, with a
``YamlInputError`` that names the source (and the line and column when the parser knows them) and
never quotes more than a short excerpt of the input.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "YamlInputError", "load_documents", "load_file", "load_text"]

MAX_BYTES = 4 << 20
"""Largest document read (4 MiB): the biggest shipped file is ~40 KiB."""

MAX_DEPTH = 64
"""Deepest nesting of mappings and sequences (the shipped files nest at most 6 levels)."""

MAX_NODES = 1_000_000
"""Most nodes a document may hold once its aliases are expanded (the shipped files hold < 5,000)."""


class YamlInputError(ValueError):
    """A YAML document refused; the message is ``SOURCE: [line L, column C: ]invalid YAML: what`` or
    ``SOURCE: refused: why`` (a limit)."""


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` with a depth limit while composing and duplicate keys refused while constructing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:  # type: ignore[override]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable: SafeLoader's own message says so
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {excerpt(key)}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def clip(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters (an ellipsis marks the cut): for messages built from input."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short_repr() -> reprlib.Repr:
    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 2, 60, 60
    short.maxlist = short.maxdict = short.maxtuple = short.maxset = 4
    return short


excerpt = _short_repr().repr
"""A value from the input, echoed in an error message: a short repr however large or deep the value is
(strings and other scalars cut at 60 characters, containers at 4 items and 2 levels)."""


def _expanded_nodes(root: yaml.Node) -> int:
    """Nodes under ``root`` with every alias expanded, counted without expanding (memoised per shared
    node; at most ``MAX_NODES + 1``). A node that contains itself (a recursive alias) is refused."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, closing = stack.pop()
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        if closing:
            open_nodes.discard(id(node))
            sizes[id(node)] = min(MAX_NODES + 1, 1 + sum(sizes[id(child)] for child in children))
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            raise yaml.composer.ComposerError(None, None, "an alias refers to a node that contains it (recursive)",
                                              node.start_mark)
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
    return sizes[id(root)]


def load_text(text: str, source: str) -> Any:
    """The one YAML document in ``text`` as plain Python data; ``source`` names it in errors."""
    return _load(text, source, single=True)[0]


def load_documents(text: str, source: str) -> list[Any]:
    """Every YAML document in ``text`` (a stream separated by ``---``), each as plain Python data and each
    held to the limits of one document; ``[]`` for an empty stream. For formats written as several
    documents per file (OpenSLO, Kubernetes manifests)."""
    return _load(text, source, single=False)


def _load(text: str, source: str, single: bool) -> list[Any]:
    if len(text) > MAX_BYTES:
        raise YamlInputError(f"{source}: refused: larger than {MAX_BYTES >> 20} MiB")
    try:
        loader = _Loader(text)   # reads (and checks) the first characters already
    except yaml.YAMLError as exc:
        raise YamlInputError(f"{source}: invalid YAML: {clip(str(exc))}") from None
    try:
        if single:
            node = loader.get_single_node()
            return [None if node is None else _construct(loader, node, source)]
        documents = []
        while loader.check_node():
            documents.append(_construct(loader, loader.get_node(), source))
        return documents
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise YamlInputError(f"{source}: {where}invalid YAML: {clip(exc.problem or exc.context or 'unreadable')}") from None
    except yaml.YAMLError as exc:
        raise YamlInputError(f"{source}: invalid YAML: {clip(str(exc))}") from None
    except YamlInputError:
        raise
    except (ValueError, OverflowError) as exc:   # a scalar the constructor cannot convert: an int of 5,000 digits
        raise YamlInputError(f"{source}: refused: {clip(str(exc), 120)}") from None
    finally:
        loader.dispose()


def _construct(loader: _Loader, node: yaml.Node, source: str) -> Any:
    if _expanded_nodes(node) > MAX_NODES:
        raise YamlInputError(f"{source}: refused: more than {MAX_NODES:,} values once its aliases are "
                             "expanded (an alias bomb?)")
    return loader.construct_document(node)


def load_file(path: Path) -> Any:
    """``load_text`` of the file at ``path`` (UTF-8), named by its path in errors."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise YamlInputError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise YamlInputError(f"{path}: refused: larger than {MAX_BYTES >> 20} MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlInputError(f"{path}: invalid YAML: not UTF-8 (byte {exc.start})") from None
    return load_text(text, str(path))
