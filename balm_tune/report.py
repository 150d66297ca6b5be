"""An experiment's report: PNGs and an offline index.html under <experiment>/report/.

    python -m balm_tune.report runs/<name>        # (re)build the report of a finished search
    python -m balm_tune.report s3://bucket/prefix/<name> --out runs   # from remote storage (balm_tune.storage)

Written at the end of every search (balm_tune.api.execute) and rebuildable any time from what the
search left: leaderboard.csv, summary.json, Ray's per-trial result.json, config.yaml +
checkpoint.pt (the winner is rebuilt on the CPU) and, when the search persisted one, the Optuna
study (optuna.journal) for the importances. index.html uses relative links only, no scripts. With
remote storage the report is built in a local copy (<out>/<name>/report/) and uploaded beside the
experiment (<uri>/report/).
"""

from __future__ import annotations

import csv
import html
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from balm_tune.experiment import (
    EARLIER_CHECKPOINT,
    EARLIER_CONFIG,
    EXPORTED,
    LEADERBOARD,
    REPORT_INDEX,
    TRIAL_FILES,
    Experiment,
    ExperimentError,
    Summary,
)
from core.cli import Parser, exit_with
from core.errors import BalmError, shown

if TYPE_CHECKING:
    from balm_tune.figures import TrialCurve
    from balm_tune.importance import Importances

WINDOWS_PER_VARIABLE = 3
TEXT_COLUMNS = {"trial_id", "node_id", "status", "reason", "kind", "outcome", "device", "precision"}
# the page's leaderboard: every row is a trial and its status says how it ended (kind, outcome not shown);
# node, device and precision said once when every trial shares them; ids and texts cut (the whole in a tooltip)
DROPPED_COLUMNS = ("kind", "outcome")
SHARED_COLUMNS = ("node_id", "device", "precision")
NODE_ID_SHOWN = 8
TEXT_SHOWN = 40
PICTURES = ("history.png", "curves.png", "importances.png", "forecasts.png")


class ReportError(BalmError):
    """The folder is not an experiment a report can be built from."""


@dataclass
class Report:
    folder: Path
    index: Path
    figures: list[Path]
    importances: Importances


def write_report(experiment: Experiment | str | Path, importances: Importances | None = None) -> Report:
    """Build <experiment>/report/ (PNGs + index.html) from the experiment's mirror and return what was
    written; a remote experiment's report is also published to <location>/report/. `importances`: the
    ones the search computed (else they are computed again from the study, which a rebuild re-reads).
    The report is built in a folder beside it and replaces the old one only once all of it is written:
    a rebuild that fails (a damaged checkpoint) leaves the earlier report as it was."""
    experiment = experiment if isinstance(experiment, Experiment) else Experiment.local(experiment)
    board, summary = _read_inputs(experiment)  # checked before the heavy imports below
    folder = experiment.report.with_name(f".{experiment.report.name}.new.{os.getpid()}")
    folder.mkdir(parents=True)
    try:
        importances, written = _build(experiment, board, summary, importances, folder)
        _swap(folder, experiment.report)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # a build that failed half-way
    written = [experiment.report / path.name for path in written]
    experiment.publish(*written)
    return Report(experiment.report, written[-1], written[:-1], importances)


def _build(
    experiment: Experiment, board: list[dict], summary: Summary, importances: Importances | None, folder: Path
) -> tuple[Importances, list[Path]]:
    """The pictures and index.html in `folder` (index.html last)."""
    from balm_tune import figures
    from balm_tune.importance import experiment_importances
    from balm_tune.space import load_space

    search = list(load_space(experiment.space_file).search)
    winner = summary.winner.trial_id if summary.winner else None
    trials = trial_curves(experiment, board)
    windows = summary.windows
    val_windows = _windows(windows.val, windows.val_total, "validation")
    test_windows = _windows(windows.test, windows.test, "test")

    written = [folder / PICTURES[0], folder / PICTURES[1]]
    figures.history(trials, winner, val_windows, written[0])
    figures.curves(trials, winner, val_windows, written[1])
    if importances is None:
        importances = experiment_importances(experiment.journal, experiment.name, search)
    if importances.values:
        written.append(folder / PICTURES[2])
        i = importances
        figures.importances(i.values, i.evaluator, i.trials, i.epoch, written[-1])
    if experiment.checkpoint.is_file() and experiment.config.is_file():  # rebuilt on the CPU from the export
        from balm_tune.forecasts import rebuild_winner, winner_forecasts

        trainer = rebuild_winner(experiment.folder)
        config = trainer.config
        written.append(folder / PICTURES[3])
        caption = (
            f"Winner {winner} on {WINDOWS_PER_VARIABLE} evenly spaced test windows per variable "
            f"(look-back {config.seq_len}, horizon {config.pred_len}; values in the data's units). "
            f"MSE per window on standardised values."
        )
        figures.forecasts(winner_forecasts(trainer, WINDOWS_PER_VARIABLE), caption, written[-1])
    index = folder / REPORT_INDEX
    index.write_text(_index_html(experiment, board, summary, importances, written, val_windows, test_windows))
    return importances, [*written, index]


