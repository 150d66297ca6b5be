"""The paper's table in one command: one search per dataset (a space) and horizon, ending in Table 1.

    python -m balm_tune.campaign --space search_spaces/paper_etth1.yaml --space search_spaces/paper_etth2.yaml \\
        --horizons 96 192 336 720 --final-seeds 3 --address auto --name table1
    python -m balm_tune.campaign --name table1 --resume      # after a crash, Ctrl-C or SIGTERM
    python -m balm_tune.campaign --space ... --dry-run       # check every cell, print the plan and its cost

Each cell (space, horizon) is a `python -m balm_tune.search` with the space's values for that horizon
(`--set pred_len=H`), its winner retrained on the --final-seeds seeds and, where the space enqueues a config
(a preset's official configuration), that config retrained on the same seeds (`--official`). Cells run one
after another, each with the whole cluster, or --concurrent N at once on one Ray cluster, where each search
runs at most 1/N of the trials the cluster holds. Any other flag of the search (--num-samples, --set,
--gpus-per-trial, ...) is passed to every search. Every cell is checked (space, data file, backbone, the
horizon's values) before the first starts. Results (docs/campaign.md):

    <storage>/<name>/
      campaign.json                  the manifest: every cell's experiment, state and figures
      table.md  table.csv  table.tex the table: one row per dataset and horizon, an average per dataset
      report/index.html              the table and a link to every search's own report
      logs/<cell>.log                each search's console
      <cell>/                        each search's experiment (balm_tune.experiment)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from core.cli import Parser, exit_with
from core.errors import BalmError

if TYPE_CHECKING:
    from balm_tune.api import SearchPlan
    from balm_tune.experiment import Experiment

MANIFEST, LOGS = "campaign.json", "logs"
TABLES = {"md": "table.md", "csv": "table.csv", "tex": "table.tex"}
PENDING, RUNNING, DONE, FAILED, INTERRUPTED = "pending", "running", "done", "failed", "interrupted"
OWNED = ("--official", "--max-concurrent-trials", "--dry-run")  # search flags the campaign sets itself
STOP_WAIT_S = 300  # how long a stopped search may take to save its trials before it is killed
PROGRESS_S = 60  # how often the latest progress line of each running search is repeated (when it changed)
PROGRESS = re.compile(r"^\d\d:\d\d:\d\d \d+ trials: .*$", re.MULTILINE)  # balm_tune.console's table head


class CampaignError(BalmError):
    """A campaign that cannot start or continue: one line naming the cell, flag or file."""


@dataclass
class Cell:
    """One search of the campaign: a space at one horizon."""

    name: str  # its experiment's name: <space file stem>-<horizon>
    space: str
    horizon: int
    state: str = PENDING
    dataset: str = ""  # the data file's stem, set when the cell is checked
    seconds: float | None = None
    returncode: int | None = None
    figures: dict[str, dict] | None = None  # table column -> balm_tune.table.Figure as a dict


@dataclass
class Campaign:
    """The campaign folder's owner: its manifest, tables, report and logs, and each cell's experiment
    (`storage`/<name>/<cell>, mirrored in `folder`/<cell>)."""

    experiment: Experiment  # the campaign's own location and local folder
    cells: list[Cell]
    final_seeds: int = 0
    ablations: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)  # the search flags passed to every cell

    @property
    def folder(self) -> Path:
        return self.experiment.folder

    def cell_experiment(self, cell: Cell) -> Experiment:
        from balm_tune.experiment import Experiment

        return Experiment.open(self.experiment.location, cell.name, self.folder)

    def search_argv(self, cell: Cell, official: bool, resume: bool) -> list[str]:
        """The cell's `python -m balm_tune.search` arguments (without the cluster's share)."""
        argv = ["--space", cell.space, "--set", f"pred_len={cell.horizon}", "--name", cell.name]
        argv += ["--storage", self.experiment.uri, "--out", str(self.folder), "--final-seeds", str(self.final_seeds)]
        argv += ["--ablations", *self.ablations] if self.ablations else []
        argv += ["--official"] if official else []
        argv += ["--resume"] if resume else []
        return argv + self.flags

    def log(self, cell: Cell) -> Path:
        return self.folder / LOGS / f"{cell.name}.log"

    @property
    def report(self) -> Path:
        from balm_tune.experiment import REPORT, REPORT_INDEX

        return self.folder / REPORT / REPORT_INDEX

    def tables(self) -> dict[str, Path]:
        return {kind: self.folder / name for kind, name in TABLES.items()}

    def write(self) -> None:
        """The manifest (atomically), published to the storage with the tables and the report."""
        from core.atomic import write_atomic

        data = {
            "experiment": self.experiment.uri,
            "final_seeds": self.final_seeds,
            "ablations": self.ablations,
            "flags": self.flags,
            "cells": [dataclasses.asdict(cell) for cell in self.cells],
        }
        write_atomic(self.folder / MANIFEST, json.dumps(data, indent=1))
        written = [p for p in (self.folder / MANIFEST, *self.tables().values(), self.report) if p.is_file()]
        self.experiment.publish(*written)

    @classmethod
    def read(cls, experiment: Experiment) -> Campaign:
        path = experiment.folder / MANIFEST
        if not path.is_file() and experiment.mirrored and experiment.location.child(MANIFEST).exists():
            experiment.fetch(MANIFEST)
        if not path.is_file():
            raise CampaignError(
                f"--resume: no campaign at {experiment.uri} (missing {MANIFEST}); check --storage/--name"
            )
        try:
            data = json.loads(path.read_text())
            cells = [Cell(**cell) for cell in data["cells"]]
            return cls(experiment, cells, data["final_seeds"], data["ablations"], data["flags"])
        except (ValueError, KeyError, TypeError) as err:
            raise CampaignError(f"{path}: not a campaign manifest of this balm_tune ({err})") from None


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """The campaign's own flags, and the search flags passed to every cell (checked by the search's parser)."""
    p = Parser(
        prog="python -m balm_tune.campaign", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--space", action="append", default=[], metavar="YAML", help="a search space: one dataset (repeatable)"
    )
    p.add_argument(
        "--horizons",
        nargs="+",
        type=int,
        metavar="H",
        help="pred_len values of every space (default: each space's `horizons`, else its base pred_len)",
    )
    p.add_argument(
        "--final-seeds",
        type=int,
        default=0,
        metavar="N",
        help="retrain each winner (and the official config) on N more seeds",
    )
    p.add_argument(
        "--ablations",
        nargs="+",
        default=[],
        metavar="ARM",
        help="no_llm, llm2attn, random_llm: retrained beside each winner",
    )
    p.add_argument("--address", help="Ray cluster to join ('auto' or HOST:PORT); omit for a local Ray")
    p.add_argument(
        "--concurrent", type=int, default=1, metavar="N", help="cells at once on one Ray cluster (default 1)"
    )
    p.add_argument("--storage", default="runs", help="a folder or URI (s3://...) every node reaches (default: runs/)")
    p.add_argument("--out", help="local folder for the results when --storage is a URI (default: runs/)")
    p.add_argument("--name", help="campaign name (default: campaign-<timestamp>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the campaign --name: skip finished cells, continue the running one",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="check every cell, print the plan and an estimate, start nothing"
    )
    args, flags = p.parse_known_args(argv)
    _check_flags(p, flags)
    if args.concurrent < 1:
        p.error(f"--concurrent: got {args.concurrent}, expected an integer >= 1")
    return args, flags


def _check_flags(p: Parser, flags: list[str]) -> None:
    """The search flags are the search's own (its parser answers a bad one in one line), minus those the
    campaign sets for each cell."""
    from balm_tune.search import search_parser

    owned = [f for f in flags if f.split("=")[0] in OWNED]
    if owned:
        p.error(f"{owned[0]}: the campaign sets it for every cell itself")
    search = search_parser()
    search.prog = f"{p.prog} (a search flag)"
    parsed = search.parse_args(flags)
    if any(pair.split("=")[0].strip() == "pred_len" for pair in parsed.set):
        p.error("--set pred_len: each cell's horizon comes from --horizons (or the space's horizons)")


def plan_cells(spaces: list[str], horizons: list[int] | None) -> list[Cell]:
    """One cell per space and horizon, in the order given."""
    from balm_tune.space import load_space

    if not spaces:
        raise CampaignError("--space: give at least one search space (one per dataset)")
    cells = []
    for path in spaces:
        space = load_space(path)
        for horizon in horizons or sorted(space.horizons) or [space.base.pred_len]:
            cells.append(Cell(f"{Path(path).stem}-{horizon}", str(path), horizon))
    names = [c.name for c in cells]
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise CampaignError(f"--space: two cells would both be called {twice}; give each space file its own name")
    return cells


def open_campaign(args: argparse.Namespace, flags: list[str]) -> Campaign:
    """A new campaign from the flags, or with --resume the saved one (whose cells and flags win; a flag
    that would change them is refused)."""
    from balm_tune.api import check_final_seeds
    from balm_tune.experiment import Experiment
    from balm_tune.space import check_ablations
    from core.paths import check_name

    if args.resume and not args.name:
        raise CampaignError("--resume needs --name of the campaign to continue")
    name = check_name(args.name) if args.name else f"campaign-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment = Experiment.open(args.storage, name, args.out)
    if not args.resume:
        check_final_seeds(args.final_seeds)
        if experiment.taken():
            raise CampaignError(f"{experiment.taken()} exists; continue it with --resume or choose another --name")
        cells = plan_cells(args.space, args.horizons)
        return Campaign(experiment, cells, args.final_seeds, check_ablations(args.ablations), flags)
    campaign = Campaign.read(experiment)
    asked = {
        "--space": args.space,
        "--horizons": sorted(set(args.horizons or [])),
        "search flags": flags,
        "--ablations": args.ablations,
    }
    saved = {
        "--space": list(dict.fromkeys(c.space for c in campaign.cells)),
        "--horizons": sorted({c.horizon for c in campaign.cells}),
        "search flags": campaign.flags,
        "--ablations": campaign.ablations,
    }
    for flag, value in asked.items():
        if value and value != saved[flag]:
            raise CampaignError(f"--resume continues {name} as saved in {MANIFEST}; it cannot change {flag} ({value})")
    if args.final_seeds and args.final_seeds != campaign.final_seeds:
        raise CampaignError(f"--resume continues {name} as saved in {MANIFEST}; it cannot change --final-seeds")
    return campaign


@dataclass
class Checked:
    """A cell checked by prepare_search: its plan, its search arguments and its share of the cluster."""

    cell: Cell
    plan: SearchPlan
    argv: list[str]
    held: int  # trials the cluster holds at once for this cell's space


def check_cells(campaign: Campaign, address: str | None) -> list[Checked]:
    """Every unfinished cell through the search's own checks (prepare_search), before any starts."""
    from balm_tune.api import check_cluster, prepare_search
    from balm_tune.search import search_options, search_parser
    from balm_tune.space import load_space

    checked = []
    for cell in campaign.cells:
        if cell.state == DONE:
            continue
        resume = campaign.cell_experiment(cell).taken() is not None
        argv = campaign.search_argv(cell, official=bool(load_space(cell.space).enqueue), resume=resume)
        argv += ["--address", address] if address else []
        try:
            args = search_parser().parse_args(argv)
            plan = prepare_search(args.space, **search_options(args))
            held = check_cluster(plan, address)
        except BalmError as err:
            raise CampaignError(f"cell {cell.name} ({cell.space}, H={cell.horizon}): {err}") from None
        cell.dataset = plan.data.path.stem
        checked.append(Checked(cell, plan, argv, held))
    return checked


