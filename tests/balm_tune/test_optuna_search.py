"""The experiment's Optuna study: every epoch an intermediate value, ASHA-stopped trials PRUNED, a journal
file that optuna.load_study, optuna-dashboard and later searches (warm starts) read."""

import dataclasses
import json
import math
import pickle
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher

from balm_tune.api import run_search
from balm_tune.experiment import JOURNAL
from balm_tune.optuna_search import (
    LOST,
    RAY_TRIAL_ID,
    UNRECORDED,
    WARM_START,
    StudySearch,
    StudyStopper,
    TuneView,
    forget_lost_trials,
    stall_of,
)
from balm_tune.space import load_space
from balm_tune.study import open_study
from tests.conftest import write_tiny_space

SEARCH = {"num_samples": 5, "max_epochs": 3}
STATES = {"finished": TrialState.COMPLETE, "stopped": TrialState.PRUNED, "failed": TrialState.FAIL}  # by outcome


@pytest.fixture(scope="module")
def ray_here():
    """One local Ray for this module's searches (run_search uses the Ray the process has started)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def search(ray_here, tmp_path_factory):
    """A tiny TPE + ASHA search: 5 trials of up to 3 epochs of 2 batches."""
    folder = tmp_path_factory.mktemp("study")
    space = write_tiny_space(folder, budget=SEARCH, base={"max_train_batches": 2})
    return run_search(space, name="study", storage=folder / "runs", sampler_seed=1)


def _epochs(experiment: Path, trial_id: str) -> dict[int, float]:
    """Every epoch's val MSE as the trial reported it to Tune (its result.json)."""
    (folder,) = experiment.glob(f"train_balm_{trial_id}_*")
    lines = [json.loads(line) for line in (folder / "result.json").read_text().splitlines()]
    return {r["epoch"]: r["val_mse"] for r in lines}


def test_the_study_in_the_experiment_folder_matches_the_leaderboard(search):
    study = optuna.load_study(
        study_name="study",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(search.paths["study"]))),
    )
    assert search.paths["study"] == search.experiment / JOURNAL
    by_ray_id = {t.user_attrs[RAY_TRIAL_ID]: t for t in study.trials}
    assert len(study.trials) == len(search.leaderboard) == SEARCH["num_samples"]
    for row in search.leaderboard.itertuples():
        trial = by_ray_id[row.trial_id]
        assert trial.state == STATES[row.outcome], row
        assert ("diverged" in trial.user_attrs) == (row.status == "diverged"), row
        assert trial.intermediate_values == _epochs(search.experiment, row.trial_id)  # every epoch, the last too
        assert len(trial.intermediate_values) == row.epochs_run
        if trial.state == TrialState.COMPLETE:
            assert trial.value == pytest.approx(row.best_val_mse)
        for key in ("prompt_len", "contrastive_weight", "scale_factor", "learning_rate"):
            assert trial.params[key] == pytest.approx(getattr(row, key))
    assert {TrialState.COMPLETE, TrialState.PRUNED} <= {t.state for t in study.trials}


def test_optuna_dashboard_lists_the_study_and_its_trials(search):
    import io
    from wsgiref.util import setup_testing_defaults

    import optuna_dashboard

    app = optuna_dashboard.wsgi(str(search.paths["study"]))  # what `optuna-dashboard <file>` serves

    def get(path: str):
        environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.errors": io.StringIO()}
        setup_testing_defaults(environ)
        status = []
        body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
        assert status == ["200 OK"], environ["wsgi.errors"].getvalue()[-2000:]
        return json.loads(body)

    (study,) = get("/api/studies")["study_summaries"]
    assert study["study_name"] == "study"
    trials = get(f"/api/studies/{study['study_id']}")["trials"]
    assert len(trials) == len(search.leaderboard)


