"""A Ray Tune searcher whose Optuna study sees the search as Optuna's own pruners would make it.

Re-read against Ray 2.60's `ray.tune.search.optuna.OptunaSearch`, which now takes `storage`, `study_name`
and `points_to_evaluate` and reports every result as an intermediate value. What it still does not do,
and `StudySearch` is kept for (it reuses OptunaSearch's space conversion, nothing else):

1. Outcomes. Tune withholds the stopping result from `on_trial_result` and calls
   `on_trial_complete(trial_id, result=last_result)` for a scheduler-stopped trial exactly as for one that
   ran to the end (ASHA also stops a trial at max_t); OptunaSearch marks PRUNED only a trial without a
   result, so every ASHA-pruned trial is COMPLETE with its last value. Here the outcome is read from the
   trial's own metrics (`balm_tune.outcome.trial_outcome`): pruned trials end PRUNED (so importances and
   samplers see them as Optuna's pruners make them), diverged and crashed trials FAIL.
2. Resume from the study. OptunaSearch pickles its whole state (the in-memory trial map and a study
   handle) into Tune's searcher snapshot; after a killed driver the snapshot and the study can disagree
   and the resumed search waits for a trial Tune never runs (issue 18). Here the snapshot holds only the
   space; the open trials, the budget and the concurrency come from the study on every restore.
3. Enqueued configs and warm-start trials only when the study is new (never repeated on --resume), the
   Tune id on every Optuna trial (`ray_trial_id`), and the stall guard (`TuneView`).

In detail:

- every epoch's validation MSE is an intermediate value of the Optuna trial (`trial.report(v, step=epoch)`),
  the last one included;
- scheduler-stopped trials end PRUNED, crashed or diverged trials FAIL, finished ones COMPLETE with their
  best validation MSE;
- the study lives in a JournalStorage file (`<experiment>/optuna.journal`, study name = experiment name):
  optuna-dashboard, `optuna.load_study` and `--resume` read it; each Optuna trial carries the Tune trial
  id as user attribute `ray_trial_id`;
- configs to evaluate first are enqueued, and another study's finished trials can seed the sampler, both
  only when the study is new (a resumed search neither repeats nor re-seeds them);
- after `--resume`, a trial the study closed after Tune's last snapshot is stopped at its first result
  (`StudyStopper`): the study keeps what it recorded;
- the study is the record of the budget and of the running trials: this searcher limits concurrency itself
  (Tune's `ConcurrencyLimiter` passes through) and rebuilds its open trials from the study on a restore, so
  Tune state files of different moments (a driver killed while Ray uploads them) cannot leave it waiting for
  a trial Tune never runs; if it ever would, it ends the search with one line instead (`TuneView`).
"""

from __future__ import annotations

import contextlib
import math
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState
from ray.tune import Callback
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import Stopper

from balm_tune.compat import storage_id
from balm_tune.outcome import trial_outcome
from balm_tune.strategies import STUDY_OPTIONS, Strategy, create_sampler
from balm_tune.study import existing_study, open_study

RAY_TRIAL_ID = "ray_trial_id"
WARM_START = "warm_start_from"
LOST = "lost"  # asked just before the driver was killed, never recorded by Tune
UNRECORDED = "unrecorded_trials"  # study attribute: Tune ids of trials it closed that Tune's state never saved
STALLED = "stalled"  # study user attribute: why the searcher ended a search that could not go on


def create_searcher(
    strategy: Strategy,
    *,
    seed: int,
    journal: Path,
    study_name: str,
    max_epochs: int,
    patience: int,
    num_samples: int | None = None,
    points_to_evaluate: list[dict] = (),
    seed_trials: list = (),
    seed_source: str = "",
):
    """The Tune searcher of a `searcher:` section (balm_tune.strategies): `StudySearch` around the seeded
    Optuna sampler."""
    return StudySearch(
        journal,
        study_name,
        create_sampler(strategy, seed),
        max_epochs=max_epochs,
        patience=patience,
        num_samples=num_samples,
        pruned_trials=strategy.options.get("pruned_trials", "pruned"),
        points_to_evaluate=points_to_evaluate,
        seed_trials=seed_trials,
        seed_source=seed_source,
    )


