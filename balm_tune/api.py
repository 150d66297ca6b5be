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
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from balm_tune.cluster import Cluster
from balm_tune.optuna_search import JOURNAL, close_study, finished_trials, stall_of
from balm_tune.outcome import DIVERGED_FACTOR, Outcome
from balm_tune.space import DEFAULT_SPACE, SearchSpace, SpaceError, load_points, load_space
from balm_tune.storage import Location, open_location
from balm_tune.trackers import Trackers
from balm_tune.tuner import WarmStart
from core.config import BalmConfig
from core.data import ForecastData
from core.paths import check_name, writable_folder
from core.train import preflight

SPACE_COPY = "search_space.yaml"


@dataclass
class SearchPlan:
    """A checked search, ready to run: the resolved space, its data, where Ray keeps the experiment
    (`location`: a local folder or a URI every node reaches) and the local folder that receives the
    exported results (`experiment`; the same folder when the storage is local)."""

    space: SearchSpace
    data: ForecastData
    experiment: Path
    location: Location
    resume: bool = False
    trust_experiment: bool = False  # --resume a folder whose pickles this user's key did not sign
    auto_gpus: bool = False  # --gpus-per-trial auto: sized once connected (see cluster.auto_gpus_per_trial)
    trackers: Trackers = field(default_factory=Trackers)
    warm_start: WarmStart | None = None