def test_a_warm_started_search_sees_the_old_trials_and_runs_the_enqueued_config_first(search, tmp_path):
    first = {"prompt_len": 3, "contrastive_weight": 0.5, "scale_factor": 1.0, "learning_rate": 0.001}
    space = write_tiny_space(tmp_path, budget={"num_samples": 1, "max_epochs": 1}, base={"max_train_batches": 2})
    result = run_search(space, name="warm", storage=tmp_path, warm_start=search.experiment, enqueue=[first])
    study = open_study(result.paths["study"], "warm")
    old = open_study(search.paths["study"], "study")
    seeded = [t for t in study.trials if WARM_START in t.user_attrs]
    finished = [t for t in old.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert [t.params for t in seeded] == [t.params for t in finished]
    assert [t.intermediate_values for t in seeded] == [t.intermediate_values for t in finished]
    (new,) = [t for t in study.trials if WARM_START not in t.user_attrs]
    assert new.number == len(seeded) and new.params == first  # after the seeds: the enqueued config
    assert result.summary.warm_start == {"from": str(search.experiment), "trials": len(finished)}


# --- the searcher as Tune drives it, without training --------------------------------------------------------
def _searcher(tmp_path: Path, sampler=None, **options) -> StudySearch:
    tmp_path.mkdir(exist_ok=True)
    space = load_space(write_tiny_space(tmp_path))
    searcher = StudySearch(
        tmp_path / JOURNAL,
        "s",
        sampler or optuna.samplers.RandomSampler(seed=0),
        max_epochs=4,
        patience=3,
        **options,
    )
    searcher.set_search_properties("best_val_mse", "min", space.param_space())
    return searcher


def _epoch(epoch: int, val_mse: float, best: float, **extra) -> dict:
    return {"epoch": epoch, "val_mse": val_mse, "best_val_mse": best, "bad_epochs": 0, **extra}


def test_a_trial_the_scheduler_stops_is_pruned_with_every_epoch_reported(tmp_path):
    searcher = _searcher(tmp_path)
    searcher.suggest("a")
    searcher.on_trial_result("a", _epoch(1, 0.9, 0.9))
    # Tune withholds the result that made ASHA stop the trial and passes it to on_trial_complete only
    searcher.on_trial_complete("a", result=_epoch(2, 0.8, 0.8))
    (trial,) = searcher.study.trials
    assert trial.state == TrialState.PRUNED and trial.intermediate_values == {1: 0.9, 2: 0.8}


def test_finished_trials_are_complete_with_their_best_and_diverged_or_crashed_ones_fail(tmp_path):
    searcher = _searcher(tmp_path)
    for trial_id in "abc":
        searcher.suggest(trial_id)
    for epoch, value in ((1, 0.9), (2, 0.7), (3, 0.8)):
        searcher.on_trial_result("a", _epoch(epoch, value, min(value, 0.7)))
    searcher.on_trial_complete("a", result=_epoch(4, 0.75, 0.7))
    searcher.on_trial_complete("b", result=_epoch(1, math.inf, math.inf, failed="training loss became nan"))
    searcher.on_trial_complete("c", error=True)
    a, b, c = searcher.study.trials
    assert (
        a.state == TrialState.COMPLETE and a.value == 0.7 and a.intermediate_values == {1: 0.9, 2: 0.7, 3: 0.8, 4: 0.75}
    )
    assert b.state == c.state == TrialState.FAIL


def test_pruned_trials_complete_reproduces_rays_optunasearch(tmp_path):
    searcher = _searcher(tmp_path, pruned_trials="complete")
    searcher.suggest("a")
    searcher.on_trial_complete("a", result=_epoch(1, 0.9, 0.9))
    (trial,) = searcher.study.trials
    assert trial.state == TrialState.COMPLETE and trial.value == 0.9


class SeenBySampler(optuna.samplers.RandomSampler):
    """Records how many finished trials the study showed the sampler when it proposed each value."""

    def __init__(self):
        super().__init__(seed=0)
        self.seen: list[int] = []

    def sample_independent(self, study, trial, name, distribution):
        self.seen.append(len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))))
        return super().sample_independent(study, trial, name, distribution)


