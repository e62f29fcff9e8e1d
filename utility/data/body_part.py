"""The ``body_part`` target reader: a CT slice's body region from its DICOM header, as the predecessor's
radiology task (CTBR) labelled its slices, or from a labels CSV.

The predecessor read ``BodyPartExamined`` (0018,0015) of each slice's source DICOM and matched it
case-insensitively against keyword lists (:data:`KEYWORDS`): a class matches when one of its keywords
occurs in the value (so ``HWS``/``BWS``/``LWS`` are spine via ``WS``). A value matching no class or
more than one is refused with the file and the value named (the predecessor's unknown class 6 was left
out of its ``*_wo6`` folders; a labels CSV settles such slices). With ``layout.body_part_rule: lowest``
(set by ``recipe: predecessor``) the predecessor's rule applies instead: its own keyword lists
(:data:`PREDECESSOR_KEYWORDS`: no Foot/Ankle), and a value naming several regions gets the lowest class
index (``THORAX ABDOMEN`` -> thorax); a value naming none is its class 6, still refused.

Routes, first that exists wins (``layout`` keys of the task):
- ``labels_file`` (under the task folder): CSV of slice file -> label; the label is a class name, a
  class index 0-5, or a BodyPartExamined text matched by keyword;
- ``dicom_root`` (absolute, ``~``/``$VAR`` expanded, or under the task folder): the DICOMs; a slice's
  DICOM is its path below its split folder with ``dicom_path`` = [regex, replacement] applied
  (default ``.npy`` -> ``.dcm``). A symlink ``datasets/medical_2D/dicom -> /site/path`` also works.
"""
from __future__ import annotations

import os
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

from utility.data.targets import ReaderContext, csv_row, register_target_reader
from utility.errors import UserError

# class index -> keywords (../shared/UPSTREAM.md; extremity completed with a few common ones marked +)
KEYWORDS: dict[int, tuple[str, ...]] = {
    0: ("Head", "Skull", "Kopf", "Neck", "Hals", "Schädel", "Schaedel", "Hirn", "Gehirn", "CCT", "Cranial",
        "Cranium"),
    1: ("Thorax", "Tho", "Thx", "Chest", "Torso"),
    2: ("Abdomen", "Abd", "Oberbauch", "Bauch", "Unterbauch"),
    3: ("Arm", "Ellenbogen", "Elbow", "Hand", "Wrist", "Handgelenk", "Shoulder", "Schulter", "Leg", "Bein",
        "Knie", "Knee", "Oberschenkel", "Schenkel", "Unterschenkel", "Calf", "Calves", "Extremity",
        "Extremities", "Extremität", "Extremitaet", "Foot", "Fuß", "Fuss", "Ankle", "Sprunggelenk"),
    4: ("Hip", "Huefte", "Hüfte", "Pelvis", "Becken"),
    5: ("Spine", "Spinal", "WS", "Wirbelsäule", "Wirbelsaeule"),
}


# keywords this tool added to the predecessor's lists (the predecessor put such slices in its class 6)
ADDED_KEYWORDS = ("Extremitaet", "Foot", "Fuß", "Fuss", "Ankle", "Sprunggelenk")
PREDECESSOR_KEYWORDS: dict[int, tuple[str, ...]] = {
    c: tuple(k for k in kws if k not in ADDED_KEYWORDS) + (("Upper Calf", "Lower Calf", "Extremitäten") if c == 3 else ())
    for c, kws in KEYWORDS.items()}


def _fold(text: str) -> str:
    return unicodedata.normalize("NFC", text).casefold()


_FOLDED = {rule: {c: tuple(_fold(k) for k in kws) for c, kws in table.items()}
           for rule, table in (("single", KEYWORDS), ("lowest", PREDECESSOR_KEYWORDS))}


def classes_of(body_part: str, rule: str = "single") -> list[int]:
    """Every class one of whose keywords occurs in ``body_part`` (case-insensitive), lowest first."""
    text = _fold(body_part)
    return [c for c, kws in _FOLDED[rule].items() if any(k in text for k in kws)]


def class_of(body_part: str, where: str, rule: str = "single") -> int:
    """``single``: exactly one region must match; ``lowest``: the predecessor's lowest matching class."""
    found = classes_of(body_part, rule)
    if rule == "lowest" and found:
        return found[0]
    if len(found) != 1:
        what = "matches no body region" if not found else f"matches several body regions {found}"
        raise UserError(f"{where}: BodyPartExamined {body_part!r} {what}; label such slices in a labels CSV "
                        "(layout.labels_file) or leave them out")
    return found[0]


@lru_cache(maxsize=None)
def _dicom_body_part(path: Path) -> str:
    import warnings

    import pydicom

    try:
        with warnings.catch_warnings():  # site values such as 'Schädel' break the CS rules; read them anyway
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["BodyPartExamined"])
            value = getattr(ds, "BodyPartExamined", None)
    except Exception as exc:  # missing, truncated or not DICOM
        raise UserError(f"cannot read the DICOM header of {path}: {type(exc).__name__}: {exc}") from None
    if not value:
        raise UserError(f"{path} has no BodyPartExamined (0018,0015); label it in a labels CSV (layout.labels_file)")
    return str(value)


def dicom_root(ctx: ReaderContext) -> Path | None:
    given = ctx.task.layout.dicom_root
    if given is None:
        return None
    p = Path(os.path.expandvars(given)).expanduser()
    return p if p.is_absolute() else ctx.data_dir / p


@register_target_reader("body_part")
def body_part_target(path: Path, ctx: ReaderContext) -> int | str:
    layout = ctx.task.layout
    if layout.labels_file is not None and (ctx.data_dir / layout.labels_file).is_file():
        raw = csv_row(path, ctx)
        names = ctx.task.classes or []
        if raw in names or (raw.isdigit() and int(raw) < len(KEYWORDS)):
            return raw
        return class_of(raw, f"{path.name} in {layout.labels_file}", layout.body_part_rule)
    root = dicom_root(ctx)
    if root is None or not root.is_dir():
        csv_hint = f"{ctx.data_dir / layout.labels_file}" if layout.labels_file else "a labels CSV (layout.labels_file)"
        raise UserError(f"task {ctx.task.name}: no labels for the slices: neither {csv_hint} nor the DICOM folder "
                        f"{root if root is not None else '(layout.dicom_root)'} exists")
    pattern, repl = layout.dicom_path or (r"\.npy$", ".dcm")
    rel = path.relative_to(ctx.split_dir).as_posix()
    dcm = root / re.sub(pattern, repl, rel)
    if not dcm.is_file():
        raise UserError(f"{path}: its DICOM {dcm} does not exist (layout.dicom_root / dicom_path)")
    return class_of(_dicom_body_part(dcm), str(dcm), layout.body_part_rule)
