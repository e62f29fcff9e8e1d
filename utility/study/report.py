"""report.html: one self-contained page (figures embedded as PNG data URIs) answering the study's
question: results table, bar charts with confidence intervals, pairwise change/p-value matrices,
validation and training-loss curves, time to convergence, data-size curves, missing/failed runs."""
from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from utility.config.tasks import SIZE_VARIANTS, _VARIANT_RE
from utility.study import contamination
from utility.study.plan import Plan
from utility.study.report_uncertainty import section, survives
from utility.study.results import PretrainState, RunState, as_float, crash_message, read_rows


def _fig_uri(fig, save: Optional[Path] = None) -> str:
    """The figure as a PNG data URI (the page stays one file); ``save`` also writes the PNG there."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    if save is not None:
        save.write_bytes(buf.getvalue())
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.{digits}f}"
    return html.escape(str(v))


def _pct(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:+.1f} %"


def _p(p: Any) -> str:
    if not isinstance(p, float) or math.isnan(p):
        return "p –"
    return "p &lt; 0.001" if p < 0.001 else f"p = {p:.3f}"


def base_and_fraction(task: str) -> tuple[str, float]:
    m = _VARIANT_RE.match(task)
    if m and m["size"] in SIZE_VARIANTS:
        return m["base"], SIZE_VARIANTS[m["size"]]
    return task, 1.0


class Report:
    def __init__(self, plan: Plan, states: list[RunState], summary: list[dict[str, Any]],
                 metrics_of: dict[str, list[str]], pre: Optional[list[PretrainState]] = None) -> None:
        self.plan, self.states, self.summary, self.metrics_of = plan, states, summary, metrics_of
        self.pre = pre or []
        self.sources = list(plan.spec.pretrain)
        self.parts: list[str] = []

    def color(self, source: str) -> str:
        palette = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d"]
        return palette[self.sources.index(source) % len(palette)] if source in self.sources else "#888888"

    # ------------------------------------------------------------------ sections
    def header(self) -> None:
        s = self.plan.spec
        runs: list[Any] = self.pre + self.states
        counts: dict[str, int] = {}
        for st in runs:
            counts[st.status] = counts.get(st.status, 0) + 1
        done = counts.pop("completed", 0)
        state = f"{done} of {len(runs)} runs completed"
        if counts:
            state += " (" + ", ".join(f"<a href='#runs' class={k}>{n} {k}</a>" for k, n in sorted(counts.items())) + ")"
        self.parts.append(f"<h1>Study {html.escape(s.name)}</h1><p class=q>Does pretraining help, and which? "
                          f"Sources <b>{', '.join(map(html.escape, self.sources))}</b> on tasks "
                          f"<b>{', '.join(map(html.escape, s.tasks))}</b>; modes {', '.join(s.modes)}; "
                          f"{s.repeats.count} repeats ({'seeds' if s.repeats.seeds else 'folds'}). "
                          f"{state}.</p>")

    def overlap(self) -> None:
        self.parts.append(contamination.html_section(contamination.read(self.plan.study_dir / "contamination.csv")))

    def table(self) -> None:
        rows = self.summary
        if not rows:
            self.parts.append("<p>No completed runs yet.</p>")
            return
        grid_keys = list(self.plan.spec.grid)
        ref = self.plan.spec.reference
        others = [s for s in self.sources if s != ref]
        head = ["task", "mode", *grid_keys, "metric"] + self.sources + [f"{s} vs {ref}" for s in others]
        out = ["<h2>Results (test set, last model): mean ± 95 % CI (n)</h2><table><tr>"
               + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
        keys: list[tuple] = []
        for r in rows:  # summary rows come in the study's task order
            k = (r["task"], r["mode"], *(r.get(g) for g in grid_keys), r["metric"])
            if k not in keys:
                keys.append(k)
        tests = set()
        for key in keys:
            cells = {r["source"]: r for r in rows if (r["task"], r["mode"], *(r.get(g) for g in grid_keys),
                                                       r["metric"]) == key}
            means = {s: c["mean"] for s, c in cells.items() if not math.isnan(c["mean"])}
            best = None
            if means:
                lower = "loss" in key[-1]
                best = (min if lower else max)(means, key=means.get)
            tds = "".join(f"<td>{html.escape(str(k))}</td>" for k in key)
            for s in self.sources:
                c = cells.get(s)
                if c is None:
                    tds += "<td>–</td>"
                    continue
                half = (c["ci95_high"] - c["mean"]) if not math.isnan(c["ci95_high"]) else float("nan")
                txt = f"{_fmt(c['mean'])} ± {_fmt(half)} ({c['n']})"
                tds += f"<td class=best>{txt}</td>" if s == best else f"<td>{txt}</td>"
            for s in others:
                c = cells.get(s, {})
                pct, p = c.get(f"pct_change_vs_{ref}", float("nan")), c.get(f"p_vs_{ref}", float("nan"))
                if c.get(f"test_vs_{ref}"):
                    tests.add(c[f"test_vs_{ref}"])
                sig = " class=sig" if isinstance(p, float) and p < 0.05 else ""
                sig = " class=surv" if survives(c, f"p_holm_vs_{ref}") else sig
                tds += f"<td{sig}>{_pct(pct)} ({_p(p)})</td>"
            out.append(f"<tr>{tds}</tr>")
        note = (f"Best mean per row in bold. Change of the mean against {html.escape(ref)} with the two-sided "
                f"p-value ({html.escape(', '.join(sorted(tests)) or 'no test: too few repeats')}); p &lt; 0.05 shaded, "
                "bold when it survives Holm's correction over the whole study.")
        self.parts.append("".join(out) + f"</table><p class=note>{note}</p>")

    def uncertainty(self) -> None:
        self.parts.append(section(self.summary, self.sources, self.plan.spec.reference, list(self.plan.spec.grid)))

    def bars(self) -> None:
        """One grouped bar chart per mode and metric: tasks along x, one bar per source (and grid point)."""
        plt = _plt()
        groups: list[tuple[str, str]] = []
        for r in self.summary:
            if (r["mode"], r["metric"]) not in groups:
                groups.append((r["mode"], r["metric"]))
        if not groups:
            return
        self.parts.append("<h2>Per task</h2><div class=figs>")
        grid = list(self.plan.spec.grid)
        for mode, metric in groups:
            rows = [r for r in self.summary if (r["mode"], r["metric"]) == (mode, metric)]
            tasks = list(dict.fromkeys(r["task"] for r in rows))
            series = list(dict.fromkeys((r["source"], *(str(r.get(k)) for k in grid)) for r in rows))
            width = 0.8 / len(series)
            fig, ax = plt.subplots(figsize=(min(14.0, max(4.0, 0.55 * len(tasks) * len(series) + 2)), 3.2))
            for i, ser in enumerate(series):
                pts = {r["task"]: r for r in rows if (r["source"], *(str(r.get(k)) for k in grid)) == ser}
                xs = [t_i + (i - (len(series) - 1) / 2) * width for t_i, t in enumerate(tasks) if t in pts]
                means = [pts[t]["mean"] for t in tasks if t in pts]
                err = [0 if math.isnan(pts[t]["ci95_high"]) else pts[t]["ci95_high"] - pts[t]["mean"]
                       for t in tasks if t in pts]
                label = ser[0] + "".join(f" {k}={v}" for k, v in zip(grid, ser[1:]))
                ax.bar(xs, means, width * 0.95, yerr=err, capsize=3, color=self.color(ser[0]), label=label,
                       alpha=1.0 if i == 0 or ser[0] != series[i - 1][0] else 0.7)
            ax.set_xticks(range(len(tasks)), tasks, rotation=30 if len(tasks) > 6 else 0,
                          ha="right" if len(tasks) > 6 else "center")
            ax.set_ylabel(metric)
            ax.set_title(f"{mode}: test {metric}, mean and 95 % CI")
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
            self.parts.append(f"<img src='{_fig_uri(fig)}'>")
        self.parts.append("</div>")
        if not grid and len(self.sources) > 2:
            self.parts.append("<h3>Every pair of sources</h3><div class=figs>")
            for mode, metric in groups:
                for task in dict.fromkeys(r["task"] for r in self.summary if (r["mode"], r["metric"]) == (mode, metric)):
                    self.pairwise(task, mode, metric, [r for r in self.summary
                                                       if (r["task"], r["mode"], r["metric"]) == (task, mode, metric)])
            self.parts.append("</div>")

    def pairwise(self, task: str, mode: str, metric: str, rows: list[dict[str, Any]]) -> None:
        srcs = [r["source"] for r in rows]
        out = [f"<table class=pair><tr><th>{html.escape(task)} ({html.escape(mode)}) {html.escape(metric)}: "
               "row vs column</th>" + "".join(f"<th>{html.escape(s)}</th>" for s in srcs) + "</tr>"]
        for r in rows:
            tds = ""
            for s in srcs:
                if s == r["source"]:
                    tds += "<td>·</td>"
                    continue
                pct, p = r.get(f"pct_change_vs_{s}", float("nan")), r.get(f"p_vs_{s}", float("nan"))
                sig = " class=sig" if isinstance(p, float) and p < 0.05 else ""
                tds += f"<td{sig}>{_pct(pct)} ({_p(p)})</td>"
            out.append(f"<tr><th>{html.escape(r['source'])}</th>{tds}</tr>")
        self.parts.append("<div>" + "".join(out) + "</table></div>")

    def curves(self) -> None:
        plt = _plt()
        done = [st for st in self.states if st.status == "completed"]
        keys = list(dict.fromkeys((st.run.task, st.run.mode) for st in done))  # study order
        if not keys:
            return
        self.parts.append("<h2>Training curves (mean and range over repeats)</h2><div class=figs>")
        for task, mode in keys:
            fig, axes = plt.subplots(1, 2, figsize=(9, 3))
            metric = self.metrics_of.get(task, ["accuracy"])[0]
            for src in self.sources:
                runs = [st for st in done if (st.run.task, st.run.mode, st.run.source) == (task, mode, src)]
                if not runs:
                    continue
                for ax, series in ((axes[0], [_series(st.run_dir / "val.log", metric) for st in runs]),
                                   (axes[1], [_train_loss(st.run_dir / "train.log") for st in runs])):
                    n = min(len(s) for s in series) if series else 0
                    if n == 0:
                        continue
                    arr = np.array([s[:n] for s in series])
                    x = np.arange(1, n + 1)
                    ax.plot(x, np.nanmean(arr, 0), label=src, color=self.color(src))
                    ax.fill_between(x, np.nanmin(arr, 0), np.nanmax(arr, 0), alpha=0.2, color=self.color(src))
            axes[0].set(title=f"{task} ({mode}): validation {metric}", xlabel="epoch", ylabel=f"validation {metric}")
            axes[1].set(title="training loss (epoch mean)", xlabel="epoch", ylabel="training loss")
            for ax in axes:
                if ax.get_legend_handles_labels()[0]:  # a task whose runs have no logs yet: no empty legend
                    ax.legend(fontsize=8)
            self.parts.append(f"<img src='{_fig_uri(fig)}'>")
        self.parts.append("</div>")

    def convergence(self) -> None:
        from utility.study.results import convergence_epoch, has_converged

        plt = _plt()
        vals: dict[tuple[str, str], list[float]] = {}
        still_changing = []
        for st in self.states:
            if st.status != "completed":
                continue
            metric = st.run.config.get("best_metric") or self.metrics_of.get(st.run.task, ["accuracy"])[0]
            series = _series(st.run_dir / "val.log", metric)
            c = convergence_epoch(series)
            if c is not None and not has_converged(series, c):
                still_changing.append(st.run.name)
            elif c is not None:
                vals.setdefault((st.run.task, st.run.source), []).append(c)
        note = (f"<p class=note>Not converged (the metric still changing at the last epoch; left out of the bars): "
                f"{len(still_changing)} run(s): {html.escape(', '.join(still_changing[:8]))}{' ...' if len(still_changing) > 8 else ''}"
                "</p>") if still_changing else ""
        if not vals:
            if note:
                self.parts.append("<h2>Time to convergence</h2>" + note)
            return
        tasks = [t for t in self.plan.spec.tasks if any(k[0] == t for k in vals)]
        srcs = [s for s in self.sources if any(k[1] == s for k in vals)]
        width = 0.8 / len(srcs)
        fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(tasks) + 2), 3))
        for i, src in enumerate(srcs):
            ts = [t for t in tasks if (t, src) in vals]
            ax.bar([tasks.index(t) + (i - (len(srcs) - 1) / 2) * width for t in ts],
                   [np.mean(vals[(t, src)]) for t in ts], width * 0.95,
                   yerr=[np.std(vals[(t, src)]) for t in ts], capsize=3, color=self.color(src), label=src)
        ax.set_xticks(range(len(tasks)), tasks)
        ax.set(ylabel="epochs", title="time to convergence: mean and std over repeats")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        self.parts.append("<h2>Time to convergence</h2><p class=note>Epoch from which the 3-epoch trailing mean of "
                          "the validation metric stays within 0.5 % of its final value.</p>"
                          f"<img src='{_fig_uri(fig)}'>" + note)

    def data_size(self) -> None:
        fractions: dict[str, set[float]] = {}
        for t in self.plan.spec.tasks:
            b, f = base_and_fraction(t)
            fractions.setdefault(b, set()).add(f)
        bases = [b for b, fs in fractions.items() if len(fs) > 1]
        if not bases or not self.summary:
            return
        plt = _plt()
        self.parts.append("<h2>Data size</h2>")
        for base in bases:
            for mode in self.plan.spec.modes:
                metric = self.metrics_of.get(base, self.metrics_of.get(next(iter(self.metrics_of)), ["accuracy"]))[0]
                fig, ax = plt.subplots(figsize=(4.5, 3))
                for src in self.sources:
                    pts = sorted((base_and_fraction(r["task"])[1], r["mean"], r["ci95_high"] - r["mean"])
                                 for r in self.summary if r["source"] == src and r["mode"] == mode
                                 and r["metric"] == metric and base_and_fraction(r["task"])[0] == base)
                    if pts:
                        ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                                    yerr=[0 if math.isnan(p[2]) else p[2] for p in pts], marker="o", capsize=3,
                                    label=src, color=self.color(src))
                ax.set_xscale("log")
                ticks = sorted(fractions[base])
                ax.set_xticks(ticks, [f"{t * 100:g} %" for t in ticks])
                ax.minorticks_off()
                ax.set(xlabel="fraction of training labels", ylabel=metric, title=f"{base} ({mode})")
                ax.legend(fontsize=8)
                png = self.plan.study_dir / f"data_size_{base}_{mode}.png"   # also a file, for slides/README
                self.parts.append(f"<img src='{_fig_uri(fig, png)}'>")

    def missing(self) -> None:
        bad: list[Any] = [st for st in self.pre if st.status != "completed"]
        bad += [st for st in self.states if st.status != "completed"]
        if not bad:
            self.parts.append("<h2 id=runs>Runs</h2><p>All runs completed.</p>")
            return
        items = []
        for st in bad:
            name = st.run.name if isinstance(st, RunState) else f"pretraining {st.name}"
            why = ""
            if st.crash_log:
                said = crash_message(st.crash_log)  # a stop with a reason (collapse guard, user error)
                why = (f"{html.escape(said)}; " if said else "") + f"crash log: <code>{html.escape(str(st.crash_log))}</code>"
            elif st.reason:
                why = html.escape(st.reason)
            if st.status == "failed" and not st.crash_log and st.queue_log:
                why += ("; " if why else "") + f"queue log: <code>{html.escape(str(st.queue_log))}</code>"
            cls = " class=failed" if st.status == "failed" else ""
            items.append(f"<li{cls}>{html.escape(name)}: <b>{st.status}</b>" + (f" ({why})" if why else "") + "</li>")
        self.parts.append(f"<h2 id=runs>Runs not completed ({len(bad)})</h2><ul>{''.join(items)}</ul>")

    def render(self) -> str:
        for section in (self.header, self.overlap, self.table, self.uncertainty, self.bars, self.curves,
                        self.convergence, self.data_size, self.missing):
            section()
        style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
                 "font-size:14px}td.best{font-weight:bold}td.sig{background:#dcefdc}td.surv{background:#b9e3b9;font-weight:bold}.note{color:#666;"
                 "font-size:13px}.q{font-size:16px}img{margin:6px 0;display:block}"
                 ".figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}"
                 "a.failed,li.failed b{color:#b00020}a.missing,a.interrupted,a.running{color:#555}"
                 "code{font-size:12px;background:#f4f4f4;padding:1px 3px}")
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Study {html.escape(self.plan.spec.name)}"
                f"</title><style>{style}</style></head><body>{''.join(self.parts)}</body></html>")


def _series(path: Path, metric: str) -> list[float]:
    return [as_float(r.get(metric)) for r in read_rows(path)]


def _train_loss(path: Path) -> list[float]:
    per: dict[int, list[float]] = {}
    for r in read_rows(path):
        per.setdefault(int(r["epoch"]), []).append(as_float(r["loss"]))
    return [float(np.mean(per[e])) for e in sorted(per)]


def write_report(path: Path, plan: Plan, states: list[RunState], summary: list[dict[str, Any]],
                 metrics_of: dict[str, list[str]], pre: Optional[list[PretrainState]] = None) -> None:
    page = Report(plan, states, summary, metrics_of, pre).render()
    path.write_text(page)