def print_plan(campaign: Campaign, checked: list[Checked], concurrent: int, address: str | None) -> None:
    done = [c for c in campaign.cells if c.state == DONE]
    print(
        f"campaign {campaign.experiment.name}: {len(campaign.cells)} cells ({len(done)} done), "
        f"final seeds {campaign.final_seeds}, ablations {', '.join(campaign.ablations) or 'none'}; "
        f"results in {campaign.folder}"
    )
    for cell in done:
        print(f"  {cell.name}: done, skipped")
    for item in checked:
        space = item.plan.space
        official = "the official config retrained" if "--official" in item.argv else "no enqueued config"
        print(
            f"  {item.cell.name}: {item.cell.dataset} H={item.cell.horizon}, {space.num_samples} trials x up to "
            f"{space.max_epochs} epochs, {space.cpus_per_trial:g} CPU {space.gpus_per_trial:g} GPU per trial; "
            f"{official}{'; continued (--resume)' if '--resume' in item.argv else ''}"
        )
    budgets = {item.plan.space.path: item.plan.space.gpu_budget.strip() for item in checked}
    for path, budget in budgets.items():
        if budget:
            print(f"  GPU budget of {path}: {budget}")
    if concurrent > 1 and checked:
        held = min(item.held for item in checked)
        print(
            f"  {concurrent} cells at once on one Ray cluster ({address or 'a local Ray this campaign starts'}): "
            f"each search runs at most {share(held, concurrent)} of the {held} trials the cluster holds at once "
            "(--max-concurrent-trials), so the cells divide it evenly"
        )


