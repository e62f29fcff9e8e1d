"""Small, uniform figures (matplotlib, Agg backend): lines, heatmaps, bars, image grids."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 90
MAX_LEGEND = 12


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def lines(path: Path, series: Sequence[tuple[np.ndarray, np.ndarray, str]], xlabel: str, ylabel: str, title: str,
          logx: bool = False, diagonal: bool = False, marker: Optional[tuple[float, float, str]] = None,
          xticks: Optional[Sequence[str]] = None, ylim: Optional[tuple[float, float]] = None) -> Path:
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    if xticks is not None:
        ax.set_xticks(range(len(xticks)), xticks, rotation=45, ha="right", fontsize=7)
    for x, y, label in series:
        ax.plot(x, y, label=label, lw=1.3)
    if diagonal:
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    if marker is not None:
        ax.axvline(marker[0], c="red", ls=":", lw=1)
        ax.plot([marker[0]], [marker[1]], "o", c="red", label=marker[2])
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if series and (len(series) <= MAX_LEGEND or marker is not None):
        ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def heatmap(path: Path, m: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str, xlabel: str = "",
            ylabel: str = "", vmin: Optional[float] = None, vmax: Optional[float] = None, fmt: str = "{:.2f}",
            cmap: str = "viridis") -> Path:
    n = max(len(rows), len(cols))
    size = min(9.0, 2.5 + 0.35 * n)
    fig, ax = plt.subplots(figsize=(size + 0.8, size))
    im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if n <= 30:
        ax.set_xticks(range(len(cols)), [str(c) for c in cols], rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=7)
    if n <= 15:
        hi = np.nanmax(m) if np.isfinite(m).any() else 0
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if m[i, j] < 0.6 * hi else "black")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _save(fig, path)


def bars(path: Path, names: Sequence[str], values: Sequence[float], ylabel: str, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(names) + 1.5), 3.4))
    ax.bar(range(len(names)), values, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.axhline(0, c="black", lw=0.6)
    ax.set(ylabel=ylabel, title=title)
    return _save(fig, path)


def reliability(path: Path, conf: np.ndarray, acc: np.ndarray, edges: np.ndarray, ece: float) -> Path:
    fig, ax = plt.subplots(figsize=(3.8, 3.6))
    width = np.diff(edges)
    ok = np.isfinite(acc)
    ax.bar(edges[:-1][ok], acc[ok], width=width[ok], align="edge", edgecolor="black", lw=0.5, label="accuracy")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="perfect calibration")
    ax.plot(conf[ok], acc[ok], "o", ms=3, c="red", label="bin mean confidence")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=f"reliability (ECE {ece:.3f})")
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def image_grid(path: Path, images: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str], title: str) -> Path:
    """Rows of RGB images in [0, 1] (one row per class), labelled on the left."""
    nr, nc = len(images), max(len(r) for r in images)
    fig, axes = plt.subplots(nr, nc, figsize=(1.5 * nc + 0.6, 1.5 * nr + 0.4), squeeze=False)
    for i, row in enumerate(images):
        for j in range(nc):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(row):
                ax.imshow(row[j])
            else:
                ax.axis("off")
        axes[i][0].set_ylabel(row_labels[i], fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)