def test_warm_start_trials_are_visible_to_the_sampler_before_the_first_new_trial(tmp_path):
    old = _searcher(tmp_path / "old")
    for i, trial_id in enumerate("abc"):
        old.suggest(trial_id)
        old.on_trial_complete(trial_id, result=_epoch(4 if i else 1, 0.5 + i, 0.5 + i))
    spy = SeenBySampler()
    new = _searcher(tmp_path / "new", sampler=spy, seed_trials=old.study.trials, seed_source="old")
    new.suggest("first")
    assert spy.seen and set(spy.seen) == {3}  # every value of the first new trial saw the 3 old trials
    seeded = new.study.trials[:3]
    assert [t.state for t in seeded] == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.COMPLETE]
    assert [t.user_attrs[WARM_START] for t in seeded] == ["old#0", "old#1", "old#2"]


def _restored(first: StudySearch, tmp_path: Path, **options) -> StudySearch:
    """Tuner.restore: `first`'s snapshot restored into the searcher as tuner.pkl holds it (built, with its
    sampler's seed, before Tune gave it the space)."""
    first.save(str(tmp_path / "searcher.pkl"))
    unfit = StudySearch(
        tmp_path / JOURNAL, "s", optuna.samplers.RandomSampler(seed=0), max_epochs=4, patience=3, **options
    )
    again = pickle.loads(pickle.dumps(unfit))
    again.restore(str(tmp_path / "searcher.pkl"))
    return again


def test_a_restored_searcher_keeps_its_space_and_neither_reseeds_nor_reenqueues(tmp_path):
    point = {"prompt_len": 4, "contrastive_weight": 1.0, "scale_factor": 1.0, "learning_rate": 0.002}
    first = _searcher(tmp_path, points_to_evaluate=[point])
    assert first.suggest("a") == point
    again = _restored(first, tmp_path, points_to_evaluate=[point])
    again.on_trial_result("a", _epoch(1, 0.9, 0.9))
    second = again.suggest("b")
    assert set(second) == set(point) and second != point and len(again.study.trials) == 2
    assert again.study.trials[0].intermediate_values == {1: 0.9}


def test_a_restored_searcher_does_not_propose_the_interrupted_searchs_configurations_again(tmp_path):
    first = _searcher(tmp_path)
    before = [first.suggest(trial_id) for trial_id in "ab"]
    assert _restored(first, tmp_path).suggest("c") not in before  # its sampler was pickled as built, seed 0


def test_the_study_keeps_the_budget_and_trials_lost_at_a_kill_do_not_count(tmp_path):
    first = _searcher(tmp_path, num_samples=3)
    assert all(first.suggest(t) for t in "abc") and first.suggest("d") == Searcher.FINISHED
    # the driver was killed after asking for c; the experiment state Ray saved records a and b only
    assert forget_lost_trials(tmp_path / JOURNAL, "s", recorded={"a", "b"}) == 1
    lost = first.study.trials[2]
    assert lost.state == TrialState.FAIL and lost.user_attrs[LOST]
    again = _restored(first, tmp_path, num_samples=3)
    # whatever trial count Ray restores, the study allows one more trial: 3 in all
    assert isinstance(again.suggest("e"), dict) and again.suggest("f") == Searcher.FINISHED


def test_a_trial_the_study_closed_but_tunes_saved_state_never_recorded_is_trained_again(tmp_path):
    # Tune saves its state every few seconds (or not at all while the disk is full); the study is told at once
    first = _searcher(tmp_path, num_samples=3)
    assert all(isinstance(first.suggest(t), dict) for t in "abc")
    first.on_trial_complete("a", result=_epoch(4, 0.5, 0.5))
    first.on_trial_complete("c", result=_epoch(4, 0.4, 0.4))  # finished after Tune's newest saved state
    assert forget_lost_trials(tmp_path / JOURNAL, "s", recorded={"a", "b"}) == 1
    assert forget_lost_trials(tmp_path / JOURNAL, "s", recorded={"a", "b"}) == 0  # a second resume: once
    again = _restored(first, tmp_path, num_samples=3)
    assert again.study.trials[2].state == TrialState.COMPLETE  # the sampler still sees what c measured
    assert again.study.user_attrs[UNRECORDED] == ["c"]
    assert isinstance(again.suggest("d"), dict) and again.suggest("e") == Searcher.FINISHED  # c's place again


