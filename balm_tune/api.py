"""The Python API of a search; `python -m balm_tune.search` is a thin layer over it.

    from balm_tune.api import run_search
    result = run_search("search_spaces/default.yaml", name="etth1", num_samples=8, max_train_batches=10)
    result.leaderboard          # pandas DataFrame, best first
    result.best_config          # core.config.BalmConfig of the winner (None if every trial failed)
    result.test                 # the winner's test metrics
    result.paths                # leaderboard.csv, config.yaml, checkpoint.pt, summary.json,
                                # optuna.journal (the Optuna study, named after the experiment)

`prepare_search` does every cheap check (space, overrides, data, backbone availability) and starts
nothing; `execute` runs a prepared search. Selection uses validation only; test metrics are computed
for the winner alone, over every test window. Two baselines (repeat-last value, closed-form linear;
core/baselines.py) are scored on the same validation and test windows and go into summary.json and
baselines.csv.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from balm_tune.cluster import Cluster
from balm_tune.experiment import (
    ABLATION_SEARCHES,
    ABLATIONS,
    JOURNAL,
    OFFICIAL,
    SPACE,
    TRIAL_FILES,
    Experiment,
    Summary,
    Windows,
    Winner,
)
from balm_tune.optuna_search import close_study, finished_trials, stall_of
from balm_tune.outcome import DIVERGED_FACTOR, Outcome
from balm_tune.space import DEFAULT_SPACE, SearchSpace, SpaceError, check_ablations, load_points, load_space
from balm_tune.storage import FaultWatch, Location, StorageFull
from balm_tune.study import check_journal
from balm_tune.trackers import Trackers
from balm_tune.tuner import WarmStart
from core.config import BalmConfig
from core.data import ForecastData
from core.errors import storage_fault
from core.paths import check_name
from core.train import preflight


@dataclass
class SearchPlan:
    """A checked search, ready to run: the resolved space, its data and its experiment (where Ray keeps
    it, a local folder or a URI every node reaches, and the local folder that receives the exported
    results; balm_tune.experiment)."""

    space: SearchSpace
    data: ForecastData
    experiment: Experiment
    resume: bool = False
    trust_experiment: bool = False  # --resume a folder whose pickles this user's key did not sign
    auto_gpus: bool = False  # --gpus-per-trial auto: sized once connected (see cluster.auto_gpus_per_trial)
    trackers: Trackers = field(default_factory=Trackers)
    ablations: tuple[str, ...] = ()  # core.config.ABLATIONS arms the winner's config is retrained as
    warm_start: WarmStart | None = None
    break_lock: bool = False  # --break-lock: take over the lock of a driver gone on another host
    ablation_search: bool = False  # each arm searched first (its own experiment), then its winner retrained
    address: str | None = None  # where the trials run (None: a local Ray), for the arms' searches
    official: bool = False  # the space's first enqueued config (a preset's official one) retrained on the seeds
    max_concurrent: int | None = None  # at most this many trials at once (None: as many as the cluster holds)


@dataclass
class SearchResult:
    """What a finished search produced (also written under `experiment`)."""

    experiment: Path
    leaderboard: Any  # pandas.DataFrame, one row per trial, best first (leaderboard.csv's trial rows)
    summary: Summary | None  # summary.json (None when interrupted)
    best_config: BalmConfig | None = None
    test: dict | None = None
    paths: dict[str, Path] = field(default_factory=dict)
    interrupted: bool = False  # Ctrl-C: trials stopped, nothing exported; --resume continues
    baselines: Any = None  # pandas.DataFrame: baselines.csv, scored on the trials' windows
    text: str = ""  # the closing lines execute printed (balm_tune.closing), as the CLI shows them


def prepare_search(
    space: SearchSpace | str | Path | None = None,
    *,
    name: str | None = None,
    storage: str | Path = "runs",
    out: str | Path | None = None,
    resume: bool = False,
    trust_experiment: bool = False,
    break_lock: bool = False,
    address: str | None = None,
    num_samples: int | None = None,
    max_epochs: int | None = None,
    sampler_seed: int | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | str | None = None,
    enqueue: str | Path | list[dict] | None = None,
    warm_start: str | Path | None = None,
    mlflow: str | None = None,
    wandb: str | None = None,
    ablations: list[str] | tuple[str, ...] = (),
    ablation_search: bool | None = None,
    official: bool = False,
    max_concurrent_trials: int | None = None,
    **overrides: Any,
) -> SearchPlan:
    """Resolve and check a search without starting anything (raises a core.errors.BalmError).

    `storage` is a folder or a URI (`s3://bucket/prefix`) where Ray keeps trials and checkpoints; the
    exported files also land in `out`/<name> (default: the storage folder when local, else `runs/`).
    `overrides` are base config keys (`max_train_batches=10`); the others override the space's budget,
    sampler seed and resources (`gpus_per_trial="auto"`: sized on the cluster); `mlflow` (a tracking URI)
    and `wandb` (a project) add experiment trackers. `space` defaults to search_spaces/default.yaml; with
    `resume`, to the space saved in the experiment, and any flag that differs from the saved search is
    refused (Tune cannot change a search it restores). `address`: the trials run on that cluster, so this
    machine's device and CPUs are not checked. `enqueue`: configs (or a YAML file of them) evaluated first,
    after the space's own `enqueue`; `warm_start`: a finished experiment (local folder, or name under a local
    `storage`) whose Optuna study seeds the sampler. `ablations`: arms of core.config.ABLATIONS the winner's
    config is retrained as after the search, on the winner's seed and the final seeds (docs/usage.md);
    with `ablation_search` (default: the space's `ablations: {search: ...}`) each arm is first searched
    with this space and budget, and its own winner is retrained instead. `official`: the space's first
    enqueued config (a preset's official configuration) is retrained on the same seeds as the winner, for
    the campaign's table (balm_tune.campaign); `max_concurrent_trials`: a share of the cluster (a campaign
    running several searches at once on it).
    """
    check_ablations(ablations)
    _check_positive(max_concurrent_trials, "--max-concurrent-trials")
    if resume and not name:
        raise SpaceError("--resume needs --name of the experiment to continue")
    if resume and (enqueue is not None or warm_start is not None):
        raise SpaceError("--enqueue and --warm-start start a new study; a resumed search continues its own")
    if name is not None:
        check_name(name)
    trackers = Trackers(mlflow, wandb).check()
    auto_gpus = gpus_per_trial == "auto"
    path = DEFAULT_SPACE if space is None else space.path if isinstance(space, SearchSpace) else Path(space)
    name = name or f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment = Experiment.open(storage, name, out)
    saved = _saved_space(experiment, trust_experiment) if resume else None
    space = space if isinstance(space, SearchSpace) else saved if space is None and saved else load_space(path)
    flags = {"num_samples": num_samples, "max_epochs": max_epochs, "seed": sampler_seed}
    flags |= {"cpus_per_trial": cpus_per_trial, "gpus_per_trial": None if auto_gpus else gpus_per_trial}
    space = _with_flags(space, overrides, flags, enqueue)
    seeds = None if warm_start is None else load_warm_start(experiment.location.parent, warm_start, space, out)
    if saved and (changed := saved.differences(space)):
        raise SpaceError(
            f"--resume continues {experiment.uri} as saved in {SPACE}; it cannot change {', '.join(changed[:3])}"
            f"{' ...' if len(changed) > 3 else ''} (saved vs requested); drop those flags, or start a new --name"
        )
    # every cheap check (config, data, backbone shape, device, threads) before anything starts
    data = preflight(space.base, variants=space.edge_configs(), local=address in (None, "local"))
    if not break_lock:
        experiment.check_unlocked()  # a driver runs it now: say so, not "exists"
    if official and not space.enqueue:
        raise SpaceError(
            f"--official: search space {space.path} enqueues no config to retrain (its 'enqueue' is empty)"
        )
    taken = experiment.taken()
    if taken and not resume:
        raise SpaceError(f"{taken} exists; continue it with --resume or choose another --name")
    arms = tuple(ablations or space.ablations)  # --ablations wins over the space's list
    searched = space.ablation_search if ablation_search is None else ablation_search
    return SearchPlan(
        space, data, experiment, resume, trust_experiment, auto_gpus, trackers, arms, seeds, break_lock,
        ablation_search=bool(searched and arms), address=address, official=official,
        max_concurrent=max_concurrent_trials,
    )  # fmt: skip


def _with_flags(space: SearchSpace, overrides: dict, flags: dict, enqueue: str | Path | list[dict] | None):
    """The space with base config `overrides`, the budget and resource `flags` and the `enqueue`d configs."""
    space = space.with_base_overrides(overrides) if overrides else space
    space = space.with_overrides(**flags)
    if enqueue is not None:
        points = load_points(enqueue, space.search) if isinstance(enqueue, str | Path) else enqueue
        space = dataclasses.replace(space, enqueue=[*space.enqueue, *points])
    return space


def load_warm_start(
    storage: Location, source: str | Path, space: SearchSpace, out: str | Path | None = None
) -> WarmStart:
    """The finished trials of experiment `source` (a local folder, or the name of an experiment under
    `storage`, whose study is fetched into its local mirror) that searched the keys of `space`."""
    if Path(source).is_dir() or len(Path(source).parts) > 1:  # a folder, not a name
        earlier = Experiment.local(source)
    elif storage.is_local:
        earlier = Experiment.local(Path(storage.path) / check_name(str(source), "--warm-start"))
    else:  # its study comes down into the experiment's local mirror
        earlier = Experiment.open(storage, check_name(str(source), "--warm-start"), out)
        earlier.fetch(JOURNAL)
    if not earlier.journal.is_file():
        raise SpaceError(f"--warm-start {source}: no Optuna study at {earlier.location.child(JOURNAL).uri}")
    check_journal(earlier.journal)
    trials = [t for t in finished_trials(earlier.journal, earlier.name) if set(t.params) == set(space.search)]
    if not trials:
        raise SpaceError(
            f"--warm-start {source}: no finished trial searched the keys {sorted(space.search)} of this space"
        )
    return WarmStart(str(earlier.folder), trials)


def _saved_space(experiment: Experiment, trust_experiment: bool) -> SearchSpace:
    """The space an experiment was started with; its pickles are checked now (and again before the restore).
    With remote storage, the Optuna study published with the last results comes down with it."""
    from balm_tune.integrity import verify
    from balm_tune.tuner import check_states, restorable

    if not experiment.location.child(SPACE).exists():
        raise SpaceError(f"--resume: no experiment at {experiment.uri} (missing {SPACE}); check --storage/--name")
    if restorable(experiment.location):
        check_states(experiment.location)  # damaged, not foreign: said so before the signatures are checked
        if not trust_experiment:
            verify(experiment.location)
    if not experiment.journal.exists():
        experiment.fetch(JOURNAL)
    if experiment.journal.exists():
        check_journal(experiment.journal)  # before Ray starts: a damaged study fails in one line, not in Tune
    experiment.fetch(SPACE)
    return load_space(experiment.space_file)


def run_search(
    space: SearchSpace | str | Path | None = None,
    *,
    address: str | None = None,
    final_seeds: int = 0,
    verbose: bool = False,
    **options: Any,
) -> SearchResult:
    """Check, run and export a search; `options` are `prepare_search`'s (base config keys included)."""
    check_final_seeds(final_seeds)
    plan = prepare_search(space, address=address, **options)
    return execute(plan, address=address, final_seeds=final_seeds, verbose=verbose)


def check_final_seeds(final_seeds: Any) -> None:
    if not isinstance(final_seeds, int) or isinstance(final_seeds, bool) or final_seeds < 0:
        raise SpaceError(f"--final-seeds: got {final_seeds!r}, expected an integer >= 0")


def _check_positive(value: Any, flag: str) -> None:
    """None, or an integer >= 1."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise SpaceError(f"{flag}: got {value!r}, expected an integer >= 1")


def execute(plan: SearchPlan, address: str | None = None, final_seeds: int = 0, verbose: bool = False) -> SearchResult:
    """Run a prepared search on a local Ray (or the cluster at `address`, or the Ray this process has
    already initialised, which is left running) and export the winner; `verbose`: Ray's own console output.

    The stages, each a function of the plan and what the stage before it made (docs/search.md):
    `start` (Ray, shared inputs, baselines) -> `tuner_for` + fit (Tune) -> `collect` (leaderboard, study,
    summary) -> `export` (winner, test, final seeds) -> `report`. Ctrl-C stops the trials (Tune saves
    their state): nothing is exported and the result says `interrupted`; `--resume` continues. The
    winner's checkpoint is loaded before any file is replaced.
    """
    check_final_seeds(final_seeds)
    import ray

    started, own_ray, tuned = time.perf_counter(), not ray.is_initialized(), False
    with _faults_said(plan), plan.experiment.locked(plan.break_lock):  # one driver from before its first file
        try:
            ready = start(plan, address, verbose)
            tuner = tuner_for(plan, ready, verbose)  # with --resume: only after the pickles are verified
            tuned = True  # from here on, the experiment's pickles are this run's (or trusted) ones
            with FaultWatch() as watch:  # a full disk stops Tune as Ctrl-C would
                results = tuner.fit()
            if watch.fault is not None:
                raise watch.fault
            collected = collect(plan, ready, results)
            if collected.summary is None:  # interrupted: the study's trials stay open for --resume
                return _closed(collected.result(plan))
            if collected.winner is not None:
                export(plan, ready, collected, final_seeds)
                collected.summary.wall_seconds = time.perf_counter() - started
            return _closed(report(plan, collected))
        finally:
            if tuned:
                _seal(plan)  # the final state (final_seeds/ included), signed for --resume
            if own_ray:  # a Ray the caller started stays up
                ray.shutdown()


@contextmanager
def _faults_said(plan: SearchPlan) -> Iterator[None]:
    """A full disk, an exceeded quota or read-only storage met anywhere in the search (Tune, the export,
    the report) becomes one StorageFull line; nothing written before it is removed."""
    try:
        yield
    except Exception as err:
        fault = storage_fault(err)
        if fault is None:
            raise
        raise StorageFull.of(fault, plan.experiment.uri) from None


def _seal(plan: SearchPlan) -> None:
    """Sign the experiment's pickles for --resume; on a full disk the signatures of the last step Tune
    saved stay (what Tune could not write was not written either)."""
    from balm_tune.integrity import seal

    try:
        seal(plan.experiment.location)
    except OSError as err:
        if storage_fault(err) is None:
            raise


@dataclass
class Started:
    """What `start` readied for the trials: the space as sized on the cluster, the inputs every trial
    shares, the baselines' scores (name -> split -> core.baselines.Metrics as a dict), each baseline's
    test Metrics with its per-window errors (for the significance test) and how many trials run at once."""

    space: SearchSpace
    shared: Any  # balm_tune.trainable.SharedInputs
    baselines: dict[str, dict[str, dict]]
    concurrent: int
    baseline_tests: dict[str, Any] = dataclasses.field(default_factory=dict)  # name -> core.baselines.Metrics


def start(plan: SearchPlan, address: str | None, verbose: bool = False) -> Started:
    """Ray up (or reached), the backbone and every window's prompt token ids built once, the baselines
    scored on the trials' windows, the trials sized on the cluster; the space saved in a new experiment."""
    import ray

    from balm_tune.cluster import auto_gpus_per_trial, init_ray
    from balm_tune.trainable import build_shared
    from core.baselines import run_baselines
    from core.train import prompt_length_warning

    space, data, experiment = plan.space, plan.data, plan.experiment
    if not ray.is_initialized():
        say(
            "starting a local Ray on this machine"
            if address in (None, "local")
            else f"joining the Ray cluster at {address}"
        )
    cluster = init_ray(address, experiment.location, verbose)  # reachable; a local storage path is shared by all
    stop_on_termination()  # after ray.init, whose own SIGTERM handler would abort the driver
    concurrent = trials_at_once(plan, cluster)  # one trial fits: checked before the backbone loads
    windows = len(data.train) + len(data.val) + len(data.test)
    say(f"loading the backbone {space.base.backbone} and the prompt token ids of {windows:,} windows (once)")
    shared = build_shared(space, data)
    warning = prompt_length_warning(highest_prompt_len(space), shared.prompts)
    if warning:
        print(f"warning: {warning}", flush=True)
    say("scoring the repeat-last and linear baselines on the trials' validation windows and every test window")
    scored = run_baselines(data, space.base)
    baselines = {name: {split: m.to_dict() for split, m in by_split.items()} for name, by_split in scored.items()}
    shared = dataclasses.replace(shared, diverged_above=DIVERGED_FACTOR * baselines["repeat_last"]["val"]["mse"])
    if plan.auto_gpus:
        space = dataclasses.replace(space, gpus_per_trial=auto_gpus_per_trial(cluster, shared))
        shared = dataclasses.replace(shared, space=space)
        held = cluster.trials_at_once(space.cpus_per_trial, space.gpus_per_trial)
        concurrent = min(held, plan.max_concurrent or held)
    resources = ray.cluster_resources()
    print(
        f"Ray: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs now; up to {concurrent} trials "
        f"at once ({space.cpus_per_trial:g} CPU, {space.gpus_per_trial:g} GPU each); experiment at {experiment.uri}",
        flush=True,
    )
    experiment.folder.mkdir(parents=True, exist_ok=True)
    if not plan.resume:
        space.save(experiment.space_file)
        experiment.publish(experiment.space_file)
    return Started(space, shared, baselines, concurrent, {name: by_split["test"] for name, by_split in scored.items()})


def tuner_for(plan: SearchPlan, ready: Started, verbose: bool):
    """Tune's Tuner of the trials, new or restored with --resume (its `fit` runs them)."""
    from balm_tune.tuner import make_tuner

    experiment = plan.experiment
    return make_tuner(
        ready.space,
        ready.shared,
        experiment.location,
        ready.concurrent,
        plan.resume,
        experiment.journal,
        plan.warm_start,
        extra_callbacks=plan.trackers.callbacks(experiment.name),
        verbose=verbose,
        trust_experiment=plan.trust_experiment,
    )


@dataclass
class Collected:
    """What `collect` read from the trials: their rows (best first), the baselines', the summary so far
    (None when Ctrl-C interrupted the trials) and the winner's row (None when every trial failed)."""

    rows: list  # balm_tune.export.TrialRow
    baselines: list  # balm_tune.export.BaselineRow (and AblationRow after --ablations)
    summary: Summary | None
    winner: Any = None
    paths: dict[str, Path] = field(default_factory=dict)
    best_config: BalmConfig | None = None

    def result(self, plan: SearchPlan) -> SearchResult:
        from balm_tune.export import leaderboard_frame

        interrupted = self.summary is None
        return SearchResult(
            plan.experiment.folder,
            leaderboard_frame(self.rows),
            self.summary,
            self.best_config,
            self.summary.test if self.summary else None,
            self.paths,
            interrupted=interrupted,
            baselines=None if interrupted else leaderboard_frame(self.baselines),
        )


def collect(plan: SearchPlan, ready: Started, results) -> Collected:
    """The leaderboard and baselines written, the study closed, importances computed, the summary begun;
    the winner's checkpoint loaded (before any file of an earlier export is replaced)."""
    from balm_tune.export import baseline_rows, leaderboard, verify_checkpoint, write_rows
    from balm_tune.importance import experiment_importances

    space, experiment = ready.space, plan.experiment
    rows = leaderboard(results, space)
    if any(r.outcome is Outcome.INTERRUPTED for r in rows):
        return Collected(rows, [], None)
    close_study(experiment.journal, experiment.name)
    winners = [r for r in rows if r.outcome is not Outcome.FAILED and r.checkpoint]
    if winners:
        verify_checkpoint(winners[0])
    scored = baseline_rows(ready.baselines)
    write_rows(rows, experiment.leaderboard)
    write_rows(scored, experiment.baselines)
    experiment.fetch_tensorboard()
    experiment.fetch(*TRIAL_FILES, trials=True)  # the report's and the importances' (remote storage)
    summary = Summary(
        experiment=experiment.uri,
        results=str(experiment.folder),
        trials=len(rows),
        outcomes=dict(Counter(r.status for r in rows)),
        strategy={"searcher": space.searcher.to_spec(), "scheduler": space.scheduler.to_spec()},
        study={"journal": str(experiment.journal), "name": experiment.name},
        warm_start={"from": plan.warm_start.source, "trials": len(plan.warm_start.trials)} if plan.warm_start else None,
        built_in_driver=ready.shared.built,
        built_in_trials={
            "backbone_loads": sum(r.backbone_loads for r in rows),
            "prompt_builds": sum(r.prompt_builds for r in rows),
        },
        windows=Windows(ready.baselines["linear"]["val"]["windows"], len(plan.data.val), len(plan.data.test)),
        baselines=ready.baselines,
        stalled=stall_of(experiment.journal, experiment.name),  # None, or why the search ended early
        importances=experiment_importances(experiment.journal, experiment.name, list(space.search)),
    )
    paths = {
        "leaderboard": experiment.leaderboard,
        "summary": experiment.summary_file,
        "study": experiment.journal,
        "baselines": experiment.baselines,
    }
    return Collected(rows, scored, summary, winners[0] if winners else None, paths)


def export(plan: SearchPlan, ready: Started, collected: Collected, final_seeds: int) -> None:
    """The winner's config.yaml and checkpoint.pt, its test scores over every test window, the verdict
    against each baseline and, with `final_seeds`, the winner retrained on further seeds."""
    import ray

    from balm_tune.export import export_winner
    from balm_tune.trainable import evaluate_checkpoint
    from balm_tune.tuner import run_final_seeds
    from core.baselines import significance

    space, shared, data, experiment = ready.space, ready.shared, plan.data, plan.experiment
    best, summary = collected.winner, collected.summary
    config = shared.trial_config(best.params)
    provenance = {
        **versions(),
        **{"device": best.device, "precision": best.precision, "seed": config.seed},
        **{"data_file": data.path.name, "data_sha256": data.sha256},
    }
    export_winner(best, config, provenance, experiment.config, experiment.checkpoint)
    collected.paths.update(config=experiment.config, checkpoint=experiment.checkpoint)
    # the trials have ended: a CPU scoring task may take the CPUs of the largest live node (a GPU one keeps
    # the trial's shape, which a GPU node is known to hold)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    largest = max([space.cpus_per_trial, *(n["Resources"].get("CPU", 0) for n in nodes)])
    cpus = space.cpus_per_trial if space.gpus_per_trial else largest
    # on a one-node CPU cluster of this machine (a local Ray) the driver scores it itself: no worker to
    # start and no shared inputs to copy, about 10 s less on 2 cores (docs/benchmarks.md)
    here = not space.gpus_per_trial and [n["NodeID"] for n in nodes] == [ray.get_runtime_context().get_node_id()]
    say(f"scoring the winner {best.trial_id} on all {len(data.test):,} test windows ({cpus:g} CPUs)")
    arguments = (shared, best.params, best.checkpoint, max(1, round(cpus)))
    if here:
        test = evaluate_checkpoint(*arguments)
    else:
        evaluate = ray.remote(num_cpus=cpus, num_gpus=space.gpus_per_trial)(evaluate_checkpoint)
        test = ray.get(evaluate.remote(*arguments))
    summary.test = {"test_mse": test.mse, "test_mae": test.mae, "test_windows": test.windows}
    summary.winner = Winner(best.trial_id, best.best_val_mse, best.best_val_mae, best.epochs_run, summary.windows.val)
    summary.base, summary.params, summary.provenance = base_trial(collected.rows, space), best.params, provenance
    for name, scores in summary.baselines.items():
        scores["beats_on_val"] = best.best_val_mse < scores["val"]["mse"]
        scores["beats_on_test"] = test.mse < scores["test"]["mse"]
        tested = significance(test, ready.baseline_tests[name], config.pred_len)
        scores["significance_on_test"] = tested.to_dict() if tested else None
    if final_seeds:
        say(f"retraining the winner on {final_seeds} further seeds, each scored on every test window")
        runs = run_final_seeds(space, shared, experiment.location, best.params, final_seeds, ready.concurrent)
        summary.final_seeds = {"runs": [_saved_run(r) for r in runs], **_means(runs, ("test_mse", "test_mae"))}
    if plan.official:
        run_official(plan, ready, collected, test, final_seeds)
    if plan.ablations:
        run_arms(plan, ready, collected, test, final_seeds)
    collected.best_config = BalmConfig.load(experiment.config)


def run_arms(plan: SearchPlan, ready: Started, collected: Collected, test: Any, final_seeds: int) -> None:
    """The ablation arms retrained (the winner's params, or each arm's own winner's when searched) on the
    winner's seed and the final seeds; summary.ablations and baselines.csv's arm rows."""
    from balm_tune.export import baseline_rows, write_rows
    from balm_tune.tuner import run_ablations

    summary, shared, experiment = collected.summary, ready.shared, plan.experiment
    config = shared.trial_config(collected.winner.params)
    seeds = winner_seeds(config, final_seeds)
    searched = search_arms(plan) if plan.ablation_search else {}
    whose = "each arm's winner" if searched else "the winner's config"
    say(f"retraining {whose} as {', '.join(plan.ablations)} on {len(seeds)} seed(s), each scored on every test window")
    folder = experiment.location.child(ABLATIONS)
    if searched:  # each arm's own winner, retrained in ablations/<arm>
        runs = [
            run
            for arm, params in searched.items()
            for run in run_ablations(shared, folder.child(arm), params, [arm], seeds, ready.concurrent)
        ]
    else:
        runs = run_ablations(shared, folder, collected.winner.params, list(plan.ablations), seeds, ready.concurrent)
    summary.ablations = ablation_summary(runs, test, config)
    for arm, params in searched.items():
        summary.ablations[arm]["searched"] = {"params": params, "experiment": f"{ABLATION_SEARCHES}/{arm}"}
    collected.baselines = baseline_rows(summary.baselines, summary.ablations)  # the arms' rows too
    write_rows(collected.baselines, experiment.baselines)


def run_official(plan: SearchPlan, ready: Started, collected: Collected, test: Any, final_seeds: int) -> None:
    """The space's first enqueued config (a preset's official configuration, trial 0 of the search) retrained
    on the winner's seed and the final seeds, each scored on every test window: summary.official."""
    from balm_tune.tuner import retrain

    config = ready.shared.trial_config(collected.winner.params)
    params, seeds = ready.space.enqueue[0], winner_seeds(config, final_seeds)
    say(f"retraining the space's first enqueued config (the official one of a preset) on {len(seeds)} seed(s)")
    runs = retrain(ready.shared, plan.experiment.location.child(OFFICIAL), params, {"seed": seeds}, ready.concurrent)
    collected.summary.official = {"params": params, **retrained_summary(runs, test, config)}


def winner_seeds(config: BalmConfig, final_seeds: int) -> list[int]:
    """The winner's own seed, then the --final-seeds seeds (balm_tune.tuner.run_final_seeds')."""
    return [config.seed + i for i in range(final_seeds + 1)]


def search_arms(plan: SearchPlan) -> dict[str, dict]:
    """Each ablation arm searched with the plan's space (SearchSpace.for_arm) and budget, as its own
    experiment in <experiment>/ablation_searches/<arm> (continued if it exists); each arm's winner's params."""
    found, parent = {}, plan.experiment
    storage, out = parent.location.child(ABLATION_SEARCHES).uri, parent.folder / ABLATION_SEARCHES
    for arm in plan.ablations:
        say(f"searching the ablation {arm} with the same space and budget ({ABLATION_SEARCHES}/{arm})")
        resume = Experiment.open(storage, arm, out).taken() is not None
        space = plan.space.for_arm(arm)
        arm_plan = prepare_search(space, name=arm, storage=storage, out=out, address=plan.address, resume=resume)
        result = execute(arm_plan, address=plan.address)
        if result.summary is None or not result.summary.has_winner:
            from balm_tune.export import ExportError

            raise ExportError(f"the search of ablation {arm} found no winner; see {result.paths.get('leaderboard')}")
        found[arm] = result.summary.params
    return found


def ablation_summary(runs: list[dict], winner: Any, config: BalmConfig) -> dict[str, Any]:
    """Per arm: its retrained_summary."""
    arms = dict.fromkeys(r["text_branch"] for r in runs)
    return {arm: retrained_summary([r for r in runs if r["text_branch"] == arm], winner, config) for arm in arms}


def retrained_summary(runs: list[dict], winner: Any, config: BalmConfig) -> dict[str, Any]:
    """One config's retrainings on several seeds: its runs, the means and stds over seeds, and the
    Diebold-Mariano test of the winner against its run on the winner's own seed (same windows)."""
    import torch

    from core.significance import diebold_mariano

    same_seed = next(r for r in runs if r["seed"] == config.seed)
    tested = diebold_mariano(winner.window_mse, torch.tensor(same_seed["test_window_mse"]), config.pred_len)
    return {
        "runs": [_saved_run(r) for r in runs],
        **_means(runs, ("best_val_mse", "best_val_mae", "test_mse", "test_mae", "step_seconds")),
        "parameters": same_seed["parameters"],
        "test_windows": same_seed["test_windows"],
        "significance_on_test": tested.to_dict(),
        "tested_run": {"seed": config.seed, "test_mse": same_seed["test_mse"]},  # what the test compared
    }


def _saved_run(run: dict) -> dict:
    """A retraining's figures as summary.json keeps them (its per-window errors are not kept)."""
    return {k: v for k, v in run.items() if k != "test_window_mse"}


def _means(runs: list[dict], keys: tuple[str, ...]) -> dict[str, float]:
    """`<key>_mean` and `<key>_std` over the runs (core.significance.SeedSpread: the sample std, 0 for one run)."""
    from core.significance import SeedSpread

    spreads = {k: SeedSpread.of([r[k] for r in runs]) for k in keys}
    return {f"{k}_{s}": getattr(spread, s) for k, spread in spreads.items() for s in ("mean", "std")}


def report(plan: SearchPlan, collected: Collected) -> SearchResult:
    """summary.json written, the exported files published to the storage, the report built and published."""
    from balm_tune.report import write_report

    experiment = plan.experiment
    experiment.write_summary(collected.summary)
    experiment.publish(*collected.paths.values())
    if collected.winner is not None:
        say("writing the report (every trial's curves, the winner's forecasts beside the baselines)")
    collected.paths["report"] = write_report(experiment, collected.summary.importances).index
    return collected.result(plan)


def _closed(result: SearchResult) -> SearchResult:
    """The result with its closing lines (balm_tune.closing), printed: the CLI's and the API's last words."""
    from balm_tune.closing import closing_text

    result.text = closing_text(result)
    print(result.text, flush=True)
    return result


def base_trial(rows: list, space: SearchSpace) -> dict | None:
    """The trial of the space's first enqueued config (the default space's base config), for the summary's
    "what the search gained" line; None when the space enqueues none or that trial failed."""
    if not space.enqueue:
        return None
    first = space.enqueue[0]
    for row in rows:
        same = all(_same(row.params.get(k), v) for k, v in first.items())
        if same and row.outcome is not Outcome.FAILED:
            return {"trial_id": row.trial_id, "best_val_mse": row.best_val_mse, "status": row.status}
    return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


TERMINATION = ("SIGTERM", "SIGHUP")  # what Slurm, Kubernetes, docker stop, systemd and a closed terminal send


def stop_on_termination() -> None:
    """SIGTERM and SIGHUP stop the search as Ctrl-C does (Tune stops the trials and saves their state;
    nothing is exported; --resume continues; the CLI exits 130): each is turned into a SIGINT for this
    process. Signal handlers belong to the main thread, so a search run from another thread keeps Ray's."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    for name in TERMINATION:
        signal.signal(getattr(signal, name), lambda number, frame: signal.raise_signal(signal.SIGINT))


def say(phase: str) -> None:
    """One line before a phase of the search that takes more than a few seconds."""
    print(f"{phase} ...", flush=True)


def highest_prompt_len(space: SearchSpace) -> int:
    """The largest P any trial of the space can use (a searched null means the default formula)."""
    searched = space.search.get("prompt_len")
    values = searched.extremes() if searched else [space.base.prompt_len]
    default = dataclasses.replace(space.base, prompt_len=None).resolved_prompt_len
    return max(default if v is None else int(v) for v in values)


def trials_at_once(plan: SearchPlan, cluster: Cluster) -> int:
    """How many of the plan's trials the cluster holds at once (ClusterError when not even one);
    with `--gpus-per-trial auto` a GPU cluster is sized for a whole GPU per trial until the probe ran."""
    gpus = (1.0 if cluster.has_gpus else 0.0) if plan.auto_gpus else plan.space.gpus_per_trial
    held = cluster.trials_at_once(plan.space.cpus_per_trial, gpus)
    return min(held, plan.max_concurrent or held)


def check_cluster(plan: SearchPlan, address: str | None = None) -> int:
    """--dry-run's cluster checks, starting nothing: the cluster at `address` answers, holds one trial and
    reaches the storage (without `address`: the local machine's CPUs and GPUs hold one trial)."""
    import ray

    from balm_tune.cluster import init_ray, local_cluster

    if not address or address == "local":
        return trials_at_once(plan, local_cluster())
    try:
        return trials_at_once(plan, init_ray(address, plan.experiment.location))
    finally:
        ray.shutdown()


def versions() -> dict:
    import optuna
    import ray
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "transformers": transformers.__version__,
        "ray": ray.__version__,
        "optuna": optuna.__version__,
    }