class StudySearch(Searcher):
    """Tune searcher: an Optuna sampler proposes, the study in `journal` records every epoch and outcome."""

    def __init__(
        self,
        journal: Path,
        study_name: str,
        sampler: optuna.samplers.BaseSampler,
        *,
        max_epochs: int,
        patience: int,
        num_samples: int | None = None,
        metric: str = "best_val_mse",
        intermediate: str = "val_mse",
        pruned_trials: str = "pruned",
        points_to_evaluate: Iterable[dict] = (),
        seed_trials: Iterable[FrozenTrial] = (),
        seed_source: str = "",
    ):
        super().__init__(metric=metric, mode="min")
        if pruned_trials not in STUDY_OPTIONS["pruned_trials"]:
            raise ValueError(f"pruned_trials: got {pruned_trials!r}, expected one of {STUDY_OPTIONS['pruned_trials']}")
        self.journal, self.study_name, self.sampler = Path(journal), study_name, sampler
        self.max_epochs, self.patience, self.num_samples = max_epochs, patience, num_samples
        self.intermediate, self.pruned_trials = intermediate, pruned_trials
        self.points_to_evaluate, self.seed_trials = list(points_to_evaluate), list(seed_trials)
        self.seed_source = seed_source
        self.max_concurrent: int | None = None  # Tune's max_concurrent_trials (set_max_concurrency)
        self._space: dict[str, BaseDistribution] = {}
        # the open trials: Tune trial id -> Optuna storage trial id (rebuilt from the study on a restore)
        self._ids: dict[str, int] = {}
        self._steps: dict[str, set[int]] = {}  # epochs already reported, per Tune trial id
        self._trials: dict[str, optuna.Trial] = {}  # live handles, rebuilt from _ids after a restore
        self._study: optuna.Study | None = None
        self._held: set[str] | None = None  # Tune's unfinished trials at its last step end (TuneView)
        self._fresh: set[str] = set()  # trials suggested since then

    # --- Tune's Searcher interface ------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        """Called by Tune with the param_space: open (or create) the study and convert the space."""
        if mode not in (None, "min"):
            raise ValueError(f"StudySearch minimises; got mode {mode!r}")
        self._metric = metric or self._metric
        self._space = OptunaSearch.convert_search_space(config)
        self.study  # noqa: B018  (opens the file now: a bad path fails before any trial starts)
        return True

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self.journal.parent.mkdir(parents=True, exist_ok=True)
            study = open_study(self.journal, self.study_name, create=True, sampler=self.sampler)
            if not study.trials:  # a new study: seed it, then queue the configs to run first
                seed_study(study, self.seed_trials, self._space, self.seed_source)
                for point in self.points_to_evaluate:
                    study.enqueue_trial(point, skip_if_exists=True)
            self._study = study
        return self._study

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Tune's `max_concurrent_trials`, applied here (True: Tune's ConcurrencyLimiter passes through).
        The limiter would keep its own list of live trials in Tune's state files; after a kill while Ray
        uploads them, that list can hold a trial Tune never runs, and the search would wait for it forever."""
        self.max_concurrent = max_concurrent
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        if trial_id not in self._ids:
            if self.num_samples is not None and self._asked() >= self.num_samples:
                return Searcher.FINISHED  # the budget's record is the study (see `_asked`)
            if self.max_concurrent and len(self._ids) >= self.max_concurrent:
                return self._wait()
            trial = self.study.ask(fixed_distributions=self._space)
            trial.set_user_attr(RAY_TRIAL_ID, trial_id)
            # the storage id (Optuna's Trial(study, id) handle after a restore); the number is not enough
            self._ids[trial_id], self._trials[trial_id], self._steps[trial_id] = storage_id(trial), trial, set()
            self._fresh.add(trial_id)
        return dict(self._trial(trial_id).params)

    def tune_holds(self, unfinished: set[str]) -> None:
        """Tune's unfinished trials at the end of its step (TuneView calls this)."""
        self._held, self._fresh = unfinished, set()

    def _wait(self) -> str | None:
        """Every place is taken: wait (None) while Tune runs a trial that can free one; if Tune holds no
        unfinished trial, the open trials are ones it will never run: end the search (FINISHED) with one
        line, kept in the study as user attribute `stalled`, instead of waiting forever."""
        if self._held is None or self._held or self._fresh:
            return None
        ids = ", ".join(sorted(self._ids))
        message = (
            f"the search stalled: the study holds {len(self._ids)} open trial(s) (Tune ids {ids}) that Tune does "
            f"not run, and Tune holds no unfinished trial; ended after {self._asked()} of {self.num_samples} trials"
        )
        print(f"warning: {message}", flush=True)
        self.study.set_user_attr(STALLED, message)
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._ids:  # never asked here, or already told
            return
        trial, result = self._trial(trial_id), result or {}
        self._report(trial_id, result)  # Tune withholds the result that made the scheduler stop the trial
        outcome, reason = trial_outcome(result, self.max_epochs, self.patience, "error" if error else None)
        state, value = outcome.optuna_state, result.get(self.metric)
        with contextlib.suppress(UpdateFinishedTrialError):  # told before a driver crash (see _report)
            trial.set_user_attr("outcome", outcome.value)
            trial.set_user_attr("reason", reason)
            if result.get("diverged"):  # balm_tune.outcome.trial_status: why it diverged
                trial.set_user_attr("diverged", result["diverged"])
        if state == TrialState.PRUNED and self.pruned_trials == "complete":
            state = TrialState.COMPLETE  # what Ray's OptunaSearch does: the partial value as if final
        if state == TrialState.COMPLETE and not _finite(value):
            state, value = TrialState.FAIL, None
        self.study.tell(trial, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)
        for table in (self._ids, self._steps, self._trials):
            table.pop(trial_id, None)

    def adopt_open_trials(self) -> None:
        """Take the study's RUNNING trials that carry a Tune id as this searcher's own (after a restore:
        `forget_lost_trials` has closed those Tune's state does not record)."""
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            trial_id = trial.user_attrs.get(RAY_TRIAL_ID)
            if trial_id and trial_id not in self._ids:
                self._ids[trial_id], self._steps[trial_id] = storage_id(trial), set(trial.intermediate_values)

    def recorded(self, trial_id: str) -> bool:
        """The study holds an Optuna trial for this Tune trial."""
        return _holds(self.study.get_trials(deepcopy=False), trial_id)

    # --- Tune's searcher snapshot: the space; the study (open trials, budget) is the journal file ------
    def __getstate__(self) -> dict:
        return {**self.__dict__, "_study": None, "_trials": {}, "_held": None, "_fresh": set()}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump({"space": self._space}, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            state = pickle.load(handle)
        # Tune.restore does not call set_search_properties again: the space comes back from here
        self._space, self._trials = state["space"], {}
        # the open trials come from the study, not from this snapshot: Ray uploads its state files one by one,
        # so this one can be a step newer than the experiment state that Tune restores its trials from
        self._ids, self._steps = {}, {}
        self.adopt_open_trials()
        # the sampler comes back from tuner.pkl as it was built: with its seed's first draws still to come,
        # it would propose the first configurations of the interrupted search again
        self.sampler.reseed_rng()

    # --- helpers --------------------------------------------------------------------------------------
    def _asked(self) -> int:
        """Trials this experiment has asked the study for, those Tune's state lost (`forget_lost_trials`)
        not counted. The study is the budget's record: after a driver is killed while Ray uploads its state,
        the experiment state in the storage can list more trials than Ray's saved trial counter, and Ray
        alone would then run extra trials."""
        unrecorded = set(self.study.user_attrs.get(UNRECORDED, ()))
        return sum(
            1
            for t in self.study.get_trials(deepcopy=False)
            if t.user_attrs.get(RAY_TRIAL_ID) not in unrecorded | {None} and not t.user_attrs.get(LOST)
        )

    def _trial(self, trial_id: str) -> optuna.Trial:
        if trial_id not in self._trials:
            self._trials[trial_id] = optuna.Trial(self.study, self._ids[trial_id])
        return self._trials[trial_id]

    def _report(self, trial_id: str, result: dict) -> None:
        value, epoch = result.get(self.intermediate), result.get("epoch")
        if (
            trial_id in self._ids
            and epoch
            and _finite(value)
            and int(epoch) not in self._steps.setdefault(trial_id, set())
        ):
            # after --resume, Tune's snapshot (seconds behind the journal) can run a trial the study has
            # already closed: the study keeps what it recorded
            with contextlib.suppress(UpdateFinishedTrialError):
                self._trial(trial_id).report(float(value), step=int(epoch))
            self._steps[trial_id].add(int(epoch))


def seed_study(
    study: optuna.Study, trials: Iterable[FrozenTrial], space: dict[str, BaseDistribution], source: str
) -> int:
    """Copy finished trials of another study (same searched keys, values inside this space) into `study`,
    with their intermediate values and `warm_start_from` = '<source>#<number>': the sampler sees them
    before it proposes the first new trial. Returns how many were copied."""
    added = 0
    for trial in trials:
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED) or set(trial.params) != set(space):
            continue
        if not all(_contains(space[k], v) for k, v in trial.params.items()):
            continue
        study.add_trial(
            optuna.trial.create_trial(
                state=trial.state,
                value=trial.value,
                params=trial.params,
                distributions=space,
                intermediate_values=trial.intermediate_values,
                user_attrs={WARM_START: f"{source}#{trial.number}"},
            )
        )
        added += 1
    return added


