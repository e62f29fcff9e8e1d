"""The run-name rule: a run directory is ``<output root>/<kind>/<name>``, so a name must be one safe
relative path that stays inside the output root (an absolute path, ``.``, ``..``, ``~`` or a newline
would write somewhere else or make a folder no shell can name)."""
from __future__ import annotations

RULE = ("a run name is a relative path of folder names separated by '/' (e.g. study/cx8/seed0): no "
        "leading '/' or '~', no '.' or '..' parts, no empty parts, no backslash or control characters "
        "(newline, tab, NUL), each part at most 200 bytes")
MAX_PART_BYTES = 200  # file systems allow 255; the tool adds suffixes such as .tmp and -fold0


def check_run_name(value: object) -> str:
    """``value`` as a run name (a trailing '/' dropped), or ValueError stating the rule."""
    if not isinstance(value, str):
        raise ValueError(f"expected text; {RULE}")
    name = value[:-1] if value.endswith("/") and len(value) > 1 else value
    parts = name.split("/")
    bad = (not name or name.startswith(("/", "~")) or "\\" in name
           or any(ord(c) < 32 or ord(c) == 127 for c in name)
           or any(p in ("", ".", "..") or p != p.strip() for p in parts)
           or any(len(p.encode("utf-8", "surrogatepass")) > MAX_PART_BYTES for p in parts))
    if bad:
        raise ValueError(RULE)
    return name