def _swap(new: Path, old: Path) -> None:
    """Put the finished folder `new` where `old` was (the old one removed once it is out of the way)."""
    if old.exists():
        retired = old.with_name(f".{old.name}.old.{os.getpid()}")
        old.rename(retired)
        new.rename(old)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        new.rename(old)


def trial_curves(experiment: Experiment | Path, board: list[dict]) -> list[TrialCurve]:
    """Every leaderboard trial's validation MSE by epoch, from Ray's result.json in its trial folder."""
    from balm_tune.figures import TrialCurve

    experiment = experiment if isinstance(experiment, Experiment) else Experiment.local(experiment)

    status = {row["trial_id"]: row for row in board}
    found = {}
    for path in experiment.trial_results():
        results = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if results and results[0].get("trial_id") in status:
            found[results[0]["trial_id"]] = results
    curves = []
    for order, (trial_id, results) in enumerate(sorted(found.items(), key=lambda item: _started(item[1]))):
        epochs = [r for r in results if "val_mse" in r and "epoch" in r]
        curves.append(
            TrialCurve(
                trial_id=trial_id,
                order=order,
                status=status[trial_id]["status"],
                epochs=[int(r["epoch"]) for r in epochs],
                val_mse=[float(r["val_mse"]) for r in epochs],
                best_val_mse=float(status[trial_id]["best_val_mse"]),
            )
        )
    return curves


def _started(results: list[dict]) -> float:
    """When a trial started: its first result's timestamp less the time it had run."""
    first = results[0]
    return first.get("timestamp", 0) - first.get("time_total_s", 0)


def _windows(used: int, total: int, split: str) -> str:
    return f"all {total:,} {split} windows" if used == total else f"{used:,} evenly spaced of {total:,} {split} windows"


def _read_inputs(experiment: Experiment) -> tuple[list[dict], Summary]:
    """leaderboard.csv's trial rows and summary.json, or one ReportError line saying what is missing."""
    folder = experiment.folder
    if not folder.is_dir():
        raise ReportError(f"{folder}: no such experiment folder")
    if not experiment.leaderboard.is_file() or not experiment.space_file.is_file():
        raise ReportError(
            f"{folder}: not a finished balm_tune experiment (expected {experiment.leaderboard.name} and "
            f"{experiment.space_file.name}; an interrupted search is finished with --resume)"
        )
    if experiment.path(EARLIER_CONFIG).is_file() and not experiment.config.is_file():
        raise ReportError(
            f"{folder}: exported by an earlier balm_tune ({EARLIER_CONFIG}, {EARLIER_CHECKPOINT}); rename them "
            f"{experiment.config.name} and {experiment.checkpoint.name} to rebuild its report with this one"
        )
    try:
        summary = experiment.read_summary()
    except ExperimentError as err:
        raise ReportError(str(err)) from None
    return _read_board(experiment.leaderboard), summary


BOARD_COLUMNS = ("trial_id", "status", "best_val_mse")  # what the page reads of every trial row