def finished_trials(journal: Path, name: str) -> list[FrozenTrial]:
    """COMPLETE and PRUNED trials of the study `name` in `journal` (a warm start's source)."""
    return open_study(journal, name).get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def close_study(journal: Path, name: str) -> int:
    """Mark trials still RUNNING after the search as FAIL (asked just before the driver was killed, never
    recorded by Tune); returns how many."""
    study = existing_study(journal, name)
    if study is None:
        return 0
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in running:
        study.tell(trial.number, state=TrialState.FAIL)
    return len(running)


def stall_of(journal: Path, name: str) -> str | None:
    """Why the searcher ended the search early (`StudySearch._wait`), or None."""
    study = existing_study(journal, name)
    return None if study is None else study.user_attrs.get(STALLED)


def forget_lost_trials(journal: Path, name: str, recorded: set[str]) -> int:
    """Before a --resume: the study's trials whose Tune id the experiment state does not record no longer
    count against num_samples, so the resumed search trains exactly the missing trials and never waits for
    one Tune will not run. A RUNNING one (asked just before the driver was killed) is marked FAIL and lost;
    a finished one (closed by the study while Tune's snapshots were behind it: a kill within Tune's snapshot
    period, or state writes failing) keeps its record for the sampler and is listed in the study attribute
    `unrecorded_trials` (Optuna allows no attribute on a finished trial). Returns how many."""
    study = existing_study(journal, name)
    if study is None:
        return 0
    unrecorded = set(study.user_attrs.get(UNRECORDED, ()))
    lost = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get(RAY_TRIAL_ID) not in recorded | unrecorded | {None} and not t.user_attrs.get(LOST)
    ]
    for trial in lost:
        if trial.state == TrialState.RUNNING:
            optuna.Trial(study, storage_id(trial)).set_user_attr(LOST, True)
            study.tell(trial.number, state=TrialState.FAIL)
    closed = {t.user_attrs[RAY_TRIAL_ID] for t in lost if t.state.is_finished()}
    if closed:
        study.set_user_attr(UNRECORDED, sorted(unrecorded | closed))
    return len(lost)


