"""An experiment's report: PNGs and an offline index.html under <experiment>/report/.

    python -m balm_tune.report runs/<name>        # (re)build the report of a finished search
    python -m balm_tune.report s3://bucket/prefix/<name> --out runs   # from remote storage (balm_tune.storage)

Written at the end of every search (balm_tune.api.execute) and rebuildable any time from what the
search left: leaderboard.csv, summary.json, Ray's per-trial result.json, best_config.yaml +
best_checkpoint.pt (the winner is rebuilt on the CPU) and, when the search persisted one, the Optuna
study (optuna.journal) for the importances. index.html uses relative links only, no scripts. With
remote storage the report is built in a local copy (<out>/<name>/report/) and uploaded beside the
experiment (<uri>/report/).
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import BalmError

if TYPE_CHECKING:
    from balm_tune.figures import TrialCurve
    from balm_tune.importance import Importances
    from balm_tune.storage import Location

REPORT_DIR = "report"
SPACE_COPY = "search_space.yaml"
WINDOWS_PER_VARIABLE = 3
TEXT_COLUMNS = {"trial_id", "node_id", "status", "reason", "kind", "outcome", "device", "precision"}
# what the report reads; Ray and the Optuna study write the last two at the storage location
EXPORTED_INPUTS = ("leaderboard.csv", "summary.json", SPACE_COPY, "best_config.yaml", "best_checkpoint.pt")
TRIAL_INPUTS = ("result.json", "optuna.journal")
PICTURES = ("history.png", "curves.png", "importances.png", "forecasts.png")


class ReportError(BalmError):
    """The folder is not an experiment a report can be built from."""


@dataclass
class Report:
    folder: Path
    index: Path
    figures: list[Path]
    importances: Importances


def write_report(experiment: str | Path, location: Location | None = None) -> Report:
    """Build <experiment>/report/ (PNGs + index.html) and return what was written; with the storage
    `location` of a remote experiment, also upload it to <location>/report/."""
    experiment = Path(experiment)
    board = _read_leaderboard(experiment)  # checked before the heavy imports below
    from balm_tune import figures
    from balm_tune.importance import experiment_importances
    from balm_tune.space import load_space

    space = load_space(experiment / SPACE_COPY)
    summary = _read_json(experiment / "summary.json")
    if "windows" not in summary:
        raise ReportError(
            f"{experiment / 'summary.json'}: no window counts (missing, or written by an earlier balm_tune); "
            "rerun the search to build its report"
        )
    winner = summary.get("winner", {}).get("trial_id")
    folder = experiment / REPORT_DIR
    folder.mkdir(exist_ok=True)
    for name in PICTURES:  # a rebuild leaves no picture of an earlier build (importances may now be absent)
        (folder / name).unlink(missing_ok=True)

    trials = trial_curves(experiment, board)
    has_winner = (experiment / "best_checkpoint.pt").is_file() and (experiment / "best_config.yaml").is_file()
    windows = summary["windows"]
    val_windows = _windows(windows["val"], windows["val_total"], "validation")
    test_windows = _windows(windows["test"], windows["test"], "test")
    baseline = _baselines(summary)

    written = [folder / PICTURES[0], folder / PICTURES[1]]
    figures.history(trials, winner, val_windows, written[0])
    figures.curves(trials, winner, val_windows, written[1])
    importances = experiment_importances(experiment, list(space.search))
    if importances.values:
        written.append(folder / PICTURES[2])
        figures.importances(importances.values, importances.evaluator, importances.complete_trials, written[-1])
    if has_winner:  # rebuilt on the CPU from the exported config and checkpoint
        from balm_tune.forecasts import rebuild_winner, winner_forecasts

        trainer = rebuild_winner(experiment)
        config = trainer.config
        written.append(folder / PICTURES[3])
        caption = (
            f"Winner {winner} on {WINDOWS_PER_VARIABLE} evenly spaced test windows per variable "
            f"(look-back {config.seq_len}, horizon {config.pred_len}; values in the data's units). "
            f"MSE per window on standardised values."
        )
        figures.forecasts(winner_forecasts(trainer, WINDOWS_PER_VARIABLE), caption, written[-1])
    index = folder / "index.html"
    index.write_text(_index_html(experiment, board, summary, importances, written, val_windows, test_windows, baseline))
    if location is not None:
        for path in [*written, index]:
            location.child(REPORT_DIR, path.name).upload(path)  # no-op when the location is this folder
    return Report(folder, index, written, importances)


def fetch_inputs(location: Location, folder: Path, names: tuple[str, ...]) -> int:
    """Copy the files called `names` (at the top or one folder down: the trials') from the experiment's
    storage location into the local `folder`; returns how many (none when the location is `folder`)."""
    if location.is_local and Path(location.path).resolve() == Path(folder).resolve():
        return 0
    wanted = [n for n in location.files() if n.rsplit("/", 1)[-1] in names and n.count("/") <= 1]
    for name in wanted:
        location.child(name).download(Path(folder) / name)
    return len(wanted)


def trial_curves(experiment: Path, board: list[dict]) -> list[TrialCurve]:
    """Every leaderboard trial's validation MSE by epoch, from Ray's result.json in its trial folder."""
    from balm_tune.figures import TrialCurve

    status = {row["trial_id"]: row for row in board}
    found = {}
    for path in experiment.glob("*/result.json"):
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


def _baselines(summary: dict) -> str:
    """The baselines (core.baselines) on the same windows as the winner's metrics, from summary.json."""
    from core.baselines import BASELINES

    return "; ".join(
        f"{BASELINES[name]}: test MSE {scores['test']['mse']:.6g}, MAE {scores['test']['mae']:.6g}"
        for name, scores in summary["baselines"].items()
    )


def _read_leaderboard(experiment: Path) -> list[dict]:
    path = experiment / "leaderboard.csv"
    if not experiment.is_dir():
        raise ReportError(f"{experiment}: no such experiment folder")
    if not path.is_file() or not (experiment / SPACE_COPY).is_file():
        raise ReportError(
            f"{experiment}: not a finished balm_tune experiment (expected leaderboard.csv and {SPACE_COPY}; "
            f"an interrupted search is finished with --resume)"
        )
    with open(path, newline="") as handle:
        return [row for row in csv.DictReader(handle) if row.get("kind", "trial") == "trial"]  # baselines: summary


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _index_html(
    experiment: Path,
    board: list[dict],
    summary: dict,
    importances: Importances,
    pictures: list[Path],
    val_windows: str,
    test_windows: str,
    baseline: str,
) -> str:
    e = html.escape
    lines = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(experiment.name)}: balm_tune report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
        "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "img{max-width:100%;border:1px solid #eee;margin:0.5em 0}</style>",
        "</head><body>",
        f"<h1>Search {e(experiment.name)}</h1>",
    ]
    outcomes = ", ".join(f"{n} {s}" for s, n in summary.get("outcomes", {}).items())
    lines.append(f"<p>{len(board)} trials{f' ({e(outcomes)})' if outcomes else ''}. Selection on validation only.</p>")
    if "winner" in summary:
        w, test = summary["winner"], summary.get("test", {})
        lines.append(
            f"<p>Winner <b>{e(str(w['trial_id']))}</b>: validation MSE {w['best_val_mse']:.6g}, "
            f"MAE {w['best_val_mae']:.6g} ({e(val_windows)}); test MSE {test.get('test_mse', math.nan):.6g}, "
            f"MAE {test.get('test_mae', math.nan):.6g} ({e(test_windows)}; test data used for the winner only). "
            f"{e(baseline)}.</p>"
        )
    else:
        lines.append("<p>No trial finished successfully: no winner, no forecasts.</p>")
    lines.append(f"<p>{e(importances.line())}</p>")
    for picture in pictures:
        lines.append(f'<p><img src="{e(picture.name)}" alt="{e(picture.stem)}"></p>')
    lines.append("<h2>Leaderboard (leaderboard.csv, best first)</h2>")
    lines.append("<table><tr>" + "".join(f"<th>{e(k)}</th>" for k in board[0]) + "</tr>" if board else "<table>")
    for row in board:
        lines.append("<tr>" + "".join(f"<td>{e(_cell(k, v))}</td>" for k, v in row.items()) + "</tr>")
    lines += ["</table>", "</body></html>", ""]
    return "\n".join(lines)


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
    p = argparse.ArgumentParser(prog="python -m balm_tune.report", description=__doc__.splitlines()[0])
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
    """Fetch a remote experiment's inputs into <out>/<name>/, build the report there and upload it."""
    from balm_tune.storage import open_location
    from core.paths import writable_folder

    location = open_location(uri)
    if not location.child("leaderboard.csv").exists():
        raise ReportError(f"{uri}: not a finished balm_tune experiment (no leaderboard.csv there)")
    folder = writable_folder(out, "--out") / location.name
    fetch_inputs(location, folder, EXPORTED_INPUTS + TRIAL_INPUTS)
    return write_report(folder, location)


if __name__ == "__main__":
    sys.exit(main())