def share(held: int, concurrent: int) -> int:
    """Trials at once for each of `concurrent` searches on a cluster that holds `held` (at least one each)."""
    return max(1, held // concurrent)


def estimate(checked: list[Checked], final_seeds: int, concurrent: int) -> str:
    """The dry run's cost line: each cell's search measured here (balm_tune.estimate), summed."""
    from balm_tune.estimate import measure, retrains

    low = high = 0.0
    for item in checked:
        plan = item.plan
        searches = 1 + len(plan.ablations) * plan.ablation_search
        measured = measure(plan.space, plan.data, item.held, retrains(plan, final_seeds), searches)
        low, high = low + measured.seconds(measured.epochs[0]), high + measured.seconds(measured.epochs[1])
    at_once = f"; {concurrent} at once divide the machine, so the total stays about the same" if concurrent > 1 else ""
    return (
        f"estimate: {low / 60:.1f} to {high / 60:.1f} min for {len(checked)} cells on this machine (each cell's "
        f"steps measured here, its retrainings included; Ray's start-ups not counted{at_once})"
    )


def run_cells(campaign: Campaign, checked: list[Checked], concurrent: int, address: str | None) -> None:
    """Run the checked cells, `concurrent` at once, each a search process; the manifest, the tables and the
    report are rewritten after every cell. KeyboardInterrupt (Ctrl-C, SIGTERM) stops the running searches
    as Ctrl-C stops one search (their trials saved for --resume) and is raised again."""
    waiting, running, said, last = list(checked), {}, {}, time.monotonic()
    held = min((item.held for item in checked), default=1)
    try:
        while waiting or running:
            if time.monotonic() - last > PROGRESS_S:
                last = time.monotonic()
                for item, _, _ in running.values():
                    said[item.cell.name] = _progress(campaign, item.cell, said.get(item.cell.name))
            while waiting and len(running) < concurrent:
                item = waiting.pop(0)
                extra = ["--max-concurrent-trials", str(share(held, concurrent))] if concurrent > 1 else []
                running[item.cell.name] = (item, _start(campaign, item, extra), time.perf_counter())
            time.sleep(1)
            for name, (item, process, started) in list(running.items()):
                if process.poll() is not None:
                    del running[name]
                    _finished(campaign, item.cell, process.returncode, time.perf_counter() - started)
    except KeyboardInterrupt:
        for _item, process, _ in running.values():
            process.send_signal(signal.SIGTERM)  # the search stops as on Ctrl-C (balm_tune.api.stop_on_termination)
        for item, process, started in running.values():
            try:
                process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                process.kill()
            item.cell.state, item.cell.seconds = INTERRUPTED, time.perf_counter() - started
        campaign.write()
        raise


def _progress(campaign: Campaign, cell: Cell, said: str | None) -> str | None:
    """Print the latest progress line of a running cell's search when it differs from what was `said`."""
    lines = PROGRESS.findall(campaign.log(cell).read_text(errors="replace"))
    if lines and lines[-1] != said:
        print(f"  {cell.name}: {lines[-1]}", flush=True)
        return lines[-1]
    return said


def _start(campaign: Campaign, item: Checked, extra: list[str]) -> subprocess.Popen:
    """The cell's search as a process of its own session (a Ctrl-C reaches the campaign only, which stops
    each search once), its console in logs/<cell>.log."""
    item.cell.state = RUNNING
    campaign.write()
    log = campaign.log(item.cell)
    log.parent.mkdir(parents=True, exist_ok=True)
    position = campaign.cells.index(item.cell) + 1
    print(f"[{position}/{len(campaign.cells)}] {item.cell.name}: searching ... (console: {log})", flush=True)
    with log.open("a") as out:
        command = [sys.executable, "-m", "balm_tune.search", *item.argv, *extra]
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _finished(campaign: Campaign, cell: Cell, returncode: int, seconds: float) -> None:
    """A cell's search has ended: its state and figures in the manifest, the tables and report rebuilt."""
    cell.returncode, cell.seconds = returncode, seconds
    cell.state = DONE if returncode == 0 else INTERRUPTED if returncode == 130 else FAILED
    position = campaign.cells.index(cell) + 1
    if cell.state == DONE:
        row = cell_row(campaign, cell)
        cell.figures = {name: dataclasses.asdict(f) for name, f in row.figures.items()}
        tuned, linear = row.figures["tuned"], row.figures.get("linear")
        versus = f", linear {linear.mse:.4f}" if linear else ""
        said = f"test mse {tuned.mse:.4f} ({tuned.seeds} seed(s)){versus}"
    else:
        said = f"{cell.state} (exit {returncode}); see {campaign.log(cell)}"
    print(f"[{position}/{len(campaign.cells)}] {cell.name}: {said} in {seconds:.0f}s", flush=True)
    write_tables(campaign)


def cell_row(campaign: Campaign, cell: Cell):
    """The table row of a finished cell, from its summary.json."""
    from balm_tune.space import load_space
    from balm_tune.table import summary_row

    experiment = campaign.cell_experiment(cell)
    summary = experiment.read_summary()
    if not cell.dataset:
        cell.dataset = Path(summary.provenance["data_file"]).stem
    paper = load_space(cell.space).paper.get(cell.horizon)
    return summary_row(cell.dataset, cell.horizon, summary, paper, str(experiment.folder))


def write_tables(campaign: Campaign) -> list:
    """table.md, table.csv, table.tex and report/index.html from the finished cells; the manifest."""
    from balm_tune.table import to_csv, to_latex, to_markdown, with_averages
    from core.atomic import write_atomic

    rows = with_averages([cell_row(campaign, c) for c in campaign.cells if c.state == DONE])
    if rows:
        paths = campaign.tables()
        for kind, text in (("md", to_markdown(rows)), ("csv", to_csv(rows)), ("tex", to_latex(rows))):
            write_atomic(paths[kind], text)
    write_atomic(campaign.report, report_html(campaign, rows))
    campaign.write()
    return rows


def report_html(campaign: Campaign, rows: list) -> str:
    """The campaign's page: the table, then every cell with its state and a link to its search's report."""
    import html
    import os

    from balm_tune.experiment import REPORT, REPORT_INDEX
    from balm_tune.report import STYLE
    from balm_tune.table import to_html

    name = html.escape(campaign.experiment.name)
    items = []
    for cell in campaign.cells:
        target = campaign.cell_experiment(cell).path(REPORT, REPORT_INDEX)
        link = os.path.relpath(target, campaign.report.parent)
        shown = (
            f"<a href='{html.escape(link)}'>{html.escape(cell.name)}</a>"
            if target.is_file()
            else html.escape(cell.name)
        )
        took = f", {cell.seconds:.0f}s" if cell.seconds is not None else ""
        if cell.figures:
            tuned = cell.figures["tuned"]
            took += f"; test figures over {tuned['windows']:,} test windows, tuned on {tuned['seeds']} seed(s)"
        items.append(f"<li>{shown}: {html.escape(cell.dataset)} H={cell.horizon}, {cell.state}{took}</li>")
    table = to_html(rows) if rows else "<p>No cell has finished yet.</p>"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>campaign {name}</title>"
        f"<style>{STYLE}tr.average td{{border-top:2px solid #888}}</style></head><body>"
        f"<h1>Campaign {name}</h1><h2>Table</h2>{table}<h2>Cells</h2><ul>{''.join(items)}</ul></body></html>\n"
    )


