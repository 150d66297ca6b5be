"""The campaign's table (balm_tune.campaign): one row per dataset and horizon and an average row per
dataset, as Markdown, CSV and LaTeX (booktabs), built from each search's summary.json.

Columns, MSE and MAE on the test windows (standardised values, as the paper reports them):
- `tuned`: the search's winner, mean +- std over its own seed and the --final-seeds seeds;
- `official`: the space's first enqueued config (a preset's official configuration), the same seeds;
- each ablation arm of --ablations (core.config.ABLATIONS), means over the same seeds;
- `linear`, `repeat-last`: core.baselines, on the same windows (deterministic: no seeds);
- `paper`: the published figure where the space records one (`paper:`), else empty.
The lowest MSE and the lowest MAE of a row are bold. A marker on the tuned MSE is the Diebold-Mariano
test of the winner against linear on the test windows (core.significance; the winner's own seed):
`*` significantly better, `†` significantly worse (p < 0.05), none: no significant difference.
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.config import ABLATIONS

if TYPE_CHECKING:
    from balm_tune.experiment import Summary

COLUMNS = {"tuned": "BALM tuned", "official": "official config", **{a: a for a in ABLATIONS}}
COLUMNS |= {"linear": "linear", "repeat_last": "repeat-last", "paper": "paper"}
BETTER, WORSE = "*", "†"  # the winner against linear, Diebold-Mariano p < 0.05
AVERAGE = "avg"
LEGEND = (
    f"Test MSE / MAE; tuned and official: mean ± std over seeds; best of a row in bold; {BETTER} / {WORSE}: "
    "the tuned winner significantly better / worse than linear (Diebold-Mariano, p < 0.05, all test windows)."
)


@dataclass(frozen=True)
class Figure:
    """One method's test MSE and MAE in a row (std and seeds where several seeds were trained)."""

    mse: float
    mae: float
    mse_std: float | None = None
    mae_std: float | None = None
    seeds: int | None = None
    windows: int | None = None


@dataclass
class TableRow:
    dataset: str
    horizon: int | str  # pred_len, or AVERAGE
    figures: dict[str, Figure] = field(default_factory=dict)  # column -> Figure, in COLUMNS' order
    marker: str = ""  # BETTER, WORSE or ""
    p_value: float | None = None  # the winner against linear
    experiment: str = ""

    def best(self, metric: str) -> set[str]:
        """The columns holding the row's lowest `metric` ('mse' or 'mae')."""
        values = {name: round(getattr(f, metric), 3) for name, f in self.figures.items()}
        lowest = min(values.values(), default=None)
        return {name for name, value in values.items() if value == lowest}


def summary_row(dataset: str, horizon: int, summary: Summary, paper: dict | None, experiment: str) -> TableRow:
    """A cell's row from its summary.json (a search with a winner) and the space's `paper` entry."""
    windows = summary.test["test_windows"]
    mse, mae = summary.seed_values("test_mse"), summary.seed_values("test_mae")
    figures = {"tuned": Figure(*_means(mse, mae), *_stds(mse, mae), len(mse), windows)}
    if summary.official:
        figures["official"] = _retrained(summary.official)
    for arm, result in (summary.ablations or {}).items():
        figures[arm] = _retrained(result)
    for name, scores in summary.baselines.items():
        figures[name] = Figure(scores["test"]["mse"], scores["test"]["mae"], windows=scores["test"]["windows"])
    if paper:
        figures["paper"] = Figure(paper.get("mse", float("nan")), paper.get("mae", float("nan")))
    tested = summary.significance().get("linear", {}).get("test")
    marker = ""
    if tested is not None and tested.significant:
        marker = BETTER if tested.mean_difference < 0 else WORSE
    ordered = {name: figures[name] for name in COLUMNS if name in figures}
    return TableRow(dataset, horizon, ordered, marker, tested.p_value if tested else None, experiment)


def _retrained(result: dict) -> Figure:
    """A retrained config's figure (summary.json's `official` or an ablation arm)."""
    return Figure(
        result["test_mse_mean"], result["test_mae_mean"], result["test_mse_std"], result["test_mae_std"],
        len(result["runs"]), result["test_windows"],
    )  # fmt: skip


def _means(*series: list[float]) -> list[float]:
    return [statistics.fmean(values) for values in series]


def _stds(*series: list[float]) -> list[float]:
    return [statistics.stdev(values) if len(values) > 1 else 0.0 for values in series]


def with_averages(rows: list[TableRow]) -> list[TableRow]:
    """The rows grouped by dataset (first-seen order), each group followed by its average row: per column
    present in every row of the dataset, the mean MSE and MAE over its horizons (windows: their sum)."""
    table = []
    for dataset in dict.fromkeys(r.dataset for r in rows):
        group = [r for r in rows if r.dataset == dataset]
        table += group
        if len(group) < 2:
            continue
        shared = [name for name in group[0].figures if all(name in r.figures for r in group)]
        figures = {}
        for name in shared:
            own = [r.figures[name] for r in group]
            windows = [f.windows for f in own]
            mse, mae = _means([f.mse for f in own], [f.mae for f in own])
            figures[name] = Figure(mse, mae, windows=sum(windows) if None not in windows else None)
        table.append(TableRow(dataset, AVERAGE, figures))
    return table