def _read_board(path: Path) -> list[dict]:
    """leaderboard.csv's trial rows (earlier searches wrote baseline rows there too), or one ReportError
    naming the file and what is wrong with it (a damaged file fails here, before any picture is drawn)."""
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            missing = [c for c in BOARD_COLUMNS if c not in (reader.fieldnames or ())]
    except (UnicodeDecodeError, csv.Error) as err:
        raise ReportError(f"{path}: not a leaderboard CSV ({err}); rebuild it with --resume") from None
    if missing:
        raise ReportError(f"{path}: no column {', '.join(missing)} (damaged?); rebuild it with --resume")
    board = [(line, row) for line, row in enumerate(rows, 2) if row.get("kind", "trial") == "trial"]  # 1: header
    for line, row in board:
        try:
            float(row["best_val_mse"] or "nan")  # empty: a trial that failed before its first epoch
        except (TypeError, ValueError):
            raise ReportError(
                f"{path}: line {line}: best_val_mse {shown(row['best_val_mse'])} is not a number (damaged?); "
                "rebuild it with --resume"
            ) from None
    return [row for _, row in board]


STYLE = (
    "body{font-family:sans-serif;margin:1.5em 2em;max-width:1400px}"
    "h2{margin:1.2em 0 0.4em}"
    "table{border-collapse:collapse;font-size:12px;margin:0.3em 0}"
    "td,th{border:1px solid #ccc;padding:2px 5px;white-space:nowrap;text-align:left}"
    "th{background:#f3f3f3;white-space:normal;vertical-align:bottom}"
    "td.n{text-align:right;font-variant-numeric:tabular-nums}"
    "tr.winner td{background:#e3edfa;font-weight:bold}"
    ".yes{color:#17612b}.no{color:#a3151a}td.no{font-weight:bold}"
    "ul.verdict{margin:0.4em 0;padding-left:1.4em}ul.verdict li{margin:0.2em 0}"
    "p.warning{color:#a3151a;font-weight:bold}"
    ".wide{overflow-x:auto}"
    ".pictures{display:flex;flex-wrap:wrap;gap:0.8em;align-items:flex-start}"
    "img{max-width:100%;height:auto;border:1px solid #eee;margin:0.3em 0}"
)


def _index_html(
    experiment: Experiment,
    board: list[dict],
    summary: Summary,
    importances: Importances,
    pictures: list[Path],
    val_windows: str,
    test_windows: str,
) -> str:
    """The page: what the search found, the winner beside the baselines (with the verdict the CLI
    prints), the pictures and the leaderboard, laid out to fit a 1400 px wide window."""
    e = html.escape
    lines = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(experiment.name)}: balm_tune report</title>",
        f"<style>{STYLE}</style>",
        "</head><body>",
        f"<h1>Search {e(experiment.name)}</h1>",
    ]
    outcomes = ", ".join(f"{n} {s}" for s, n in summary.outcomes.items())
    lines.append(f"<p>{len(board)} trials{f' ({e(outcomes)})' if outcomes else ''}. Selection on validation only.</p>")
    if summary.stalled:
        lines.append(f'<p class="warning">The search ended early: {e(str(summary.stalled))}</p>')
    winner = summary.winner.trial_id if summary.winner else None
    if summary.has_winner:
        scores = summary.scores()
        lines.append(
            f"<p>Winner <b>{e(str(winner))}</b>: validation MSE {scores['val'].mse:.6g}, "
            f"MAE {scores['val'].mae:.6g} ({e(val_windows)}); test MSE {scores['test'].mse:.6g}, "
            f"MAE {scores['test'].mae:.6g} ({e(test_windows)}; test data used for the winner only).</p>"
        )
        if summary.final_seeds:
            f = summary.final_seeds
            lines.append(
                f"<p>Winner on {len(f['runs'])} further seeds: test MSE {f['test_mse_mean']:.6g} "
                f"&plusmn; {f['test_mse_std']:.4g}, MAE {f['test_mae_mean']:.6g} &plusmn; {f['test_mae_std']:.4g} "
                f"({e(test_windows)}).</p>"
            )
    else:
        lines.append("<p>No trial finished successfully: no winner, no forecasts.</p>")
    lines += _baseline_html(summary, val_windows, test_windows)
    lines.append(f"<p>{e(importances.line())}</p>")
    pairs = [p for p in pictures if p.name in ("history.png", "curves.png")]  # side by side where they fit
    if pairs:
        lines.append('<div class="pictures">' + "".join(_img(p) for p in pairs) + "</div>")
    for picture in pictures:
        if picture.name == "importances.png":
            lines.append(f"<p>{_img(picture)}</p>")
    lines += _leaderboard_html(board, winner)
    for picture in pictures:
        if picture not in pairs and picture.name != "importances.png":
            lines.append(f"<h2>Forecasts of the winner</h2><p>{_img(picture)}</p>")
    lines += ["</body></html>", ""]
    return "\n".join(lines)


