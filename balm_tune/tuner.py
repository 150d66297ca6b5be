"""The Ray Tune set-up, built in one place (`build_tuner`) for the search, the winner's retraining on
further seeds and the benchmarks; `make_tuner` adds the space's searcher and scheduler."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from balm_tune.experiment import FINAL_SEEDS, ExperimentError
from balm_tune.space import SearchSpace
from balm_tune.storage import Location
from balm_tune.trainable import SharedInputs, trial_trainable

if TYPE_CHECKING:
    from ray.tune.stopper import Stopper

METRIC = "best_val_mse"  # what every searcher and scheduler minimises
SYNC_PERIOD_S = 10  # the driver's experiment state reaches remote storage at most this late (Ray's default: 300)
TUNE_SETTINGS = {  # Ray Tune's environment settings for every Tuner built here (a variable already set wins)
    "TUNE_GLOBAL_CHECKPOINT_S": "5",  # experiment snapshots for --resume: at most 5 s behind
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",  # snapshots that often are on purpose
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # balm_tune.callbacks.loggers() passes them
}


TUNE_CONTROLLER = "ray.tune.execution.tune_controller"  # the logger of Tune's trial loop


def _deleted_checkpoint(record: logging.LogRecord) -> bool:
    """False for Tune's record (and traceback) of an old checkpoint it could not delete because it is
    already gone: a --resume from a state saved before the trial's newer checkpoints replaced it (a kill,
    or a disk that filled up, within Tune's snapshot period). Tune goes on; nothing is lost."""
    err = record.exc_info[1] if record.exc_info else None
    return not (isinstance(err, FileNotFoundError) and "Error handling checkpoint" in record.getMessage())


@dataclasses.dataclass
class WarmStart:
    """Finished trials of another study that seed a new search's sampler (`--warm-start`)."""

    source: str  # the other experiment's folder
    trials: list  # optuna FrozenTrials, COMPLETE and PRUNED


def build_tuner(
    shared: SharedInputs,
    folder: Location,
    *,
    param_space: dict[str, Any],
    num_samples: int = 1,
    concurrent: int = 1,
    search_alg=None,
    scheduler=None,
    callbacks: list | None = None,
    stop: Stopper | None = None,
    checkpoints: int = 2,
    verbose: int | None = None,
    progress_reporter=None,
    resume: bool = False,
    trainable=None,
):
    """A `tune.Tuner` over the BALM trainable writing to `folder`, a path or URI (or the interrupted one
    restored from it):
    the trials' resources, checkpoints, failure policy, actor reuse and loggers (result.json, progress.csv,
    TensorBoard; balm_tune.callbacks.loggers) are the same for every caller; `callbacks` come after them.
    `trainable`: another in train_balm's place (bench/scale.py's, which reports alike without a model)."""
    from ray import tune

    from balm_tune.callbacks import loggers

    for key, value in TUNE_SETTINGS.items():  # read by Tune when it starts (fit), not at import
        os.environ.setdefault(key, value)
    if progress_reporter is not None:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune honours a custom reporter only in this engine
    trainable = trainable or trial_trainable(shared)
    if resume:
        return tune.Tuner.restore(folder.uri, trainable=trainable, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            metric=METRIC if search_alg or scheduler else None,
            mode="min" if search_alg or scheduler else None,
            num_samples=num_samples,
            max_concurrent_trials=concurrent,
            reuse_actors=True,  # one worker process runs trial after trial: no per-trial import and start-up
        ),
        run_config=tune.RunConfig(
            name=folder.name,
            storage_path=folder.parent.uri,
            sync_config=tune.SyncConfig(sync_period=SYNC_PERIOD_S),
            stop=stop,
            verbose=verbose,
            progress_reporter=progress_reporter,
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=checkpoints),
            callbacks=[*loggers(), *(callbacks or [])],
        ),
    )