@dataclass
class SearchResult:
    """What a finished search produced (also written under `experiment`)."""

    experiment: Path
    leaderboard: Any  # pandas.DataFrame, one row per trial, best first (leaderboard.csv's trial rows)
    summary: dict
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
    `storage`) whose Optuna study seeds the sampler.
    """
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
    location = open_location(storage).child(name)
    default_out = Path(location.parent.path) if location.is_local else Path("runs")
    experiment = writable_folder(out, "--out") / name if out is not None else default_out.resolve() / name
    saved = _saved_space(location, experiment, trust_experiment) if resume else None
    space = space if isinstance(space, SearchSpace) else saved if space is None and saved else load_space(path)
    if overrides:
        space = space.with_base_overrides(overrides)
    space = space.with_overrides(
        num_samples=num_samples,
        max_epochs=max_epochs,
        seed=sampler_seed,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=None if auto_gpus else gpus_per_trial,
    )
    if enqueue is not None:
        points = load_points(enqueue, space.search) if isinstance(enqueue, str | Path) else enqueue
        space = dataclasses.replace(space, enqueue=[*space.enqueue, *points])
    seeds = None if warm_start is None else load_warm_start(storage, warm_start, space)
    if saved and (changed := saved.differences(space)):
        raise SpaceError(
            f"--resume continues {location.uri} as saved in {SPACE_COPY}; it cannot change {', '.join(changed[:3])}"
            f"{' ...' if len(changed) > 3 else ''} (saved vs requested); drop those flags, or start a new --name"
        )
    # every cheap check (config, data, backbone shape, device, threads) before anything starts
    data = preflight(space.base, variants=space.edge_configs(), local=address in (None, "local"))
    taken = [where for where, used in ((location.uri, location.exists()), (experiment, experiment.exists())) if used]
    if taken and not resume:
        raise SpaceError(f"{taken[0]} exists; continue it with --resume or choose another --name")
    return SearchPlan(
        space, data, experiment, location, resume, trust_experiment, auto_gpus, trackers, warm_start=seeds
    )


def load_warm_start(storage: str | Path, source: str | Path, space: SearchSpace) -> WarmStart:
    """The finished trials of experiment `source` (a local folder, or a name under a local `storage`)
    that searched the keys of `space`."""
    folder = Path(source) if Path(source).is_dir() else Path(str(storage)) / str(source)
    journal = folder / JOURNAL
    if not journal.is_file():
        raise SpaceError(f"--warm-start {source}: no Optuna study at {journal}")
    trials = [t for t in finished_trials(journal, folder.name) if set(t.params) == set(space.search)]
    if not trials:
        raise SpaceError(
            f"--warm-start {source}: no finished trial searched the keys {sorted(space.search)} of this space"
        )
    return WarmStart(str(folder.resolve()), trials)


def _saved_space(location: Location, experiment: Path, trust_experiment: bool) -> SearchSpace:
    """The space an experiment was started with; its pickles are checked now (and again before the restore).
    With remote storage, the Optuna study published with the last results comes down with it."""
    from balm_tune.integrity import verify
    from balm_tune.tuner import restorable

    saved = location.child(SPACE_COPY)
    if not saved.exists():
        raise SpaceError(f"--resume: no experiment at {location.uri} (missing {SPACE_COPY}); check --storage/--name")
    if restorable(location) and not trust_experiment:
        verify(location)
    study = location.child(JOURNAL)
    if not (experiment / JOURNAL).exists() and study.exists():
        study.download(experiment / JOURNAL)
    return load_space(saved.download(experiment / SPACE_COPY))


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


def execute(plan: SearchPlan, address: str | None = None, final_seeds: int = 0, verbose: bool = False) -> SearchResult:
    """Run a prepared search on a local Ray (or the cluster at `address`, or the Ray this process has
    already initialised, which is left running) and export the winner; `verbose`: Ray's own console output.

    Ctrl-C stops the trials (Tune saves their state): nothing is exported and the result says
    `interrupted`; `--resume` continues. The winner's checkpoint is loaded before any file is replaced.
    """
    check_final_seeds(final_seeds)
    import ray

    from balm_tune.cluster import auto_gpus_per_trial, init_ray
    from balm_tune.export import (
        baseline_rows,
        export_winner,
        fetch_tensorboard,
        leaderboard,
        leaderboard_frame,
        publish,
        verify_checkpoint,
        write_rows,
        write_summary,
    )
    from balm_tune.importance import experiment_importances
    from balm_tune.integrity import seal
    from balm_tune.report import TRIAL_INPUTS, fetch_inputs, write_report
    from balm_tune.trainable import build_shared, evaluate_checkpoint
    from balm_tune.tuner import make_tuner, run_final_seeds
    from core import backbones, prompts
    from core.baselines import run_baselines
    from core.train import prompt_length_warning

    space, data, experiment, location = plan.space, plan.data, plan.experiment, plan.location
    started, sign, own_ray = time.perf_counter(), False, not ray.is_initialized()
    try:
        cluster = init_ray(address, location)  # reachable; a local storage path is shared by every node
        concurrent = trials_at_once(plan, cluster)  # one trial fits: checked before the backbone loads
        windows = len(data.train) + len(data.val) + len(data.test)
        say(f"loading the backbone {space.base.backbone} and the prompt token ids of {windows:,} windows (once)")
        shared = build_shared(space, data)
        warning = prompt_length_warning(highest_prompt_len(space), shared.prompts)
        if warning:
            print(f"warning: {warning}", flush=True)
        say("scoring the repeat-last and linear baselines on the trials' validation windows and every test window")
        baselines = {
            name: {split: m.to_dict() for split, m in by_split.items()}
            for name, by_split in run_baselines(data, space.base).items()
        }
        shared = dataclasses.replace(shared, diverged_above=DIVERGED_FACTOR * baselines["repeat_last"]["val"]["mse"])
        if plan.auto_gpus:
            space = dataclasses.replace(space, gpus_per_trial=auto_gpus_per_trial(cluster, shared))
            shared = dataclasses.replace(shared, space=space)
            concurrent = cluster.trials_at_once(space.cpus_per_trial, space.gpus_per_trial)
        print(
            f"Ray: {ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs "
            f"now; up to {concurrent} trials at once ({space.cpus_per_trial:g} CPU, {space.gpus_per_trial:g} GPU "
            f"each); experiment at {location.uri}",
            flush=True,
        )
        experiment.mkdir(parents=True, exist_ok=True)
        if not plan.resume:
            space.save(experiment / SPACE_COPY)
            publish([experiment / SPACE_COPY], location)
        trackers = plan.trackers.callbacks(experiment.name)
        tuner = make_tuner(
            space,
            shared,
            location,
            concurrent,
            plan.resume,
            experiment / JOURNAL,
            plan.warm_start,
            extra_callbacks=trackers,
            verbose=verbose,
            trust_experiment=plan.trust_experiment,
        )
        sign = True  # from here on, the experiment's pickles are this run's (or trusted) ones
        results = tuner.fit()

        rows = leaderboard(results, space)
        paths = {"leaderboard": experiment / "leaderboard.csv", "summary": experiment / "summary.json"}
        if any(r.outcome is Outcome.INTERRUPTED for r in rows):  # the study's trials stay open for --resume
            return _closed(SearchResult(experiment, leaderboard_frame(rows), {"trials": len(rows)}, interrupted=True))
        paths["study"] = experiment / JOURNAL
        close_study(paths["study"], experiment.name)
        winners = [r for r in rows if r.outcome is not Outcome.FAILED and r.checkpoint]
        if winners:
            verify_checkpoint(winners[0])  # before any file of an earlier export is replaced
        paths["baselines"] = experiment / "baselines.csv"
        scored = baseline_rows(baselines)
        write_rows(rows, paths["leaderboard"])
        write_rows(scored, paths["baselines"])
        table, baseline_table = leaderboard_frame(rows), leaderboard_frame(scored)
        summary = {
            "experiment": location.uri,
            "results": str(experiment),
            "trials": len(rows),
            "outcomes": dict(Counter(r.status for r in rows)),
            "strategy": {"searcher": space.searcher.to_spec(), "scheduler": space.scheduler.to_spec()},
            "study": {"journal": str(paths["study"]), "name": experiment.name},
            "warm_start": {"from": plan.warm_start.source, "trials": len(plan.warm_start.trials)}
            if plan.warm_start
            else None,
            "built_in_driver": {"backbone_loads": backbones.LOADS, "prompt_builds": prompts.BUILDS},
            "built_in_trials": {
                "backbone_loads": sum(r.backbone_loads for r in rows),
                "prompt_builds": sum(r.prompt_builds for r in rows),
            },
            "windows": {
                "val": baselines["linear"]["val"]["windows"],
                "val_total": len(data.val),
                "test": len(data.test),
                "note": "validation (selection) on an evenly spaced subset when max_eval_batches is set; "
                "test on every window",
            },
            "baselines": baselines,
            "stalled": stall_of(paths["study"], experiment.name),  # None, or why the search ended early
        }
        fetch_tensorboard(location, experiment)
        fetch_inputs(location, experiment, TRIAL_INPUTS)  # the report's and importances' (remote storage)
        summary["importances"] = experiment_importances(experiment, list(space.search)).to_dict()
        if not winners:
            write_summary(summary, paths["summary"])
            publish(list(paths.values()), location)
            paths["report"] = write_report(experiment, location).index
            return _closed(SearchResult(experiment, table, summary, paths=paths, baselines=baseline_table))
        best = winners[0]
        config = shared.trial_config(best.params)
        provenance = {
            **versions(),
            "device": best.device,
            "precision": best.precision,
            "seed": config.seed,
            "data_file": data.path.name,
            "data_sha256": data.sha256,
        }
        paths["config"], paths["checkpoint"] = export_winner(best, config, provenance, experiment)
        say(f"scoring the winner {best.trial_id} on all {len(data.test):,} test windows")
        evaluate = ray.remote(num_cpus=space.cpus_per_trial, num_gpus=space.gpus_per_trial)(evaluate_checkpoint)
        test = ray.get(evaluate.remote(shared, best.params, best.checkpoint))
        summary.update(
            winner={
                **{k: getattr(best, k) for k in ("trial_id", "best_val_mse", "best_val_mae", "epochs_run")},
                "val_windows": summary["windows"]["val"],
            },
            base=base_trial(rows, space),
            params=best.params,
            test=test,
            provenance=provenance,
        )
        for scores in baselines.values():
            scores["beats_on_val"] = best.best_val_mse < scores["val"]["mse"]
            scores["beats_on_test"] = test["test_mse"] < scores["test"]["mse"]
        if final_seeds:
            say(f"retraining the winner on {final_seeds} further seeds, each scored on every test window")
            runs = run_final_seeds(space, shared, location, best.params, final_seeds, concurrent)
            summary["final_seeds"] = {
                "runs": runs,
                **{
                    f"{m}_{s}": f(r[m] for r in runs)
                    for m in ("test_mse", "test_mae")
                    for s, f in (("mean", statistics.fmean), ("std", _std))
                },
            }
        summary["wall_seconds"] = time.perf_counter() - started
        write_summary(summary, paths["summary"])
        publish(list(paths.values()), location)
        say("writing the report (every trial's curves, the winner's forecasts beside the baselines)")
        paths["report"] = write_report(experiment, location).index
        best_config = BalmConfig.load(paths["config"])
        return _closed(SearchResult(experiment, table, summary, best_config, test, paths, baselines=baseline_table))
    finally:
        if sign:
            seal(location)  # the final state (final_seeds/ included), signed for --resume
        if own_ray:  # a Ray the caller started stays up
            ray.shutdown()


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
    return cluster.trials_at_once(plan.space.cpus_per_trial, gpus)


def check_cluster(plan: SearchPlan, address: str | None = None) -> int:
    """--dry-run's cluster checks, starting nothing: the cluster at `address` answers, holds one trial and
    reaches the storage (without `address`: the local machine's CPUs and GPUs hold one trial)."""
    import ray

    from balm_tune.cluster import init_ray, local_cluster

    if not address or address == "local":
        return trials_at_once(plan, local_cluster())
    try:
        return trials_at_once(plan, init_ray(address, plan.location))
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


def _std(values) -> float:
    values = list(values)
    return statistics.stdev(values) if len(values) > 1 else 0.0
