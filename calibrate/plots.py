"""The fit's two pictures: measured vs fitted latency, and relative residuals per form."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from simsched.calibration import GridFit
from simsched.step_fit import StepFit

MARKERS = ("o", "s", "^", "v", "D", "x")
GLYPHS = {"o": "●", "s": "■", "^": "▲", "v": "▼", "D": "◆", "x": "✕"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(sizes: np.ndarray) -> dict[int, Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    n = max(len(sizes) - 1, 1)
    return {int(s): cmap(i / n) for i, s in enumerate(sizes)}


def plot_fitted_vs_measured(path: Path, grid: Any, fit: GridFit, title: str = "") -> Path:
    """One panel per prompt length: measured mean ± std (points) and the best form (lines)
    against output length, one colour per batch size; a last panel compares every form."""
    plt = _pyplot()
    prompts = np.unique(grid["prompt_len"])
    sizes = np.unique(grid["batch_size"])
    colour = _colours(sizes)
    fig, axes = plt.subplots(1, len(prompts) + 1, figsize=(5 * (len(prompts) + 1), 4.2), squeeze=False)
    best = fit.best
    for ax, p in zip(axes[0], prompts):
        for b in sizes:
            rows = grid[(grid["prompt_len"] == p) & (grid["batch_size"] == b)].sort_values("output_len")
            if rows.empty:
                continue
            ax.errorbar(rows["output_len"], rows["mean_latency_s"], yerr=rows["std_latency_s"], fmt="o",
                        ms=3, color=colour[int(b)], label=f"b={int(b)}")
            L = np.linspace(1, rows["output_len"].max(), 200)
            ax.plot(L, best.predict(np.full_like(L, b), L, np.full_like(L, b * p)), color=colour[int(b)], lw=1)
        ax.set_title(f"prompt {int(p)} tokens: measured (points), {best.form} (lines)", fontsize=9)
        ax.set_xlabel("output length L (tokens)")
        ax.set_ylabel("batch latency T (s)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2)
    ax = axes[0][-1]
    y = grid["mean_latency_s"].to_numpy(float)
    b, L = grid["batch_size"].to_numpy(float), grid["output_len"].to_numpy(float)
    P = b * grid["prompt_len"].to_numpy(float)
    for f in fit.fits:
        ax.loglog(y, f.predict(b, L, P), ".", ms=4, label=f"{f.form} (held-out MAPE {f.heldout_mape:.1%})")
    lim = [y.min() * 0.8, y.max() * 1.25]
    ax.plot(lim, lim, "k--", lw=0.8)
    ax.set_xlabel("measured T (s)")
    ax.set_ylabel("fitted T (s)")
    ax.set_title("fitted vs measured, every form", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return _save(plt, fig, path, title)


def plot_residuals(path: Path, grid: Any, fit: GridFit, title: str = "") -> Path:
    """Per form: relative residual (fitted − measured)/measured against output length; colour
    is the batch size, marker the prompt length (in the order of the y-label)."""
    plt = _pyplot()
    sizes = np.unique(grid["batch_size"])
    colour = _colours(sizes)
    b, L = grid["batch_size"].to_numpy(float), grid["output_len"].to_numpy(float)
    P = b * grid["prompt_len"].to_numpy(float)
    y = grid["mean_latency_s"].to_numpy(float)
    prompt = grid["prompt_len"].to_numpy()
    prompts = np.unique(prompt)
    fig, axes = plt.subplots(1, len(fit.fits), figsize=(4.6 * len(fit.fits), 3.8), squeeze=False, sharey=True)
    for ax, f in zip(axes[0], fit.fits):
        rel = (f.predict(b, L, P) - y) / y * 100.0
        for j, p in enumerate(prompts):
            for s in sizes:
                m = (b == s) & (prompt == p)
                label = f"b={int(s)}" if j == 0 else None
                ax.plot(L[m], rel[m], MARKERS[j % len(MARKERS)], ms=3, color=colour[int(s)], label=label)
        ax.axhline(0.0, color="k", lw=0.8)
        best = " (best)" if f.form == fit.best.form else ""
        ax.set_title(f"{f.form}{best}: rmsre {f.rmsre:.1%}, MAPE {f.mape:.1%}, held-out {f.heldout_mape:.1%}", fontsize=8)
        ax.set_xlabel("output length L (tokens)")
        ax.grid(alpha=0.3)
    shapes = ", ".join(f"{GLYPHS[m]} {int(p)}" for m, p in zip(MARKERS, prompts))
    axes[0][0].set_ylabel(f"(fitted − measured) / measured, %\nprompt: {shapes}")
    axes[0][0].legend(fontsize=7, ncol=2)
    return _save(plt, fig, path, title)


def plot_step_fit(path: Path, shapes: Any, fit: StepFit, title: str = "") -> Path:
    """Decode steps against batch size (one colour per context length), prefill steps against
    tokens in the step (one colour per batch size): measured median with its interquartile
    range (points) and the chosen step form (lines); last panel: every form's in-sample
    relative residual per shape."""
    plt = _pyplot()
    from matplotlib.ticker import ScalarFormatter

    best = fit.best
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), squeeze=False)
    for ax, phase, along, by, xlabel in ((axes[0][0], "decode", "batch_size", "context_len", "decode batch size"),
                                         (axes[0][1], "prefill", "new_tokens", "batch_size", "prompt tokens per sequence")):
        part = shapes[shapes["phase"] == phase]
        if part.empty:
            ax.set_visible(False)
            continue
        keys = np.unique(part[by])
        colour = _colours(keys)
        for key in keys:
            rows = part[part[by] == key].sort_values(along)
            x = rows[along].to_numpy(float)
            med = rows["median_s"].to_numpy(float) * 1e3
            err = np.vstack([med - rows["q1_s"].to_numpy(float) * 1e3, rows["q3_s"].to_numpy(float) * 1e3 - med])
            ax.errorbar(x, med, yerr=err, fmt="o", ms=3, color=colour[int(key)], label=f"{by.split('_')[0]} {int(key)}")
            ax.plot(x, best.predict(rows) * 1e3, "-", lw=1, color=colour[int(key)])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("step time (ms)")
        ax.set_title(f"{phase}: median and IQR (points), {best.form} (lines)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    ax = axes[0][2]
    y = shapes["median_s"].to_numpy(float)
    for f in fit.fits:
        ax.plot(np.arange(len(y)), (f.predict(shapes) - y) / y * 100.0, "o", ms=3,
                label=f"{f.form}: rmsre {f.rmsre:.1%}, held-out MAPE {f.heldout_mape:.1%}")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xlabel("shape (decode, then prefill; by batch size, then length)")
    ax.set_ylabel("(fitted - measured) / measured, %")
    ax.set_title("relative residual per shape", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path, title)


def _save(plt: Any, fig: Any, path: Path, title: str) -> Path:
    """Title, lay out, write and close a figure (both plots end the same way)."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