def test_a_restored_searcher_takes_its_running_trials_from_the_study_not_from_its_snapshot(tmp_path):
    # the kill of issue 18: Ray uploaded a searcher snapshot newer than the experiment state it restores from
    first = _searcher(tmp_path, num_samples=4)
    first.set_max_concurrency(1)
    assert isinstance(first.suggest("a"), dict)
    first.on_trial_complete("a", result=_epoch(4, 0.5, 0.5))
    assert isinstance(first.suggest("b"), dict)  # in the snapshot; the experiment state records only a
    first.save(str(tmp_path / "searcher.pkl"))
    assert forget_lost_trials(tmp_path / JOURNAL, "s", recorded={"a"}) == 1
    again = _restored(first, tmp_path, num_samples=4)
    again.set_max_concurrency(1)
    assert again._ids == {}  # b is lost: it holds no place that a trial Tune never runs would never free
    assert isinstance(again.suggest("c"), dict) and again.suggest("d") is None  # one at a time
    again.on_trial_complete("c", result=_epoch(4, 0.6, 0.6))
    assert isinstance(again.suggest("d"), dict) and again.suggest("e") is None
    again.on_trial_complete("d", result=_epoch(4, 0.7, 0.7))
    assert isinstance(again.suggest("e"), dict)  # the lost b does not count: exactly the missing trials
    again.on_trial_complete("e", result=_epoch(4, 0.8, 0.8))
    assert again.suggest("f") == Searcher.FINISHED
    assert [t.state for t in again.study.trials].count(TrialState.COMPLETE) == 4


def test_a_searcher_that_can_neither_propose_nor_finish_ends_the_search_with_one_line(tmp_path, capsys):
    searcher = _searcher(tmp_path, num_samples=4)
    searcher.set_max_concurrency(1)
    assert isinstance(searcher.suggest("a"), dict)
    assert searcher.suggest("b") is None  # a was just suggested: Tune has not shown its trials since
    searcher.tune_holds({"a"})
    assert searcher.suggest("b") is None  # Tune runs a: its end frees the place
    # Tune ends its step holding no unfinished trial, yet a stays open: no trial can ever free the place
    view = TuneView(searcher)
    view.on_step_end(iteration=3, trials=[])
    assert searcher.suggest("b") == Searcher.FINISHED
    line = capsys.readouterr().out.strip()
    assert line.count("\n") == 0 and line.startswith("warning: the search stalled")
    assert "Tune ids a" in line and "after 1 of 4 trials" in line
    assert stall_of(tmp_path / JOURNAL, "s") == line.removeprefix("warning: ")


def test_the_view_and_its_searcher_stay_one_object_through_tuner_pkl(tmp_path):
    searcher = _searcher(tmp_path)
    again, view = pickle.loads(pickle.dumps((searcher, TuneView(searcher))))  # tuner.pkl: one pickle of both
    assert view.searcher is again


def test_a_searcher_without_a_snapshot_adopts_the_studys_open_trials_with_their_reported_epochs(tmp_path):
    # PBT's StudyRecorder after --resume: Ray restores no state for it; the study in the journal has it all
    first = _searcher(tmp_path)
    first.suggest("a")
    first.suggest("b")
    first.on_trial_result("a", _epoch(1, 0.9, 0.9))
    first.on_trial_complete("b", result=_epoch(4, 0.5, 0.5))
    again = _searcher(tmp_path)
    again.adopt_open_trials()
    assert again._ids == {"a": first._ids["a"]} and again._steps == {"a": {1}}  # b is finished: not open
    again.on_trial_result("a", _epoch(1, 0.9, 0.9))  # replayed epoch: not reported twice
    again.on_trial_complete("a", result=_epoch(2, 0.8, 0.8))
    assert len(again.study.trials) == 2 and again.study.trials[0].intermediate_values == {1: 0.9, 2: 0.8}


