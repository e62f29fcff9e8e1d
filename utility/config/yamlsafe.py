"""Reading YAML the user (or a colleague) wrote: a "billion laughs" alias bomb is refused before it is
expanded, and a binary, unreadable or non-UTF-8 file is one line naming it, never a traceback.

PyYAML shares aliased nodes, so a 300-byte bomb loads fast; it explodes later, when the value is
validated or printed. The expanded size is counted on the node graph (memoised, so the count itself
costs one pass over the distinct nodes) and a document past ``MAX_NODES`` is refused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from utility.errors import UserError

MAX_NODES = 200_000  # expanded scalars + collections; the largest shipped config has a few hundred


def expanded_size(node: yaml.Node, memo: dict[int, int] | None = None) -> int:
    """Nodes the document would have with every alias written out (a shared node counts each time)."""
    memo = {} if memo is None else memo
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = MAX_NODES + 1  # a recursive alias (a node inside itself) is infinite
    if isinstance(node, yaml.MappingNode):
        n = 1 + sum(expanded_size(k, memo) + expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        n = 1 + sum(expanded_size(v, memo) for v in node.value)
    else:
        n = 1
    memo[key] = min(n, MAX_NODES + 1)
    return memo[key]


def load_text(text: str, what: str, loader: type = yaml.SafeLoader) -> Any:
    """One YAML document; ``what`` names its source in messages (e.g. 'config file x.yaml')."""
    try:
        ld = loader(text)  # the reader already refuses unprintable characters (NUL, ...)
    except yaml.YAMLError as exc:
        raise UserError(f"{what} is not valid YAML: {exc}") from None
    try:
        node = ld.get_single_node()
        if node is None:
            return None
        if expanded_size(node) > MAX_NODES:
            raise UserError(f"{what} expands its YAML aliases (&/*) to more than {MAX_NODES} values; "
                            "refused (an alias bomb?): write the values out")
        return ld.construct_document(node)
    except yaml.YAMLError as exc:
        raise UserError(f"{what} is not valid YAML: {exc}") from None
    except RecursionError:
        raise UserError(f"{what} nests its YAML too deeply") from None
    finally:
        ld.dispose()


def read_text(path: Path, what: str) -> str:
    """A text file's content, or one line saying why it cannot be read (binary, permissions, folder)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} is not a text file (not UTF-8; binary?)") from None
    except IsADirectoryError:
        raise UserError(f"{what} is a folder; expected a YAML file") from None
    except PermissionError:
        raise UserError(f"{what} cannot be read (permission denied)") from None
    except OSError as exc:
        raise UserError(f"{what} cannot be read: {exc.strerror or exc}") from None


def load_file(path: Path, what: str, loader: type = yaml.SafeLoader) -> Any:
    """Read and load ``path`` (see :func:`load_text`); NUL bytes mean a binary file."""
    text = read_text(path, what)
    if "\x00" in text:
        raise UserError(f"{what} is not a text file (it holds NUL bytes; binary?)")
    return load_text(text, what, loader)
