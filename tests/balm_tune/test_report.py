"""The report every search ends with: real tiny search, real pictures read back, the rebuild CLI."""

import csv
import html
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.image import imread

from balm_tune import figures
from balm_tune.api import run_search
from balm_tune.experiment import JOURNAL as STUDY_FILE
from balm_tune.figures import TrialCurve
from balm_tune.forecasts import WINNER, WindowForecast, rebuild_winner, winner_forecasts
from balm_tune.importance import MIN_TRIALS
from balm_tune.report import ReportError, _cell, trial_curves, write_report
from core.baselines import BASELINES, Metrics, comparison, verdict
from core.config import ConfigError
from core.data import DataError
from core.significance import DieboldMariano
from tests.conftest import ETTH1, write_tiny_space

PICTURES = ("history.png", "curves.png", "forecasts.png")


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """A 4-trial search (2 epochs x 2 batches, ASHA grace 1): some trials finish, some are stopped."""
    folder = tmp_path_factory.mktemp("report")
    space = write_tiny_space(folder, budget={"num_samples": 4, "max_epochs": 2})
    return run_search(space, name="rep", storage=folder / "runs", max_train_batches=2, sampler_seed=1)


def _pictures(report) -> list:
    return sorted(p.name for p in report.glob("*.png"))


def test_every_search_ends_with_a_report_of_valid_pictures(search):
    report = search.experiment / "report"
    assert search.paths["report"] == report / "index.html"
    assert set(PICTURES) <= set(_pictures(report))
    for name in _pictures(report):
        image = imread(report / name)
        height, width = image.shape[:2]
        assert 250 <= height <= 3000 and 400 <= width <= 3000, (name, image.shape)
        assert image[..., :3].std() > 0.05, f"{name} is blank"


def test_index_html_shows_every_picture_and_every_trial_offline(search):
    page = (search.experiment / "report" / "index.html").read_text()
    assert sorted(re.findall(r'<img src="([^"]+)"', page)) == _pictures(search.experiment / "report")
    for trial_id in search.leaderboard["trial_id"]:
        assert f"<td>{trial_id}</td>" in page
    assert "<script" not in page and "http" not in page  # readable offline: no scripts, no remote links
    assert "evenly spaced of" in page and "test windows" in page  # the windows behind every metric


def test_importances_are_in_the_summary_or_the_reason_they_are_not(search):
    summary = json.loads((search.experiment / "summary.json").read_text())
    importances = summary["importances"]
    # 4 trials: fewer than MIN_TRIALS with a validation score -> a reason, no numbers
    assert importances["values"] == {} and importances["reason"]
    assert importances["reason"] in (search.experiment / "report" / "index.html").read_text()


def test_the_curves_hold_every_trial_with_its_epochs_and_outcome(search):
    curves = {c.trial_id: c for c in trial_curves(search.experiment, search.leaderboard.astype(str).to_dict("records"))}
    assert set(curves) == set(search.leaderboard["trial_id"])
    for row in search.leaderboard.itertuples():
        curve = curves[row.trial_id]
        assert curve.epochs == list(range(1, row.epochs_run + 1)) and curve.status == row.status
        assert min(curve.val_mse) == pytest.approx(row.best_val_mse)
    assert {c.ended for c in curves.values()} == {"finished", "stopped"}  # ASHA stopped some, drawn apart