def main(argv: list[str] | None = None) -> int:
    args, flags = parse_args(argv)  # before torch and Ray are imported: --help answers at once
    campaign = None
    try:
        campaign = open_campaign(args, flags)
        checked = check_cells(campaign, args.address)
        print_plan(campaign, checked, args.concurrent, args.address)
        if args.dry_run:
            if args.address in (None, "local"):
                print(estimate(checked, campaign.final_seeds, args.concurrent))
            print(f"dry run: {len(checked)} cells checked, nothing started")
            return 0
        campaign.folder.mkdir(parents=True, exist_ok=True)
        campaign.write()
        _stop_on_termination()
        with _shared_ray(args.address, args.concurrent) as address:
            run_cells(campaign, [dataclasses.replace(c, argv=[*c.argv, *_address(c, address)]) for c in checked],
                      args.concurrent, address)  # fmt: skip
    except BalmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if campaign is None:
            return 130
        print(f"interrupted: the running searches are saved; continue with --name {campaign.experiment.name} --resume")
        return 130
    return _closing(campaign)


def _address(item: Checked, address: str | None) -> list[str]:
    """--address for a cell when the campaign started the shared Ray (one given on the command line is in argv)."""
    return ["--address", address] if address and "--address" not in item.argv else []


@contextmanager
def _shared_ray(address: str | None, concurrent: int) -> Iterator[str | None]:
    """With --concurrent N > 1 and no --address: a local Ray (on loopback) that the cells' searches join as
    `--address auto` through RAY_ADDRESS, as a search joins a cluster it runs on."""
    if concurrent < 2 or address not in (None, "local"):
        yield address
        return
    import os

    import ray

    from balm_tune.cluster import start_local_ray
    from balm_tune.compat import loopback_environment

    start_local_ray()
    shared = {"RAY_ADDRESS": ray.get_runtime_context().gcs_address, **loopback_environment()}
    os.environ.update(shared)  # inherited by the searches
    try:
        yield "auto"
    finally:
        for key in shared:
            del os.environ[key]
        ray.shutdown()


def _stop_on_termination() -> None:
    """SIGTERM and SIGHUP stop the campaign as Ctrl-C does (KeyboardInterrupt in the main thread)."""
    for name in ("SIGTERM", "SIGHUP"):
        signal.signal(getattr(signal, name), signal.default_int_handler)


def _closing(campaign: Campaign) -> int:
    """The table and where everything is; 1 when a cell failed."""
    failed = [c.name for c in campaign.cells if c.state != DONE]
    tables = campaign.tables()
    if tables["md"].is_file():
        print("\n" + tables["md"].read_text())
    print(f"table:    {tables['md']}  ({tables['csv'].name}, {tables['tex'].name})")
    print(f"report:   {campaign.report}")
    print(f"manifest: {campaign.folder / MANIFEST}")
    if failed:
        print(f"error: {len(failed)} cell(s) did not finish: {', '.join(failed)}; their consoles are in "
              f"{campaign.folder / LOGS}; rerun with --name {campaign.experiment.name} --resume")  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    exit_with(main)