def test_the_stopper_stops_trials_the_study_closed_and_leaves_running_and_failed_ones(tmp_path):
    # after --resume Tune can run a trial the searcher closed after Tune's last snapshot
    searcher = _searcher(tmp_path)
    for trial_id in "abcd":
        searcher.suggest(trial_id)
    searcher.on_trial_complete("a", result=_epoch(1, 0.9, 0.9))  # pruned
    searcher.on_trial_complete("b", result=_epoch(4, 0.5, 0.5))  # complete
    searcher.on_trial_complete("c", error=True)  # failed: Tune resumes errored trials on purpose
    stopper = pickle.loads(pickle.dumps(StudyStopper(tmp_path / JOURNAL, "s")))  # as tuner.pkl holds it
    assert [stopper(t, _epoch(2, 0.8, 0.8)) for t in "abcd"] == [True, True, False, False]
    assert StudyStopper(tmp_path / JOURNAL, "s", last_epoch=4)("d", _epoch(4, 0.8, 0.8))  # PBT has no max_t
    assert searcher.recorded("a") and not searcher.recorded("e")


@pytest.mark.parametrize("preset", sorted(Path("search_spaces").glob("paper_*.yaml")), ids=lambda p: p.stem)
def test_the_paper_presets_evaluate_the_official_configuration_first(preset, tmp_path):
    space = load_space(preset)
    official = space.enqueue[0]
    assert official["contrastive_weight"] == 1.0 and official["scale_factor"] == 1.0
    assert official["prompt_len"] == dataclasses.replace(space.base, prompt_len=None).resolved_prompt_len
    searcher = StudySearch(
        tmp_path / JOURNAL,
        "p",
        optuna.samplers.TPESampler(seed=0),
        max_epochs=2,
        patience=2,
        points_to_evaluate=space.enqueue,
    )
    searcher.set_search_properties("best_val_mse", "min", space.param_space())
    assert searcher.suggest("t0") == official


def test_tunes_param_space_keeps_the_search_keys_as_optuna_param_names(tmp_path):
    searcher = _searcher(tmp_path)
    assert set(searcher.suggest("a")) == {"prompt_len", "contrastive_weight", "scale_factor", "learning_rate"}
    assert isinstance(searcher.study.trials[0].distributions["prompt_len"], optuna.distributions.IntDistribution)


@pytest.mark.parametrize(
    ("flag", "content", "message"),
    [
        (
            "--enqueue",
            "- {prompt_len: 99}\n",
            "--enqueue .*enq.yaml: 'enqueue\\[0\\].prompt_len': got 99, expected int",
        ),
        ("--enqueue", "prompt_len: 3\n", "--enqueue .*enq.yaml: 'enqueue': expected a list of mappings"),
        ("--warm-start", None, "--warm-start .*nowhere: no Optuna study at .*nowhere/optuna.journal"),
    ],
)
def test_a_bad_enqueue_file_or_warm_start_is_one_line_and_exit_2(tmp_path, capsys, flag, content, message):
    import re

    from balm_tune.search import main

    value = str(tmp_path / "nowhere")
    if content is not None:
        value = str(tmp_path / "enq.yaml")
        Path(value).write_text(content)
    code = main(["--space", str(write_tiny_space(tmp_path)), "--storage", str(tmp_path / "runs"), flag, value])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "runs").exists()


def test_a_resumed_search_refuses_enqueue_and_warm_start(tmp_path):
    from balm_tune.api import prepare_search
    from balm_tune.space import SpaceError

    for option in ({"enqueue": [{"prompt_len": 3}]}, {"warm_start": tmp_path}):
        with pytest.raises(SpaceError, match="start a new study; a resumed search continues its own"):
            prepare_search(write_tiny_space(tmp_path), name="x", storage=tmp_path, resume=True, **option)
