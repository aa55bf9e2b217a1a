"""YAML text to plain data, remembering the line of every key (for messages),
refusing duplicate keys, TAB indentation and oversized documents."""
from __future__ import annotations

import re
from typing import Any

import yaml

from arvnode.config.model import ConfigError, _Path
from arvnode.config.reader import _dotted


_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_NODES = 200_000


class _Abort(Exception):
    """Stop building the document; the reason is already in problems."""


class _Builder:
    """Build plain Python data from a composed YAML node tree.

    Mapping keys are kept as their literal text (``01234`` stays a string, it
    does not become an octal number), the line of every key is recorded, and
    duplicate keys are reported instead of silently overwritten.
    """

    def __init__(self, loader: yaml.SafeLoader, source: str, problems: list[str]) -> None:
        self._loader = loader
        self._source = source
        self._problems = problems
        self._stack: set[int] = set()
        self._count = 0
        self.lines: dict[_Path, int] = {}

    def build(self, node: yaml.Node, path: _Path) -> Any:
        self._count += 1
        if self._count > _MAX_NODES:
            self._problems.append(f"{self._source}: too many YAML nodes (alias expansion?)")
            raise _Abort()
        if isinstance(node, yaml.ScalarNode):
            return self._loader.construct_object(node, deep=True)
        if id(node) in self._stack:
            self._problems.append(
                f"{_dotted(path)}: recursive YAML alias ({self._source}, line "
                f"{node.start_mark.line + 1}); expected a finite structure"
            )
            raise _Abort()
        self._stack.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(child, path) for child in node.value]
            assert isinstance(node, yaml.MappingNode)
            return self._mapping(node, path)
        finally:
            self._stack.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: _Path) -> dict[str, Any]:
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                self._problems.append(
                    f"{_dotted(path + (key_node.value,))}: duplicate key (lines "
                    f"{seen[key_node.value]} and {line} of {self._source}); "
                    "expected each key once"
                )
            seen[key_node.value] = line
        self._loader.flatten_mapping(node)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self._problems.append(
                    f"{_dotted(path)}: a complex mapping key ({self._source}, line "
                    f"{key_node.start_mark.line + 1}); expected plain string keys"
                )
                continue
            key = str(key_node.value)
            self.lines[path + (key,)] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, path + (key,))
        return result


def _leading_tab_lines(text: str) -> list[int]:
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        if "\t" in indent:
            lines.append(number)
    return lines


# "key:" or "key: value" on one line; the key plain or quoted.
_KEY_LINE = re.compile(
    r"""^(?P<indent>[ \t]*)(?P<key>"(?:[^"\\]|\\.)*"|'[^']*'|(?!-\s)[^\s#'"{\[][^#]*?)"""
    r"""\s*:(?:[ \t]+(?P<rest>.*))?$"""
)


def _unquote(key: str) -> str:
    if key[:1] in "\"'":
        try:
            loaded = yaml.safe_load(key)
        except yaml.YAMLError:
            return key[1:-1]
        return str(loaded)
    return key


def _tab_key_paths(text: str) -> dict[int, _Path]:
    """The key path of each TAB-indented key line: what the author meant.

    A TAB has no YAML indentation width, so the previous key line decides:
    if it opens a block (``key:`` with nothing after it), the TAB line is
    its child, otherwise its sibling — what an editor showed the author.
    Space-indented lines are placed by their indentation as YAML does.
    """
    stack: list[tuple[int, _Path]] = []
    previous: tuple[int, _Path, bool] | None = None
    found: dict[int, _Path] = {}
    parent: _Path
    path: _Path
    for number, line in enumerate(text.splitlines(), start=1):
        m = _KEY_LINE.match(line)
        if m is None:
            continue
        key = _unquote(m["key"])
        rest = (m["rest"] or "").split(" #")[0].strip()
        opens = rest == "" or rest.startswith("#") or (rest.startswith("&") and " " not in rest)
        if "\t" in m["indent"]:
            if previous is None:
                indent, parent = 0, ()
            else:
                prev_indent, prev_path, prev_opens = previous
                indent = prev_indent + 1 if prev_opens else prev_indent
                parent = prev_path if prev_opens else prev_path[:-1]
            path = parent + (key,)
            found[number] = path
        else:
            indent = len(m["indent"])
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path = (stack[-1][1] if stack else ()) + (key,)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, path))
        previous = (indent, path, opens)
    return found


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[_Path, int]]:
    """Plain data and key lines. @raise ConfigError: not YAML."""
    problems: list[str] = []
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        builder = _Builder(loader, source, problems)
        data = builder.build(node, ())
    except _Abort:
        raise ConfigError(problems) from None
    except yaml.YAMLError as e:
        tab_lines = _leading_tab_lines(text)
        tab_paths = _tab_key_paths(text) if tab_lines else {}
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        for number in tab_lines[:20]:
            if number in tab_paths:
                problems.append(
                    f"{_dotted(tab_paths[number])}: got a TAB in the indentation ({source}, "
                    f"line {number}); expected spaces only (YAML does not allow tabs there)"
                )
            else:
                problems.append(
                    f"{source}, line {number}: tabs are not allowed for indentation; use spaces"
                )
        if mark is None or mark.line + 1 not in tab_lines:
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problems.append(f"{source}{where}: not valid YAML: {what}")
        raise ConfigError(problems) from None
    finally:
        loader.dispose()
    if problems:
        raise ConfigError(problems)
    return data, builder.lines
