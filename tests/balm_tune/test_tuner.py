"""What the tuner module does to a saved experiment before Tune restores it."""

import json

from balm_tune.storage import open_location
from balm_tune.tuner import forget_unsaved_epochs


def _trial(folder, name: str, saved_iteration: int | None, logged: int) -> None:
    """A trial folder whose logs hold `logged` epochs, Tune's state having recorded `saved_iteration`."""
    trial = folder / name
    trial.mkdir()
    rows = [{"training_iteration": i, "val_mse": 1.0 / i} for i in range(1, logged + 1)]
    (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (trial / "progress.csv").write_text(
        "val_mse,training_iteration\n" + "".join(f"{r['val_mse']},{r['training_iteration']}\n" for r in rows)
    )


def test_a_resume_drops_the_logged_epochs_that_tunes_saved_state_never_recorded(tmp_path):
    # Tune's final snapshot of a stopped search comes before its trials stop: trial a logged epoch 3 after it
    _trial(tmp_path, "a", saved_iteration=2, logged=3)
    _trial(tmp_path, "b", saved_iteration=2, logged=2)
    state = {
        "trial_data": [
            [json.dumps({"trial_id": t, "relative_logdir": t}), json.dumps({"last_result": {"training_iteration": 2}})]
            for t in ("a", "b")
        ]
    }
    (tmp_path / "experiment_state-2026-12-03_10-00-00.json").write_text(json.dumps(state))
    assert forget_unsaved_epochs(open_location(tmp_path)) == 2  # a's epoch 3 in both logs
    for name in ("a", "b"):
        lines = (tmp_path / name / "result.json").read_text().splitlines()
        assert [json.loads(line)["training_iteration"] for line in lines] == [1, 2]
        assert (tmp_path / name / "progress.csv").read_text().splitlines()[1:] == ["1.0,1", "0.5,2"]