def _contains(distribution: BaseDistribution, value: Any) -> bool:
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    return distribution.low <= value <= distribution.high


def _holds(trials: Iterable[FrozenTrial], trial_id: str) -> bool:
    """One of these Optuna trials is the Tune trial `trial_id`."""
    return any(t.user_attrs.get(RAY_TRIAL_ID) == trial_id for t in trials)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


class StudyStopper(Stopper):
    """Stops a Tune trial the study has already closed COMPLETE or PRUNED; with `last_epoch`, also every
    trial at that epoch (PBT has no max_t).

    Tune snapshots its trials every few seconds; the searcher tells the study at once. A driver killed in
    between leaves a trial the study has closed that Tune's snapshot still holds as running: `--resume`
    restores it from its checkpoint, and the restored scheduler, which starts with empty rungs, could let it
    train to max_epochs. It is stopped at its first result instead; the study keeps what it recorded.
    Trials the study marked FAIL are left alone (Tune resumes errored trials on purpose)."""

    def __init__(self, journal: Path, study_name: str, last_epoch: int | None = None):
        self.journal, self.study_name, self.last_epoch = Path(journal), study_name, last_epoch
        self._study: optuna.Study | None = None

    def __call__(self, trial_id: str, result: dict) -> bool:
        if self.last_epoch is not None and result.get("epoch", 0) >= self.last_epoch:
            return True
        if self._study is None:
            self._study = open_study(self.journal, self.study_name)
        return _holds(self._study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)), trial_id)

    def stop_all(self) -> bool:
        return False

    def __getstate__(self) -> dict:  # pickled into tuner.pkl; the study is reopened from the journal
        return {**self.__dict__, "_study": None}