def _img(picture: Path) -> str:
    e = html.escape
    return f'<img src="{e(picture.name)}" alt="{e(picture.stem)}">'


def _verdict_cell(word: str) -> str:
    """A verdict of core.baselines.verdict as a table cell says it."""
    return {"beats": "yes", "does NOT beat": "NO"}.get(word, "no significant difference")


def _ablation_rows(summary: Summary, verdicts: list[str]) -> list[str]:
    """Rows of the --ablations arms (means over their seeds) under the baselines, and their verdict lines
    (balm_tune.closing.ablation_line, as the CLI prints them) appended to `verdicts`."""
    from balm_tune.closing import ARMS, ablation_line
    from core.baselines import verdict
    from core.significance import DieboldMariano

    e, rows, scores = html.escape, [], summary.scores()
    for arm, result in (summary.ablations or {}).items():
        tested = DieboldMariano(**result["significance_on_test"])
        val, test = result["best_val_mse_mean"], result["test_mse_mean"]
        word = verdict(scores["test"].mse, result["tested_run"]["test_mse"], tested)  # the run the test paired
        shown = _verdict_cell(word)
        beaten_on_val = scores["val"].mse < val
        rows.append(
            f'<tr><td title="{e(ARMS[arm])}">ablation {e(arm)}</td><td class="n">{val:.4g}</td><td></td>'
            f'<td class="n">{test:.4g}</td><td class="n">{result["test_mae_mean"]:.4g}</td>'
            f'<td class="{"yes" if beaten_on_val else "no"}">{"yes" if beaten_on_val else "NO"}</td>'
            f'<td class="{"yes" if word == "beats" else "no"}">{e(shown)} ({e(tested.p_text())})</td></tr>'
        )
        line = ablation_line(arm, result, scores["test"].mse, summary.seed_spread())
        verdicts.append(f'<li class="{"yes" if word == "beats" else "no"}">{e(line)}</li>')
    return rows


def _baseline_html(summary: Summary, val_windows: str, test_windows: str) -> list[str]:
    """The winner and each baseline (core.baselines) on the same windows, and the verdict lines of
    core.baselines.comparison (as `python -m balm_tune.search` prints them)."""
    from core.baselines import BASELINES, comparison, verdict

    e = html.escape
    baselines = summary.baseline_scores()
    if not baselines:
        return []
    has_winner = summary.has_winner
    lines = [
        f"<h2>{'Winner and baselines' if has_winner else 'Baselines'}</h2>",
        '<div class="wide"><table>',
        f'<tr><th rowspan="2">method</th><th colspan="2">validation: {e(val_windows)}</th>'
        f'<th colspan="2">test: {e(test_windows)}</th>'
        + ('<th colspan="2">the winner beats it on</th>' if has_winner else "")
        + "</tr>",
        "<tr><th>MSE</th><th>MAE</th><th>MSE</th><th>MAE</th>"
        + ("<th>validation</th><th>test</th>" if has_winner else "")
        + "</tr>",
    ]
    scores = summary.scores() if has_winner else {}
    if has_winner:
        lines.append(
            f'<tr class="winner"><td>winner {e(str(summary.winner.trial_id))}</td>'
            + "".join(f'<td class="n">{v:.4g}</td>' for s in ("val", "test") for v in (scores[s].mse, scores[s].mae))
            + "<td></td><td></td></tr>"
        )
    verdicts, tests, spread = [], summary.significance(), summary.seed_spread()
    for name, result in baselines.items():
        cells = "".join(
            f'<td class="n">{getattr(result[s], m):.4g}</td>' for s in ("val", "test") for m in ("mse", "mae")
        )
        if has_winner:
            said = [verdict(scores[s].mse, result[s].mse, tests.get(name, {}).get(s)) for s in ("val", "test")]
            for split, word in zip(("val", "test"), said, strict=True):
                test = tests.get(name, {}).get(split)
                shown = _verdict_cell(word)
                shown += f" ({test.p_text()})" if test is not None and test.p_value is not None else ""
                cells += f'<td class="{"yes" if word == "beats" else "no"}">{e(shown)}</td>'
            line = comparison(name, scores, result, who="the winner", tests=tests.get(name), spread=spread)
            verdicts.append(f'<li class="{"yes" if said == ["beats", "beats"] else "no"}">{e(line)}</li>')
        lines.append(f"<tr><td>{e(BASELINES[name])}</td>{cells}</tr>")
    lines += _ablation_rows(summary, verdicts) if has_winner else []
    lines.append("</table></div>")
    if verdicts:
        lines += ['<ul class="verdict">', *verdicts, "</ul>"]
    return lines