def test_the_forecasts_are_the_exported_winners_in_the_datas_units(search):
    trainer = rebuild_winner(search.experiment)
    assert trainer.device.type == "cpu"
    windows = winner_forecasts(trainer, per_variable=2)
    csv = pd.read_csv(ETTH1)
    assert [w.variable for w in windows] == [v for v in csv.columns[1:] for _ in range(2)]
    for w in windows:
        row = int(np.flatnonzero(csv["date"] == w.first_date)[0])
        np.testing.assert_allclose(w.truth, csv[w.variable].to_numpy()[row : row + 24], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(w.forecasts[BASELINES["repeat_last"]], csv[w.variable].iloc[row - 1], rtol=1e-5)
        assert set(w.forecasts) == set(w.mse) == {WINNER, *BASELINES.values()} and w.mse[WINNER] > 0
    # the rebuilt model is the winner: its test MSE over every test window is the search's
    assert trainer.evaluate("test").mse == pytest.approx(search.test["test_mse"])


def test_the_cli_rebuilds_the_report(search, tmp_path):
    copy = tmp_path / "rep"
    shutil.copytree(search.experiment, copy)
    shutil.rmtree(copy / "report")
    run = subprocess.run([sys.executable, "-m", "balm_tune.report", str(copy)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"report: {copy / 'report' / 'index.html'}" in run.stdout
    assert _pictures(copy / "report") == _pictures(search.experiment / "report")


def test_a_rebuild_over_a_damaged_checkpoint_is_one_line_and_keeps_the_earlier_report(search, tmp_path):
    copy = tmp_path / "damaged" / search.experiment.name  # the study is named after the experiment folder
    shutil.copytree(search.experiment, copy)
    before = {name: (copy / "report" / name).read_bytes() for name in [*_pictures(copy / "report"), "index.html"]}
    whole = (copy / "checkpoint.pt").read_bytes()
    (copy / "checkpoint.pt").write_bytes(whole[: len(whole) // 2])
    run = subprocess.run([sys.executable, "-m", "balm_tune.report", str(copy)], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr[-2000:]
    assert f"error: checkpoint {copy / 'checkpoint.pt'}: cannot be read" in run.stderr
    after = {p.name: p.read_bytes() for p in (copy / "report").iterdir()}
    assert after == before and not list(copy.glob(".report*"))  # nor the half-built one left behind


def _with_value(text: bytes, column: str, value: str) -> bytes:
    """A CSV's text with `column` of its first row set to `value`."""
    rows = list(csv.DictReader(io.StringIO(text.decode())))
    rows[0][column] = value
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda text: b"\xff\xfe\x00garbage", "not a leaderboard CSV"),
        (lambda text: text[:7], "no column"),  # cut inside its header
        (lambda text: _with_value(text, "best_val_mse", "oops"), "line 2: best_val_mse 'oops' is not a number"),
    ],
    ids=["binary", "cut-header", "value"],
)
def test_a_damaged_leaderboard_is_named_in_one_line_and_the_earlier_report_is_kept(
    search, tmp_path, capsys, damage, message
):
    from balm_tune.report import main as report_main

    copy = tmp_path / search.experiment.name
    shutil.copytree(search.experiment, copy)
    before = {p.name: p.read_bytes() for p in (copy / "report").iterdir()}
    (copy / "leaderboard.csv").write_bytes(damage((copy / "leaderboard.csv").read_bytes()))
    with pytest.raises(ReportError, match=f"leaderboard.csv: {message}"):
        write_report(copy)
    assert report_main([str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {copy / 'leaderboard.csv'}: ") and err.count("\n") == 1, err
    assert {p.name: p.read_bytes() for p in (copy / "report").iterdir()} == before


def test_the_cli_builds_the_report_of_an_experiment_in_s3_and_uploads_it_beside(search, s3_endpoint, tmp_path):
    from balm_tune.storage import open_location

    location = open_location("s3://balm/reports/rep")
    for path in search.experiment.rglob("*"):  # the experiment as a search with --storage s3://... leaves it
        parts = path.relative_to(search.experiment).parts
        if path.is_file() and parts[0] != "report":
            location.child(*parts).upload(path)
    command = [sys.executable, "-m", "balm_tune.report", "s3://balm/reports/rep", "--out", str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **s3_endpoint})
    assert run.returncode == 0, run.stderr[-2000:]
    local = tmp_path / "rep" / "report"
    assert _pictures(local) == _pictures(search.experiment / "report")
    for name in [*_pictures(local), "index.html"]:
        assert location.child("report", name).read_bytes() == (local / name).read_bytes()
    missing = [sys.executable, "-m", "balm_tune.report", "s3://balm/reports/none", "--out", str(tmp_path)]
    run = subprocess.run(missing, capture_output=True, text=True, env={**os.environ, **s3_endpoint})
    assert (
        run.returncode == 2
        and run.stderr
        == "error: s3://balm/reports/none: not a finished balm_tune experiment (no leaderboard.csv there)\n"
    )


def test_a_persisted_study_with_enough_trials_adds_the_importance_picture(search, tmp_path):
    copy = tmp_path / "studied"
    shutil.copytree(search.experiment, copy)
    backend = optuna.storages.journal.JournalFileBackend(str(copy / STUDY_FILE))
    study = optuna.create_study(
        storage=optuna.storages.JournalStorage(backend), study_name="studied", sampler=optuna.samplers.RandomSampler(0)
    )

    def objective(t: optuna.Trial) -> float:  # the searched keys; the learning rate alone decides the value
        t.suggest_int("prompt_len", 2, 12)
        t.suggest_float("contrastive_weight", 0.0, 2.0)
        t.suggest_float("scale_factor", 0.25, 4.0, log=True)
        value = abs(np.log(t.suggest_float("learning_rate", 3e-4, 1e-2, log=True) / 2e-3))
        t.report(value, step=1)  # as every trial of a search reports each epoch
        return value

    trials = 2 * MIN_TRIALS
    study.optimize(objective, n_trials=trials)
    report = write_report(copy)
    assert next(iter(report.importances.values)) == "learning_rate"
    assert (
        report.folder / "importances.png" in report.figures and imread(report.folder / "importances.png").shape[0] > 100
    )
    page = report.index.read_text()
    assert '<img src="importances.png"' in page and f"over {trials} trials, each by its best val mse" in page
    assert "the last all of them reached): learning_rate" in page
    (copy / STUDY_FILE).unlink()  # a rebuild without the study keeps no stale importance picture
    assert write_report(copy).importances.values == {} and not (report.folder / "importances.png").exists()


def test_a_changed_data_file_is_refused_before_the_model_is_built(search, tmp_path):
    copy = tmp_path / "changed"
    shutil.copytree(search.experiment, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["extras"]["data_sha256"] = "0" * 64
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(
        DataError, match=r"ETTh1.csv: sha256 f18de3ad269c\.\.\. differs from the searched file's 000000000000"
    ):
        rebuild_winner(copy)


def test_an_experiment_of_an_earlier_version_gives_one_line_not_a_traceback(search, tmp_path):
    copy = tmp_path / "older"
    shutil.copytree(search.experiment, copy)
    summary = json.loads((copy / "summary.json").read_text())
    del summary["windows"]  # summary.json before window counts were recorded
    (copy / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ReportError, match="summary.json: no window counts .* earlier balm_tune"):
        write_report(copy)
    checkpoint = torch.load(copy / "checkpoint.pt", weights_only=True)
    del checkpoint["scheduler"]["scheduler"]  # a checkpoint before schedules were saved
    torch.save(checkpoint, copy / "checkpoint.pt")
    with pytest.raises(ConfigError, match="no learning-rate schedule state"):
        rebuild_winner(copy)
    renamed = tmp_path / "renamed"  # exported before train and search shared one set of file names
    shutil.copytree(search.experiment, renamed)
    (renamed / "config.yaml").rename(renamed / "best_config.yaml")
    (renamed / "checkpoint.pt").rename(renamed / "best_checkpoint.pt")
    with pytest.raises(ReportError, match=r"exported by an earlier balm_tune \(best_config.yaml, best_checkpoint.pt\)"):
        write_report(renamed)


def test_leaderboard_cells_keep_ids_as_written_and_shorten_floats():
    assert _cell("trial_id", "1203e807") == "1203e807"  # a Ray trial id that parses as a float
    assert _cell("learning_rate", "0.008236400756555733") == "0.008236" and _cell("prompt_len", "12") == "12"


def test_a_folder_that_is_not_an_experiment_gives_one_line_and_exit_2(tmp_path):
    (tmp_path / "notes.txt").write_text("not an experiment")
    run = subprocess.run([sys.executable, "-m", "balm_tune.report", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and run.stderr.startswith(f"error: {tmp_path}: not a finished balm_tune")
    assert list(tmp_path.iterdir()) == [tmp_path / "notes.txt"]  # nothing written


# --- the page as a person sees it: headless Chromium at 1400 px ------------------------------------------------

VIEWPORT = (1400, 1000)
MEASURE = """<pre id="measure" hidden></pre><script>
window.addEventListener("load", () => {
  const page = document.documentElement;
  document.getElementById("measure").textContent = JSON.stringify({
    scrollWidth: page.scrollWidth, clientWidth: page.clientWidth, innerWidth: window.innerWidth,
    images: [...document.images].map(i => [i.getAttribute("src"), i.naturalWidth, i.naturalHeight]),
    boxes: [...document.querySelectorAll("table")].map(t => [t.scrollWidth, t.parentElement.clientWidth]),
    text: document.body.innerText,
  });
});
</script>"""


def _chromium(*arguments: str, profile) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium): the page is not rendered")
    command = [
        binary,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        f"--user-data-dir={profile}",
        f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
        "--virtual-time-budget=5000",
        *arguments,
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    return run


def measure_page(report, tmp_path) -> dict:
    """What Chromium lays out after window load: widths, every image's natural size, the visible text;
    measured on a copy of the report into which a script is injected (the page itself has none)."""
    copy = tmp_path / "rendered"
    shutil.copytree(report, copy)
    page = (copy / "index.html").read_text()
    assert page.count("</body>") == 1
    (copy / "index.html").write_text(page.replace("</body>", MEASURE + "</body>"))
    dom = _chromium("--dump-dom", (copy / "index.html").as_uri(), profile=tmp_path / "profile").stdout
    found = re.search(r'<pre id="measure"[^>]*>(.*?)</pre>', dom, re.S)
    assert found and found.group(1), f"the measuring script wrote nothing: {dom[-1000:]}"
    return json.loads(html.unescape(found.group(1)))


def _verdicts(summary: dict) -> list[str]:
    """The lines `python -m balm_tune.search` prints for the baselines (balm_tune.closing)."""
    winner, test = summary["winner"], summary["test"]
    scores = {
        "val": Metrics(winner["best_val_mse"], winner["best_val_mae"], winner["val_windows"]),
        "test": Metrics(test["test_mse"], test["test_mae"], test["test_windows"]),
    }
    lines = []
    for name in BASELINES:
        baseline = summary["baselines"][name]
        tests = {"test": DieboldMariano(**baseline["significance_on_test"])}
        lines.append(
            comparison(name, scores, {s: Metrics(**baseline[s]) for s in ("val", "test")}, "the winner", tests)
        )
    return lines


def test_in_chromium_at_1400px_the_page_fits_every_picture_loads_and_the_verdict_shows(search, tmp_path):
    report = search.experiment / "report"
    seen = measure_page(report, tmp_path)
    assert seen["innerWidth"] == VIEWPORT[0]
    # no sideways scrolling: the page is no wider than the window (less its vertical scroll bar)
    assert seen["scrollWidth"] <= seen["clientWidth"] <= VIEWPORT[0], seen["scrollWidth"]
    assert all(width <= room for width, room in seen["boxes"]), seen["boxes"]  # no table scrolls in its box
    assert sorted(src for src, *_ in seen["images"]) == _pictures(report)
    assert all(width > 0 and height > 0 for _, width, height in seen["images"]), seen["images"]
    summary = json.loads((report.parent / "summary.json").read_text())
    text = seen["text"]
    for line in _verdicts(summary):
        assert line in text
    assert "the winner beats it on val" in text or "the winner does NOT beat it on val" in text
    for label in BASELINES.values():  # each baseline's row beside the winner's
        assert re.search(rf"^{re.escape(label)}\t[\d.]+\t", text, re.M), label
    assert re.search(rf"^winner {summary['winner']['trial_id']}\t[\d.]+\t", text, re.M)


def test_the_page_is_compact_ids_cut_baselines_and_verdict_beside_the_winner(search):
    page = (search.experiment / "report" / "index.html").read_text()
    summary = json.loads((search.experiment / "summary.json").read_text())
    board = search.leaderboard
    for node in set(board["node_id"]):  # 56-character node ids: 8 characters, the whole id in a tooltip
        assert f'title="{node}">{node[:8]}&hellip;' in page and f">{node}<" not in page
    headers = re.findall(r"<th>([^<]*(?:<wbr>[^<]*)*)</th>", page)
    assert "kind" not in headers and "outcome" not in headers  # every row a trial; its status says how it ended
    assert "white-space:nowrap" in page  # status cells on one line
    winner = summary["winner"]["trial_id"]
    assert f'<tr class="winner"><td>{winner}</td>' in page
    for line in _verdicts(summary):
        assert html.escape(line) in page
    for name, label in BASELINES.items():
        row = re.search(rf"<tr><td>{re.escape(html.escape(label))}</td>(.*?)</tr>", page).group(1)
        val, test = re.findall(r'<td class="(?:yes|no)">([^<]*)</td>', row)
        assert val == ("yes" if summary["baselines"][name]["beats_on_val"] else "NO")
        tested = DieboldMariano(**summary["baselines"][name]["significance_on_test"])
        word = verdict(summary["test"]["test_mse"], summary["baselines"][name]["test"]["mse"], tested)
        shown = {"beats": "yes", "does NOT beat": "NO"}.get(word, "no significant difference")
        assert html.unescape(test) == f"{shown} ({tested.p_text()})"  # the test's p-value beside the verdict


def _drawn(monkeypatch, draw, *args) -> Figure:
    """The Figure a figures function draws (its PNG not written)."""
    kept = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: kept.append(fig))
    draw(*args, Path("unused.png"))
    (fig,) = kept
    fig.canvas.draw()
    return fig


def _legend(fig: Figure) -> list[str]:
    legend = fig.axes[0].get_legend()
    return [] if legend is None else [t.get_text() for t in legend.get_texts()]


def _curve(trial_id, order, status, values) -> TrialCurve:
    return TrialCurve(trial_id, order, status, list(range(1, len(values) + 1)), values, min(values))


def test_legends_list_only_what_is_drawn_and_the_winner_stands_out_of_muted_trials(monkeypatch):
    trials = [_curve(f"t{i:02d}", i, "finished", [1.0 + i / 50, 0.9 + i / 50, 0.8 + i / 50]) for i in range(14)]
    trials += [_curve("s1", 14, "pruned by asha", [1.3]), _curve("s2", 15, "pruned by asha", [1.2, 1.1])]
    winner = "t00"
    fig = _drawn(monkeypatch, figures.curves, trials, winner, "all 10 validation windows")
    assert _legend(fig) == ["finished", "pruned by asha", f"winner {winner}"]  # no "failed": none failed
    lines = [line for line in fig.axes[0].get_lines() if len(line.get_xdata()) > 1]
    thick = [line for line in lines if line.get_linewidth() >= 2.5]
    assert len(thick) == 1 and to_rgb(thick[0].get_color()) == to_rgb(figures.WINNER_COLOR)
    for line in lines:  # the 15 others: thin and grey, no cycle of 16 colours
        if line is not thick[0]:
            red, green, blue = to_rgb(line.get_color())
            assert line.get_linewidth() <= 1.0 and red == green == blue
    fig = _drawn(monkeypatch, figures.history, trials, winner, "all 10 validation windows")
    assert _legend(fig) == ["finished", "pruned by asha", "best so far", f"winner {winner}"]

    failed = [*trials, _curve("f1", 16, "failed", [2.0]), TrialCurve("f2", 17, "failed", [], [], math.nan)]
    assert _legend(_drawn(monkeypatch, figures.curves, failed, None, "w")) == ["finished", "pruned by asha", "failed"]
    finished = [t for t in trials if t.status == "finished"]
    assert _legend(_drawn(monkeypatch, figures.history, finished, None, "w")) == ["finished", "best so far"]


def test_forecast_panels_say_their_window_and_scores_in_legible_text_inside_the_picture(monkeypatch):
    rng = np.random.default_rng(0)
    methods = [WINNER, *BASELINES.values()]
    scale = {"HUFL": 1.0, "OT": 1.0, "MW": 250_000.0}  # MW: tick labels seven characters wide
    windows = [
        WindowForecast(
            variable=variable,
            first_date=f"2018-02-{day:02d} 00:00:00",
            history=scale[variable] * rng.normal(size=96),
            truth=scale[variable] * rng.normal(size=24),
            forecasts={m: scale[variable] * rng.normal(size=24) for m in methods},
            mse={m: float(v) for m, v in zip(methods, [0.0111, 0.0418, 0.00867])},
        )
        for variable in scale
        for day in (10, 20, 28)
    ]
    fig = _drawn(monkeypatch, figures.forecasts, windows, "caption")
    canvas = fig.bbox
    for ax in fig.axes:
        title = ax.title if ax.title.get_text() else ax._left_title
        assert "MSE" in title.get_text() and "repeat-last 0.0418" in title.get_text()
        assert title.get_fontsize() >= 10  # points at the saved size
        box = title.get_window_extent()
        assert canvas.x0 <= box.x0 and box.x1 <= canvas.x1, f"{title.get_text()!r} runs off the picture"
    assert min(t.get_fontsize() for t in fig.legends[0].get_texts()) >= 10
    # each panel with all its text (title, tick labels, axis labels) inside the picture, none on another
    panels = [ax.get_tightbbox() for ax in fig.axes]
    for i, box in enumerate(panels):
        assert canvas.x0 <= box.x0 and box.x1 <= canvas.x1 and canvas.y0 <= box.y0 and box.y1 <= canvas.y1, i
        assert not any(box.overlaps(other) for other in panels[i + 1 :]), f"panel {i} overlaps another"
    legend = fig.legends[0].get_window_extent()
    assert not any(legend.overlaps(box) for box in panels)
