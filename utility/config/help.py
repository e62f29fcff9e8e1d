"""``--help`` of the config-driven entry points: every key of the config schema with its type, default and
description, grouped by the part of the schema that declares it.

Needs only pydantic and the schemas, so entry points answer ``--help`` before torch is imported
(``exit_on_help`` runs first in pkgs/FTE/finetune.py, pkgs/SimCLR/main.py, pkgs/SSL/pretrain.py).
"""
from __future__ import annotations

import sys
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

HELP_FLAGS = ("-h", "--help")
USAGE = "usage: {prog} -c CONFIG.yaml [--key value ...] [--print-config]"
PRINT_CONFIG = "--print-config"  # print the resolved config (YAML + overrides + defaults) and exit


BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def bounds_text(metadata: list[Any]) -> str:
    """Numeric bounds of pydantic/annotated-types constraints (Ge(ge=1) -> '>= 1')."""
    out = []
    for m in metadata:
        for name, sign in BOUNDS.items():
            value = getattr(m, name, None)
            if value is not None and not callable(value):
                out.append(f"{sign} {value}")
        out += [bounds_text(getattr(m, "metadata", []))] if getattr(m, "metadata", None) else []
    return " ".join(o for o in out if o)


def type_text(annotation: Any, metadata: tuple[Any, ...] = ()) -> str:
    """A short readable type: ``Optional[PositiveInt]`` -> ``int > 0 or null``, ``Literal['a','b']`` -> ``a|b``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return type_text(args[0], (*args[1:], *metadata))
    bounds = bounds_text(list(metadata))
    if origin is Literal:
        text = "|".join(str(a) for a in args)
    elif origin in (Union, UnionType):
        parts = [type_text(a, metadata) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    elif origin in (list, tuple, dict, set):
        text = f"{origin.__name__}[{', '.join(type_text(a) for a in args if a is not Ellipsis)}]"
    else:
        text = getattr(annotation, "__name__", str(annotation))
    return f"{text} {bounds}" if bounds else text


def default_text(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    return "null" if value is None else str(value)


def key_groups(schema: type[BaseModel]) -> list[tuple[str, list[str]]]:
    """(group title, key names) in schema order: the base classes' keys first, each base a group."""
    groups: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for cls in reversed(schema.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        own = [k for k in getattr(cls, "__annotations__", {}) if k in schema.model_fields and k not in seen]
        if own:
            title = (cls.__doc__ or cls.__name__).strip().splitlines()[0].rstrip(".")
            groups.append((f"{title} ({cls.__name__})", own))
            seen.update(own)
    return groups


def key_lines(schema: type[BaseModel], flag: str = "--") -> list[str]:
    """The keys of ``schema`` grouped, one line each: ``<flag>key type (default d): description``."""
    lines: list[str] = []
    for title, keys in key_groups(schema):
        lines.append(f"{title}:")
        for key in keys:
            field = schema.model_fields[key]
            head = f"  {flag}{key} {type_text(field.annotation, tuple(field.metadata))} (default {default_text(field)})"
            lines.append(head + (f": {field.description}" if field.description else ""))
        lines.append("")
    return lines


def config_help(schema: type[BaseModel], prog: str) -> str:
    lines = [USAGE.format(prog=prog),
             "Any key below can be set in the YAML file or overridden as --key value (values are YAML: true, "
             "null, [1,2]). --print-config prints the resolved config and exits; `python -m utility.config "
             "schema DIR` writes JSON Schemas for editors. A config file may start with `base: other.yaml` (that "
             "file's keys first, this file's override them).", "", *key_lines(schema)]
    return "\n".join(lines).rstrip() + "\n"


def exit_on_help(argv: list[str], schema: type[BaseModel], prog: str) -> None:
    """Print the keys and exit 0 when ``argv`` asks for help (before any heavy import)."""
    if any(a in HELP_FLAGS for a in argv):
        sys.stdout.write(config_help(schema, prog))
        raise SystemExit(0)