def columns(rows: list[TableRow]) -> list[str]:
    """The columns any row fills, in COLUMNS' order."""
    used = {name for row in rows for name in row.figures}
    return [name for name in COLUMNS if name in used]


def _number(figure: Figure | None, metric: str, bold: bool, marker: str = "", tex: bool = False) -> str:
    """'0.395 +- 0.007' (std where several seeds), bold as asked; '' without the figure."""
    value = getattr(figure, metric) if figure else float("nan")
    if value != value:  # NaN: not recorded
        return ""
    std = getattr(figure, f"{metric}_std")
    spread = "" if std is None or not figure.seeds or figure.seeds < 2 else f"{std:.3f}"
    if tex:
        text = f"{value:.3f}" + (f"{{\\scriptsize$\\pm${spread}}}" if spread else "")
        return (f"\\textbf{{{text}}}" if bold else text) + (f"$^{{{_tex_marker(marker)}}}$" if marker else "")
    text = f"{value:.3f}" + (f" ± {spread}" if spread else "")
    return (f"**{text}**" if bold else text) + marker


def _tex_marker(marker: str) -> str:
    return {BETTER: "*", WORSE: "\\dagger"}[marker]


def _cells(row: TableRow, names: list[str], tex: bool = False) -> list[str]:
    best = {metric: row.best(metric) for metric in ("mse", "mae")}
    cells = []
    for name in names:
        figure = row.figures.get(name)
        for metric in ("mse", "mae"):
            marker = row.marker if name == "tuned" and metric == "mse" else ""
            cells.append(_number(figure, metric, name in best[metric], marker, tex))
    return cells


def to_markdown(rows: list[TableRow]) -> str:
    names = columns(rows)
    header = ["dataset", "H", *(f"{COLUMNS[n]} {m}" for n in names for m in ("MSE", "MAE"))]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join([row.dataset, str(row.horizon), *_cells(row, names)]) + " |")
    return "\n".join(lines) + f"\n\n{LEGEND}\n"


def to_csv(rows: list[TableRow]) -> str:
    """Every figure at full precision with its std, seeds and window count; the test against linear."""
    names = columns(rows)
    parts = ("mse", "mse_std", "mae", "mae_std", "seeds", "windows")
    header = ["dataset", "horizon", *(f"{n}_{p}" for n in names for p in parts)]
    header += ["tuned_vs_linear", "tuned_vs_linear_p", "experiment"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        values = [getattr(row.figures[n], p) if n in row.figures else None for n in names for p in parts]
        values = ["" if v is None or v != v else v for v in values]
        writer.writerow([row.dataset, row.horizon, *values, row.marker, "" if row.p_value is None else row.p_value,
                         row.experiment])  # fmt: skip
    return out.getvalue()


def to_latex(rows: list[TableRow]) -> str:
    """A booktabs tabular: a two-column group (MSE, MAE) per method, a rule before each average row."""
    names = columns(rows)
    span = " ".join(f"\\cmidrule(lr){{{3 + 2 * i}-{4 + 2 * i}}}" for i in range(len(names)))
    lines = [
        f"\\begin{{tabular}}{{ll{'cc' * len(names)}}}",
        "\\toprule",
        " & ".join(["", "", *(f"\\multicolumn{{2}}{{c}}{{{_tex(COLUMNS[n])}}}" for n in names)]) + " \\\\",
        span,
        " & ".join(["Dataset", "H", *(["MSE", "MAE"] * len(names))]) + " \\\\",
        "\\midrule",
    ]
    for row in rows:
        if row.horizon == AVERAGE:
            lines.append("\\cmidrule(lr){1-" + str(2 + 2 * len(names)) + "}")
        lines.append(" & ".join([_tex(row.dataset), str(row.horizon), *_cells(row, names, tex=True)]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", f"% {LEGEND}"]
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    return text.replace("_", "\\_")


def to_html(rows: list[TableRow]) -> str:
    """The table as an HTML <table> (bold as <b>), for the campaign's report page."""
    import html

    names = columns(rows)
    head = "".join(f"<th colspan=2>{html.escape(COLUMNS[n])}</th>" for n in names)
    lines = [
        "<table>",
        f"<tr><th rowspan=2>dataset</th><th rowspan=2>H</th>{head}</tr>",
        "<tr>" + "<th>MSE</th><th>MAE</th>" * len(names) + "</tr>",
    ]
    for row in rows:
        cells = "".join(f"<td class=n>{_html_bold(c)}</td>" for c in _cells(row, names))
        style = " class=average" if row.horizon == AVERAGE else ""
        lines.append(f"<tr{style}><td>{html.escape(row.dataset)}</td><td>{row.horizon}</td>{cells}</tr>")
    lines.append("</table>")
    return "\n".join(lines) + f"\n<p>{html.escape(LEGEND)}</p>"


def _html_bold(cell: str) -> str:
    import html

    if cell.startswith("**"):
        text, _, rest = cell[2:].partition("**")
        return f"<b>{html.escape(text)}</b>{html.escape(rest)}"
    return html.escape(cell)