class TuneView(Callback):
    """Tells the searcher, at the end of every Tune step, which trials Tune holds unfinished: its guard
    against waiting for a trial that Tune will never run (`StudySearch._wait`). It holds the searcher
    itself; tuner.pkl pickles both at once, so a restored search keeps the two together."""

    def __init__(self, searcher: StudySearch):
        self.searcher = searcher

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        self.searcher.tune_holds({t.trial_id for t in trials if not t.is_finished()})


class StudyRecorder(Callback):
    """Records a search that runs without a searcher (PBT: Ray allows none beside it) in the same kind of
    study: each Tune trial becomes an Optuna trial with its starting params (PBT may replace them later;
    the trial's `outcome` says so), every epoch's val MSE and its outcome, through a `StudySearch`."""

    def __init__(self, searcher: StudySearch, param_space: dict):
        self.searcher, self.param_space = searcher, param_space

    def setup(self, **info) -> None:
        """Opens the study; on --resume its open trials (with their Tune ids and reported epochs) are
        taken from the study itself, so this callback keeps no state of its own in Ray's snapshot."""
        self.searcher.set_search_properties(self.searcher.metric, "min", self.param_space)
        self.searcher.adopt_open_trials()

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        # not on a restart after a PBT exploit or a crash, nor for a trial the study closed before a --resume
        if trial.trial_id not in self.searcher._ids and not self.searcher.recorded(trial.trial_id):
            self.searcher.study.enqueue_trial({k: _plain(trial.config[k]) for k in self.param_space})
            self.searcher.suggest(trial.trial_id)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self.searcher.on_trial_result(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.searcher.on_trial_complete(trial.trial_id, trial.last_result)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.searcher.on_trial_complete(trial.trial_id, error=True)


def _plain(value: Any) -> Any:
    """numpy scalars (Tune's samplers) -> Python numbers (Optuna's distributions compare them)."""
    return value.item() if hasattr(value, "item") else value
