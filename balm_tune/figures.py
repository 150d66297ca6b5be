"""The report's pictures, drawn headless (matplotlib's Agg canvas through `Figure`, no pyplot state).

Each function takes plain data and writes one PNG; every title says which windows its numbers cover.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from PIL import Image

from balm_tune.forecasts import WINNER, WindowForecast
from core.baselines import BASELINES

DPI = 80
WINNER_COLOR = "tab:blue"  # the winner in every picture: thick and saturated; the other trials muted grey
OTHER_COLOR = "0.6"
METHOD_STYLE = {WINNER: {"color": WINNER_COLOR, "lw": 1.6}}  # baselines: grey/orange dashed, in order
BASELINE_COLORS = ("tab:gray", "tab:orange", "tab:green")
PANEL_FONT = 10  # points, at the saved size (DPI 80: 11 px on a page that shows the PNG at its own size)


@dataclass
class TrialCurve:
    """One trial's validation MSE by epoch (from Ray's result.json) and how it ended."""

    trial_id: str
    order: int  # 0-based start order of the trial in the search
    status: str  # the leaderboard's: finished | stopped by ASHA | failed (or the optuna outcome names)
    epochs: list[int]
    val_mse: list[float]
    best_val_mse: float

    @property
    def ended(self) -> str:
        """finished | stopped | failed: how the figures draw the trial (stopped: any scheduler's early stop)."""
        if self.status == "failed" or not math.isfinite(self.best_val_mse):
            return "failed"
        return "finished" if self.status == "finished" else "stopped"


ENDED_STYLE = {
    "finished": {"ls": "-", "marker": "o"},
    "stopped": {"ls": "--", "marker": "x"},
    "failed": {"ls": ":", "marker": "s"},
}


def _labels(curves: list[TrialCurve]) -> dict[str, str]:
    """Legend text of each drawing style that `curves` use: the leaderboard statuses it stands for
    ('pruned by asha', ...); a style no curve uses has no entry (the legends list only what is drawn)."""
    labels = {ended: ", ".join(sorted({c.status for c in curves if c.ended == ended})) for ended in ENDED_STYLE}
    return {ended: label for ended, label in labels.items() if label}


def history(curves: list[TrialCurve], winner: str | None, windows: str, path: Path) -> None:
    """Every trial's best validation MSE in start order, and the best so far (what the search selects from);
    the winner a large blue star, the other trials grey (their marker: how they ended)."""
    fig = Figure(figsize=(8, 4.5), dpi=DPI)
    ax = fig.add_subplot()
    ordered = sorted(curves, key=lambda c: c.order)
    drawn = [c for c in ordered if math.isfinite(c.best_val_mse)]
    others = [c for c in drawn if c.trial_id != winner]
    labels = _labels(others)
    for ended, style in ENDED_STYLE.items():
        shown = [c for c in others if c.ended == ended]
        if shown:
            ax.scatter(
                [c.order for c in shown],
                [c.best_val_mse for c in shown],
                marker=style["marker"],
                color=OTHER_COLOR,
                s=30,
                label=labels[ended],
            )
    best, so_far = math.inf, []
    for c in ordered:
        best = min(best, c.best_val_mse) if c.ended != "failed" else best
        so_far.append(best)
    if any(math.isfinite(v) for v in so_far):
        ax.step([c.order for c in ordered], so_far, where="post", color="black", lw=1.2, label="best so far")
    for c in drawn:
        if c.trial_id == winner:
            ax.scatter(
                [c.order], [c.best_val_mse], marker="*", s=260, color=WINNER_COLOR, zorder=3, label=f"winner {winner}"
            )
            ax.annotate(f"winner {winner}", (c.order, c.best_val_mse), textcoords="offset points", xytext=(7, 8))
    failed = sum(c.ended == "failed" for c in ordered)
    cut = _focus(ax, [c.best_val_mse for c in ordered])
    ax.set_xlabel("trial (start order)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("best validation MSE (standardised)")
    ax.set_title(
        f"Optimisation history: {len(ordered)} trials"
        + (f" ({failed} failed, not drawn)" if failed else "")
        + cut
        + f"\nvalidation over {windows}",
        fontsize=10,
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def curves(curves: list[TrialCurve], winner: str | None, windows: str, path: Path) -> None:
    """Validation MSE by epoch of every trial: the winner thick and blue on top, the others thin and grey
    (16 curves need no 16 colours); line style and end marker say how a trial ended (stopped early, failed)."""
    fig = Figure(figsize=(8, 4.5), dpi=DPI)
    ax = fig.add_subplot()
    drawn = []
    for c in curves:
        points = [(e, v) for e, v in zip(c.epochs, c.val_mse) if math.isfinite(v)]
        if not points:
            continue
        drawn.append(c)
        style = ENDED_STYLE[c.ended]
        epochs, values = zip(*points)
        color, width, size, order = (WINNER_COLOR, 3.0, 9, 3) if c.trial_id == winner else (OTHER_COLOR, 1.0, 6, 2)
        ax.plot(epochs, values, ls=style["ls"], color=color, lw=width, zorder=order)
        ax.plot(epochs[-1], values[-1], marker=style["marker"], color=color, ms=size, zorder=order)
    labels = _labels([c for c in drawn if c.trial_id != winner])
    handles = [
        Line2D([], [], color=OTHER_COLOR, ls=s["ls"], marker=s["marker"], label=labels[ended])
        for ended, s in ENDED_STYLE.items()
        if ended in labels
    ]
    for c in drawn:
        if c.trial_id == winner:
            s = ENDED_STYLE[c.ended]
            handles.append(
                Line2D([], [], color=WINNER_COLOR, lw=3.0, ls=s["ls"], marker=s["marker"], label=f"winner {winner}")
            )
    if handles:
        ax.legend(handles=handles, fontsize=9)
    cut = _focus(ax, [v for c in curves for v in c.val_mse])
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation MSE (standardised)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    missing = len(curves) - len(drawn)
    ax.set_title(
        f"Validation MSE by epoch, every trial ({len(curves)})"
        + (f" ({missing} without a finite value, not drawn)" if missing else "")
        + f"{cut}\nvalidation over {windows}",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, path)


def importances(values: dict[str, float], evaluator: str, trials: int, epoch: int, path: Path) -> None:
    """Horizontal bars, most important key on top."""
    fig = Figure(figsize=(7, 0.5 * len(values) + 1.6), dpi=DPI)
    ax = fig.add_subplot()
    keys = list(values)[::-1]
    ax.barh(keys, [values[k] for k in keys], color="tab:blue")
    for y, key in enumerate(keys):
        ax.text(values[key], y, f" {values[key]:.2f}", va="center", fontsize=9)
    ax.set_xlim(0, 1.1 * max(max(values.values()), 1e-9))
    ax.set_xlabel("importance (normalised to sum 1)")
    ax.set_title(
        f"Importance of the searched keys: {evaluator} over {trials} trials\n"
        f"(each trial's best validation MSE up to epoch {epoch}, the last every trial reached)",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, path)


def forecasts(windows: list[WindowForecast], caption: str, path: Path) -> None:
    """One row per variable, one column per window: look-back, truth, the winner's and baselines' forecasts."""
    variables = list(dict.fromkeys(w.variable for w in windows))
    per_row = len(windows) // len(variables)
    fig = Figure(figsize=(5 * per_row, 3.0 * len(variables) + 1.0), dpi=DPI)
    axes = fig.subplots(len(variables), per_row, squeeze=False)
    for ax, w in zip(axes.flat, windows):
        horizon = np.arange(len(w.truth))
        ax.plot(np.arange(-len(w.history), 0), w.history, color="black", lw=0.9)
        ax.plot(horizon, w.truth, color="black", lw=1.4, label="truth")
        baselines = iter(BASELINE_COLORS)
        for name, values in w.forecasts.items():
            style = METHOD_STYLE.get(name) or {"color": next(baselines), "lw": 1.1, "ls": "--"}
            ax.plot(horizon, values, label=name, **style)
        ax.axvline(0, color="grey", lw=0.5)
        scores = ",  ".join(f"{_short(name)} {mse:.3g}" for name, mse in w.mse.items())
        # the window and its scores above the panel, not over its lines; legible at the saved size
        ax.set_title(f"{w.variable} from {w.first_date}, MSE:\n{scores}", fontsize=PANEL_FONT, loc="left")
        ax.set_ylabel(w.variable, fontsize=PANEL_FONT)
        ax.tick_params(labelsize=PANEL_FONT - 1)
    for ax in axes[-1]:
        ax.set_xlabel("rows from the forecast start", fontsize=PANEL_FONT)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=PANEL_FONT)
    fig.suptitle(caption, fontsize=PANEL_FONT, y=0.995 - 0.35 / fig.get_figheight())
    _grid_layout(fig, axes, top=0.6)
    _save(fig, path)


def _grid_layout(fig: Figure, axes: np.ndarray, top: float) -> None:
    """Margins of a grid of panels in inches from its text: what `tight_layout` finds, without drawing
    every panel once more to measure it (2.3 s of the forecasts picture's 5.1 s with 21 panels). Left of
    a panel: its ticks, widest y tick label and y label; above: its left title's lines; below: its ticks
    and x tick labels (and the x label under the last row); `top`: inches kept for suptitle and legend."""
    renderer = FigureCanvasAgg(fig).get_renderer()  # the canvas savefig draws on (a bare Figure has none)
    pad, point = 6 / 72, 1 / 72  # inches between pieces of text; inches per point
    first, last = axes.flat[0], axes.flat[-1]

    def height(text: str, font: FontProperties) -> float:  # inches, one line of text as drawn
        return renderer.get_text_width_height_descent(text, font, False)[1] / fig.dpi

    def y_labels(ax) -> float:  # tick marks, the widest tick label (tick labels get their text at draw time)
        font = ax.yaxis.get_major_ticks()[0].label1.get_fontproperties()
        labels = ax.yaxis.get_major_formatter().format_ticks(ax.yaxis.get_majorticklocs())
        widest = max(renderer.get_text_width_height_descent(t, font, False)[0] for t in labels) / fig.dpi
        y_label = ax.yaxis.labelpad * point + height(ax.get_ylabel(), ax.yaxis.label.get_fontproperties())
        return ax.yaxis.get_tick_padding() * point + widest + y_label

    def title(ax) -> float:  # matplotlib's line spacing, 1.2 lines
        lines = ax.get_title(loc="left").split("\n")
        return 1.2 * len(lines) * height("Ay", FontProperties(size=PANEL_FONT)) + mpl.rcParams["axes.titlepad"] * point

    left = max(y_labels(ax) for ax in axes.flat) + pad
    above = max(title(ax) for ax in axes.flat) + pad
    below = first.xaxis.get_tick_padding() * point + height("0", first.xaxis.get_ticklabels()[0].get_fontproperties())
    below += pad
    x_label = last.xaxis.labelpad * point + height(last.get_xlabel(), last.xaxis.label.get_fontproperties()) + pad
    width, fig_height = fig.get_size_inches()
    rows, cols = axes.shape
    panel_w = (width - cols * left - pad) / cols
    panel_h = (fig_height - top - above - below - x_label - (rows - 1) * (above + below)) / rows
    fig.subplots_adjust(
        left=left / width,
        right=1 - pad / width,
        bottom=(below + x_label) / fig_height,
        top=1 - (top + above) / fig_height,
        wspace=left / panel_w,
        hspace=(above + below) / panel_h,
    )


def _focus(ax, values: list[float]) -> str:
    """Fit the y axis to where the trials are: values far above the median (diverging trials) are cut
    off so they do not flatten the others; returns the note for the title ("" when nothing is cut)."""
    finite = np.array([v for v in values if math.isfinite(v)])
    if len(finite) < 2:
        return ""
    low, median = finite.min(), float(np.median(finite))
    top = median + 3 * max(median - low, 0.02 * median)
    above = finite[finite > top]
    if not len(above):
        return ""
    ax.set_ylim(low - 0.1 * (top - low), top)
    return f"; axis cut at {top:.3g}: {len(above)} values above (up to {above.max():.3g})"


def _save(fig: Figure, path: Path) -> None:
    """PNG with a 256-colour palette: a third of the bytes of full colour for line plots (the forecasts:
    445 -> 166 kB); the fast octree palette and no extra zlib pass take 0.09 s where median cut and
    `optimize` took 0.86 s, for a smaller file."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    Image.open(buffer).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(path)


def _short(method: str) -> str:
    """'winner', 'repeat-last', 'linear': a method's name in a panel's scores."""
    names = {label: name.replace("_", "-") for name, label in BASELINES.items()}
    return "winner" if method == WINNER else names.get(method, method.split(" (")[0])
