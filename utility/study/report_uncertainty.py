"""The report's "uncertainty over seeds and subjects" section: per source the 95 % interval over repeats
(seeds/folds) beside the one over subjects (patients), and against the reference source the paired
subject-bootstrap difference and the seed-level test, each with its Holm and Benjamini-Hochberg
adjusted p-value over the whole study grid; a difference that survives Holm at 0.05 is marked."""
from __future__ import annotations

import html
import math
from typing import Any, Sequence

ALPHA = 0.05


def _num(v: Any, digits: int = 3) -> str:
    return "–" if not isinstance(v, (int, float)) or math.isnan(v) else f"{v:.{digits}f}"


def _p(v: Any) -> str:
    if not isinstance(v, float) or math.isnan(v):
        return "–"
    return "&lt;0.001" if v < 0.001 else f"{v:.3f}"


def survives(row: dict[str, Any], col: str) -> bool:
    """True when the Holm-adjusted p-value in ``col`` is below 0.05."""
    v = row.get(col, math.nan)
    return isinstance(v, float) and not math.isnan(v) and v < ALPHA


def _interval(low: Any, high: Any) -> str:
    return "–" if not isinstance(low, float) or math.isnan(low) else f"[{_num(low)}, {_num(high)}]"


def _versus(row: dict[str, Any], ref: str) -> str:
    diff = (f"{_num(row.get(f'diff_vs_{ref}', math.nan))} "
            f"{_interval(row.get(f'diff_ci95_low_vs_{ref}'), row.get(f'diff_ci95_high_vs_{ref}'))}")
    subj = (f"p {_p(row.get(f'p_subjects_vs_{ref}'))}, Holm {_p(row.get(f'p_subjects_holm_vs_{ref}'))}, "
            f"BH {_p(row.get(f'p_subjects_bh_vs_{ref}'))}")
    seed = (f"p {_p(row.get(f'p_vs_{ref}'))}, Holm {_p(row.get(f'p_holm_vs_{ref}'))}, "
            f"BH {_p(row.get(f'p_bh_vs_{ref}'))}, g {_num(row.get(f'hedges_g_vs_{ref}', math.nan), 2)}")
    mark_s = " class=surv" if survives(row, f"p_subjects_holm_vs_{ref}") else ""
    mark_r = " class=surv" if survives(row, f"p_holm_vs_{ref}") else ""
    return f"<td{mark_s}>{diff}<br>{subj}</td><td{mark_r}>{seed}</td>"


def section(summary: list[dict[str, Any]], sources: Sequence[str], ref: str, grid_keys: Sequence[str]) -> str:
    """HTML of the section ('' without completed runs)."""
    if not summary:
        return ""
    head = ["task", "mode", *grid_keys, "metric", "source", "mean", "95 % CI over repeats",
            "95 % CI over subjects (n)", f"vs {ref}: difference over subjects [95 % CI]",
            f"vs {ref}: t-test over repeats"]
    out = ["<h2>Uncertainty over repeats and over subjects</h2><table><tr>"
           + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in summary:   # already in the study's task order, sources in order
        cells = [r["task"], r["mode"], *(r.get(g) for g in grid_keys), r["metric"], r["source"]]
        tds = "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
        tds += f"<td>{_num(r['mean'])}</td><td>{_interval(r['ci95_low'], r['ci95_high'])} ({r['n']})</td>"
        n_sub = r.get("n_subjects", "")
        tds += f"<td>{_interval(r.get('subjects_ci95_low'), r.get('subjects_ci95_high'))}" \
               f"{f' ({n_sub})' if n_sub != '' else ''}</td>"
        tds += "<td colspan=2>·</td>" if r["source"] == ref else _versus(r, ref)
        out.append(f"<tr>{tds}</tr>")
    note = ("Over repeats: t interval of the mean over seeds/folds; over subjects: percentile bootstrap "
            "(1000 resamples of the test set's subjects, models fixed) of the mean over repeats. The "
            "difference is paired over subjects and taken on the repeats both sources have. Holm and "
            "Benjamini-Hochberg (BH) adjust over every comparison in the study; g is Hedges' g. Shaded "
            "bold: survives Holm at 0.05. See docs/uncertainty.md.")
    return "".join(out) + f"</table><p class=note>{note}</p>"