def _leaderboard_html(board: list[dict], winner: str | None) -> list[str]:
    """leaderboard.csv as a table that fits the page: no kind and outcome columns (every row is a
    trial; its status says how it ended), node, device and precision said once when every trial shares
    them, node ids cut to 8 characters and long reasons to 40 (the full text in a tooltip)."""
    e = html.escape
    lines = [f"<h2>Leaderboard ({LEADERBOARD}, best first)</h2>"]
    if not board:
        return [*lines, "<p>No trials.</p>"]
    columns = [k for k in board[0] if k not in DROPPED_COLUMNS]
    shared = {}
    for column in SHARED_COLUMNS:
        values = {row.get(column, "") for row in board}
        if column in columns and len(values) == 1:
            shared[column] = values.pop()
            columns.remove(column)
    said = [f"{column.replace('_', ' ')} {_short_html(column, value)}" for column, value in shared.items() if value]
    if said:
        lines.append(f"<p>Every trial: {', '.join(said)}.</p>")
    lines.append('<div class="wide"><table>')
    lines.append("<tr>" + "".join(f"<th>{e(k).replace('_', '_<wbr>')}</th>" for k in columns) + "</tr>")
    for row in board:
        mark = ' class="winner"' if winner is not None and row.get("trial_id") == winner else ""
        lines.append(f"<tr{mark}>" + "".join(_td(k, row[k]) for k in columns) + "</tr>")
    lines.append("</table></div>")
    return lines


def _td(column: str, value: str) -> str:
    if column not in TEXT_COLUMNS and _is_number(value):
        return f'<td class="n">{html.escape(_cell(column, value))}</td>'
    return f"<td>{_short_html(column, value)}</td>"


def _short_html(column: str, value: str) -> str:
    """A long id or text cut, the whole of it in a tooltip (title)."""
    keep = NODE_ID_SHOWN if column == "node_id" else TEXT_SHOWN
    if len(value) <= keep + 1:
        return html.escape(value)
    return f'<span title="{html.escape(value)}">{html.escape(value[:keep])}&hellip;</span>'


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _cell(column: str, value: str) -> str:
    """Float columns of the CSV to 4 significant digits; ids, names and integers as written
    (a trial id such as 1203e807 reads as a float)."""
    if column in TEXT_COLUMNS:
        return value
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() and "." not in value else f"{number:.4g}"


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m balm_tune.report", description=__doc__.splitlines()[0])
    p.add_argument("experiment", help="experiment of a finished search: its folder (runs/<name>) or storage URI")
    p.add_argument("--out", default="runs", help="with a URI: the local folder that receives <name>/ (default runs/)")
    args = p.parse_args(argv)
    try:
        report = _from_uri(args.experiment, args.out) if "://" in args.experiment else write_report(args.experiment)
    except BalmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.importances.line())
    print(f"report: {report.index} ({len(report.figures)} figures)")
    return 0


def _from_uri(uri: str, out: str) -> Report:
    """Fetch a remote experiment's inputs into <out>/<name>/, build the report there and publish it."""
    from balm_tune.storage import open_location

    location = open_location(uri)
    experiment = Experiment.open(location.parent, location.name, out)
    if not experiment.location.child(experiment.leaderboard.name).exists():
        raise ReportError(f"{uri}: not a finished balm_tune experiment (no {experiment.leaderboard.name} there)")
    experiment.fetch(*EXPORTED, *TRIAL_FILES, trials=True)
    return write_report(experiment)


if __name__ == "__main__":
    exit_with(main)