def make_tuner(
    space: SearchSpace,
    shared: SharedInputs,
    experiment: Location,
    concurrent: int,
    resume: bool,
    journal: Path,
    warm_start: WarmStart | None = None,
    extra_callbacks: Sequence = (),
    verbose: bool = False,
    trust_experiment: bool = False,
    trainable=None,
):
    """The search's Tuner at `experiment` (a path or URI): the space's searcher (an Optuna sampler inside
    `StudySearch`; the study in the local file `journal`, named after the experiment) and scheduler, with
    its callbacks; `extra_callbacks` (experiment trackers, balm_tune.trackers) are added to its loggers;
    `trainable`: build_tuner's.
    The console shows balm_tune.console.SearchTable and one line per ended trial; `verbose`: Ray's own output.
    With `resume`, the interrupted Tuner restored from `experiment` after its pickles are verified
    (balm_tune.integrity); a folder Tune never saved its state to starts afresh."""
    import optuna
    from ray.tune.search import BasicVariantGenerator

    from balm_tune.callbacks import TrialLines
    from balm_tune.console import SearchTable
    from balm_tune.integrity import Sealer, verify
    from balm_tune.optuna_search import StudyRecorder, StudyStopper, TuneView, forget_lost_trials
    from balm_tune.strategies import create_scheduler
    from balm_tune.study import drop_torn_record

    if resume and restorable(experiment):
        if not trust_experiment:
            verify(experiment)
        if not verbose:  # tuner.pkl brings SearchTable back; Tune honours it only in its old output engine
            os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
            logging.getLogger(TUNE_CONTROLLER).addFilter(_deleted_checkpoint)  # once (addFilter keeps one)
        drop_torn_record(journal)  # before the study is written to again
        forget_lost_trials(journal, experiment.name, recorded_trial_ids(experiment))
        return build_tuner(shared, experiment, param_space={}, resume=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pbt = space.scheduler.type == "pbt"
    search_alg = _study_search(space, journal, experiment.name, warm_start)
    callbacks = [*extra_callbacks, TrialLines(space.max_epochs, space.base.patience, space.scheduler.type)]
    if pbt:  # Ray allows no searcher beside PBT: it samples its own population,
        callbacks.append(StudyRecorder(search_alg, space.param_space()))  # recorded in the study all the same
        search_alg = BasicVariantGenerator(points_to_evaluate=space.enqueue or None, random_state=space.seed)
    else:
        callbacks.append(TuneView(search_alg))
    return build_tuner(
        shared,
        experiment,
        param_space=space.param_space(),
        # the study counts the budget (StudySearch ends the search): Tune's own counter, restored from a state
        # file that may be a step newer than its trials, would otherwise end a resumed search a trial short
        num_samples=space.num_samples if pbt else -1,
        concurrent=min(concurrent, space.num_samples),
        search_alg=search_alg,
        scheduler=create_scheduler(space.scheduler, max_epochs=space.max_epochs, mutations=space.mutations()),
        callbacks=[*callbacks, Sealer()],
        # PBT has no max_t: without last_epoch it would still replace a trial's config after its last epoch;
        # it clones other trials' latest checkpoints, so it keeps more of them (Ray warns below 3)
        stop=StudyStopper(journal, experiment.name, last_epoch=space.max_epochs if pbt else None),
        checkpoints=4 if pbt else 2,
        verbose=3 if verbose else 1,  # 1: Tune's experiment status only, with this table
        progress_reporter=None
        if verbose
        else SearchTable(list(space.search), space.max_epochs, space.base.patience, space.scheduler.type),
        trainable=trainable,
    )


def _study_search(space: SearchSpace, journal: Path, name: str, warm_start: WarmStart | None):
    """The space's sampler inside StudySearch, the study `name` in `journal`."""
    from balm_tune.optuna_search import create_searcher

    pbt = space.scheduler.type == "pbt"
    return create_searcher(
        space.searcher,
        seed=space.seed,
        journal=journal,
        study_name=name,
        max_epochs=space.max_epochs,
        patience=space.base.patience,
        num_samples=space.num_samples,
        points_to_evaluate=[] if pbt else space.enqueue,  # PBT's generator runs them; the recorder records them
        seed_trials=warm_start.trials if warm_start else [],
        seed_source=warm_start.source if warm_start else "",
    )


def restorable(experiment: Location) -> bool:
    """Tune saved its state there (a folder holding only search_space.yaml is not restorable)."""
    names = experiment.files(".")
    return "tuner.pkl" in names and bool(_experiment_states(names))


def recorded_trial_ids(experiment: Location) -> set[str]:
    """The Tune trial ids in the experiment's newest saved state (its JSON, read without unpickling)."""
    return _trial_ids(experiment, max(_experiment_states(experiment.files("."))))


def check_states(experiment: Location) -> None:
    """ExperimentError naming the first of Tune's saved experiment states that it could not restore from
    (truncated by a full disk or a copy, edited): said in one line before Ray starts, not in Tune's traceback."""
    for name in sorted(_experiment_states(experiment.files("."))):
        try:
            _trial_ids(experiment, name)
        except (ValueError, KeyError, TypeError):  # JSONDecodeError is a ValueError
            raise ExperimentError(
                f"--resume: {experiment.child(name).uri} is not a Tune experiment state (damaged or truncated: "
                "it must be JSON with a trial_data list); restore it from a copy, or start a new --name"
            ) from None


def _trial_ids(experiment: Location, name: str) -> set[str]:
    state = json.loads(experiment.child(name).read_bytes())
    return {json.loads(trial)["trial_id"] for trial, _ in state["trial_data"]}


def _experiment_states(names: Sequence[str]) -> list[str]:
    """Tune's saved experiment states among an experiment folder's file names (top level only)."""
    return [n for n in names if n.startswith("experiment_state-") and "/" not in n]


def run_final_seeds(
    space: SearchSpace, shared: SharedInputs, experiment: Location, params: dict, n: int, concurrent: int
) -> list[dict]:
    """Retrain the winner on n further seeds (in parallel trials) and collect their test metrics."""
    seeds = [space.base.seed + i for i in range(1, n + 1)]
    return retrain(shared, experiment.child(FINAL_SEEDS), params, {"seed": seeds}, concurrent)


def run_ablations(
    shared: SharedInputs, folder: Location, params: dict, arms: list[str], seeds: list[int], concurrent: int
) -> list[dict]:
    """Retrain `params` once per ablation arm (core.model's `text_branch`) and seed, in `folder`."""
    return retrain(shared, folder, params, {"seed": seeds, "text_branch": arms}, concurrent)


RETRAINED = (
    *("test_mse", "test_mae", "test_windows", "test_window_mse", "best_val_mse", "best_val_mae"),
    *("parameters", "step_seconds"),
)


def retrain(shared: SharedInputs, folder: Location, params: dict, grid: dict[str, list], concurrent: int) -> list[dict]:
    """Train `params` at every combination of the `grid` values (parallel trials, every test window scored);
    each run's grid values and RETRAINED metrics."""
    from ray import tune

    runs = build_tuner(
        dataclasses.replace(shared, evaluate_test=True),
        folder,
        param_space={**params, **{key: tune.grid_search(values) for key, values in grid.items()}},
        concurrent=min(concurrent, math.prod(len(v) for v in grid.values())),
        verbose=0,
    ).fit()
    return [{**{k: r.config[k] for k in grid}, **{k: r.metrics.get(k) for k in RETRAINED}} for r in runs]
