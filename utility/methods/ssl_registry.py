"""Self-supervised methods by name (the config key ``method``) and the validation of their settings.

Adding a method: one module in utility/methods/ with a subclass of ``ssl_base.SSLMethod`` (see its
docstring), and its class in :data:`METHODS` below (docs/ARCHITECTURE.md, "Adding a method").
"""
from __future__ import annotations

import difflib
from typing import Any, Mapping

from pydantic import ValidationError

from utility.errors import UserError
from utility.methods.barlow_twins import BarlowTwinsMethod
from utility.methods.byol import BYOLMethod
from utility.methods.dino import DINOMethod
from utility.methods.mae import MAEMethod
from utility.methods.mocov2 import MoCoV2Method
from utility.methods.simclr import SimCLRMethod
from utility.methods.ssl_base import MethodSettings, SSLMethod
from utility.methods.vicreg import VICRegMethod
from utility.registry import Registry


def _unknown(name: str, known: list[str]) -> str:
    hint = difflib.get_close_matches(str(name).lower().replace("-", "_"), known, n=1, cutoff=0.4)
    return (f"unknown method '{name}'" + (f"; did you mean '{hint[0]}'?" if hint else "")
            + f" (methods: {', '.join(known)})")


METHODS: Registry[type[SSLMethod]] = Registry("method", _unknown)
for _cls in (SimCLRMethod, BarlowTwinsMethod, BYOLMethod, VICRegMethod, MoCoV2Method, DINOMethod,
             MAEMethod):
    METHODS.register(_cls.name, entry=_cls)


def method_class(name: str) -> type[SSLMethod]:
    return METHODS.find(name)


def _owners(key: str, but: str) -> list[str]:
    """Methods (other than ``but``) taking ``key`` in ``method_settings``."""
    return [n for n, m in METHODS.items() if n != but and not m.TOP_LEVEL_KEYS and key in m.Settings.model_fields]


def settings_given(cls: type[SSLMethod], method_settings: Mapping[str, Any], config: Any) -> dict[str, Any]:
    """The one compatibility shim for the predecessor's format: a method with ``TOP_LEVEL_KEYS`` (SimCLR)
    takes its settings from those top-level keys of ``config`` and refuses ``method_settings``; any
    other takes ``method_settings`` as given."""
    if not cls.TOP_LEVEL_KEYS:
        return dict(method_settings)
    for key in method_settings:
        owners = _owners(key, cls.name)
        raise UserError(f"method_settings.{key}: {cls.label} takes its settings as top-level keys "
                        f"({', '.join(cls.TOP_LEVEL_KEYS)})" + (f"; {key} is a setting of {', '.join(owners)}"
                                                               if owners else ""))
    return {k: getattr(config, k) for k in cls.TOP_LEVEL_KEYS}


def resolve_settings(name: str, given: dict[str, Any], top_level_set: set[str]) -> MethodSettings:
    """The method's settings from ``given`` (see :func:`settings_given`), defaults filled in. Refused: an
    unknown setting (the closest valid one named), another method's setting, another method's
    top-level keys among those set in the config (``top_level_set``)."""
    cls = method_class(name)
    fields = list(cls.Settings.model_fields)
    for other in METHODS.values():
        stray = sorted(set(other.TOP_LEVEL_KEYS) & top_level_set) if other is not cls else []
        if stray:
            own = [k for k in stray if k in fields]
            hint = f"; for {name} write method_settings: {{{own[0]}: ...}}" if own else ""
            raise UserError(f"{', '.join(stray)}: {other.label} setting(s), but method is {name}{hint}")
    for key in given:
        if key in fields:
            continue
        if cls.TOP_LEVEL_KEYS:
            settings_given(cls, {key: None}, None)  # raises, naming the top-level keys
        owners = _owners(key, name)
        if owners:
            raise UserError(f"method_settings.{key} is a setting of {', '.join(owners)}, not of {name} "
                            f"({name}'s settings: {', '.join(fields)})")
        hint = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.5)
        raise UserError(f"unknown setting method_settings.{key} of {name}"
                        + (f"; did you mean '{hint[0]}'?" if hint else f" ({name}'s settings: {', '.join(fields)})"))
    try:
        return cls.Settings.model_validate(given)
    except ValidationError as exc:
        lines = [f"method_settings.{'.'.join(map(str, e['loc']))} of {name}: value {e.get('input')!r} is invalid: "
                 f"{e['msg']}" for e in exc.errors()]
        raise UserError("\n".join(lines)) from None
