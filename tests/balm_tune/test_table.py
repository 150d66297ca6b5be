"""The campaign's table: an average row per dataset, the best figure of a row in bold, the marker of the
winner's test against linear, and the same rows as Markdown, CSV and booktabs LaTeX."""

import csv
import io

from balm_tune.table import BETTER, WORSE, Figure, TableRow, to_csv, to_latex, to_markdown, with_averages


def _rows() -> list[TableRow]:
    def row(dataset, horizon, tuned, linear, marker="", paper=None):
        figures = {
            "tuned": Figure(tuned, tuned + 0.1, 0.004, 0.002, 3, 1000),
            "linear": Figure(linear, 0.45, windows=1000),
        }
        if paper:
            figures["paper"] = Figure(*paper)
        return TableRow(dataset, horizon, figures, marker, 0.01 if marker else 0.4)

    return [
        row("ETTh1", 96, 0.380, 0.390, BETTER, paper=(0.365, 0.392)),
        row("ETTh1", 192, 0.420, 0.410, WORSE),
        row("Exchange", 96, 0.090, 0.080),
    ]


def test_each_dataset_gets_an_average_of_the_columns_every_horizon_has():
    table = with_averages(_rows())
    assert [(r.dataset, r.horizon) for r in table] == [
        ("ETTh1", 96),
        ("ETTh1", 192),
        ("ETTh1", "avg"),
        ("Exchange", 96),
    ]
    average = table[2]
    assert set(average.figures) == {"tuned", "linear"}  # the paper's figure is there for H=96 only
    assert average.figures["tuned"].mse == (0.380 + 0.420) / 2 and average.figures["linear"].windows == 2000
    assert average.marker == ""  # no test of an average


def test_the_lowest_mse_and_mae_of_a_row_are_bold_and_the_winners_marker_follows_its_mse():
    markdown = to_markdown(with_averages(_rows()))
    lines = markdown.splitlines()
    assert lines[0].startswith("| dataset | H | BALM tuned MSE | BALM tuned MAE | linear MSE | linear MAE | paper MSE")
    h96 = lines[2].split(" | ")
    assert h96[2:5] == ["0.380 ± 0.004*", "0.480 ± 0.002", "0.390"]
    assert h96[-2:] == ["**0.365**", "**0.392** |"]  # the paper's figures are the row's best
    h192 = lines[3].split(" | ")
    assert h192[2] == f"0.420 ± 0.004{WORSE}" and h192[4] == "**0.410**" and h192[5] == "**0.450**"
    assert lines[-1].startswith("Test MSE / MAE")


def test_the_csv_keeps_every_figure_at_full_precision_with_its_seeds_and_windows():
    rows = list(csv.DictReader(io.StringIO(to_csv(with_averages(_rows())))))
    assert rows[0]["tuned_mse"] == "0.38" and rows[0]["tuned_seeds"] == "3" and rows[0]["tuned_windows"] == "1000"
    assert rows[0]["tuned_vs_linear"] == BETTER and rows[0]["tuned_vs_linear_p"] == "0.01"
    assert rows[0]["paper_mse"] == "0.365" and rows[1]["paper_mse"] == ""  # left empty where not recorded
    assert rows[2]["horizon"] == "avg" and rows[2]["linear_windows"] == "2000"


def test_the_latex_is_a_booktabs_tabular_with_a_column_pair_per_method():
    latex = to_latex(with_averages(_rows()))
    assert latex.startswith("\\begin{tabular}{llcccccc}\n\\toprule\n")
    assert "\\multicolumn{2}{c}{BALM tuned}" in latex and "\\cmidrule(lr){3-4}" in latex
    assert "0.380{\\scriptsize$\\pm$0.004}$^{*}$" in latex and "$^{\\dagger}$" in latex
    assert "\\textbf{0.365}" in latex and "\\bottomrule\n\\end{tabular}" in latex
    assert "\\cmidrule(lr){1-8}\nETTh1 & avg" in latex
