"""The Ray Tune set-up of a search (Optuna TPE proposes, ASHA prunes) and of the winner's retraining."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from balm_tune.space import SearchSpace
from balm_tune.storage import Location
from balm_tune.trainable import SharedInputs, trial_trainable

SYNC_PERIOD_S = 10  # the driver's experiment state reaches remote storage at most this late (Ray's default: 300)


def make_tuner(
    space: SearchSpace,
    shared: SharedInputs,
    experiment: Location,
    concurrent: int,
    resume: bool,
    extra_callbacks: Sequence = (),
    trust_experiment: bool = False,
):
    """The search's `tune.Tuner` (or the interrupted one restored from `experiment`, a path or URI,
    after its pickles are verified: balm_tune.integrity); `extra_callbacks` are added to its loggers
    (experiment trackers, balm_tune.trackers). A folder Tune never saved its state to starts afresh."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from balm_tune.callbacks import TrialLines, loggers
    from balm_tune.integrity import Sealer, verify

    trainable = trial_trainable(shared)
    if resume and restorable(experiment):
        if not trust_experiment:
            verify(experiment)
        return tune.Tuner.restore(experiment.uri, trainable=trainable, resume_errored=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return tune.Tuner(
        trainable,
        param_space=space.param_space(),
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(sampler=optuna.samplers.TPESampler(seed=space.seed)),
            scheduler=ASHAScheduler(
                time_attr="training_iteration",
                max_t=space.max_epochs,
                grace_period=space.grace_period,
                reduction_factor=space.reduction_factor,
            ),
            metric="best_val_mse",
            mode="min",
            num_samples=space.num_samples,
            max_concurrent_trials=min(concurrent, space.num_samples),
            reuse_actors=True,  # one worker process runs trial after trial: no per-trial import and start-up
        ),
        run_config=tune.RunConfig(
            name=experiment.name,
            storage_path=experiment.parent.uri,
            sync_config=tune.SyncConfig(sync_period=SYNC_PERIOD_S),
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[*loggers(), *extra_callbacks, TrialLines(space.max_epochs, space.base.patience), Sealer()],
        ),
    )


def restorable(experiment: Location) -> bool:
    """Tune saved its state there (a folder holding only search_space.yaml is not restorable)."""
    names = experiment.files(".")
    return "tuner.pkl" in names and any(n.startswith("experiment_state-") and "/" not in n for n in names)


def run_final_seeds(
    space: SearchSpace, shared: SharedInputs, experiment: Location, params: dict, n: int, concurrent: int
) -> list[dict]:
    """Retrain the winner on n further seeds (in parallel trials) and collect their test metrics."""
    from ray import tune

    from balm_tune.callbacks import loggers

    seeds = [space.base.seed + i for i in range(1, n + 1)]
    trainable = trial_trainable(dataclasses.replace(shared, evaluate_test=True))
    grid = tune.Tuner(
        trainable,
        param_space={**params, "seed": tune.grid_search(seeds)},
        tune_config=tune.TuneConfig(max_concurrent_trials=min(concurrent, n)),
        run_config=tune.RunConfig(name="final_seeds", storage_path=experiment.uri, verbose=0, callbacks=loggers()),
    )
    results = grid.fit()
    return [
        {"seed": r.config["seed"], "test_mse": r.metrics.get("test_mse"), "test_mae": r.metrics.get("test_mae")}
        for r in results
    ]
