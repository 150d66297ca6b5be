"""What a search leaves behind: leaderboard.csv, best_config.yaml, the winner's checkpoint, summary.json."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

from ray.tune import ResultGrid

from balm_tune.outcome import Outcome, trial_outcome
from balm_tune.space import SearchSpace
from balm_tune.storage import Location
from balm_tune.trainable import CHECKPOINT_FILE

TENSORBOARD_FILES = "events.out.tfevents"


def leaderboard(results: ResultGrid, space: SearchSpace) -> list[dict]:
    """One row per trial (params, best val MSE/MAE, epochs, outcome), best first; failed trials last.
    `outcome` is an Outcome; `status` its label for this scheduler ('pruned by asha', ...)."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        outcome, reason = trial_outcome(
            metrics, space.max_epochs, space.base.patience, str(result.error) if result.error else None
        )
        failed = outcome is Outcome.FAILED
        rows.append(
            {
                "trial_id": metrics.get("trial_id", Path(result.path).name),
                "status": outcome.label(space.scheduler.type),
                "outcome": outcome,
                "reason": reason,
                **{k: result.config.get(k) for k in space.search},
                "best_val_mse": math.inf if failed else metrics.get("best_val_mse", math.inf),
                "best_val_mae": math.inf if failed else metrics.get("best_val_mae", math.inf),
                "epochs_run": metrics.get("epoch", 0),
                "node_id": metrics.get("node_id", ""),
                "device": metrics.get("device", ""),
                "backbone_loads": metrics.get("backbone_loads", 0),
                "prompt_builds": metrics.get("prompt_builds", 0),
                "precision": metrics.get("precision", ""),
                "checkpoint": result.checkpoint,  # a ray.tune.Checkpoint on the experiment's storage, or None
                "params": {k: _plain(result.config[k]) for k in space.search if k in result.config},
            }
        )
    return sorted(rows, key=lambda r: (r["outcome"] is Outcome.FAILED, r["best_val_mse"]))


def write_leaderboard(rows: list[dict], path: Path) -> None:
    fields = [k for k in rows[0] if k not in ("params", "checkpoint", "backbone_loads", "prompt_builds")]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def export_winner(winner: dict, config, provenance: dict, folder: Path) -> tuple[Path, Path]:
    """Write best_config.yaml (a full core config with provenance) and copy the winner's checkpoint
    (from the experiment's storage, local or remote) into `folder`."""
    config.extras = {
        "search": {
            "trial_id": winner["trial_id"],
            "best_val_mse": winner["best_val_mse"],
            "best_val_mae": winner["best_val_mae"],
            "epochs_run": winner["epochs_run"],
        },
        **provenance,
    }
    config_path, checkpoint_path = folder / "best_config.yaml", folder / "best_checkpoint.pt"
    config.save(config_path)
    with winner["checkpoint"].as_directory() as checkpoint:
        shutil.copyfile(Path(checkpoint) / CHECKPOINT_FILE, checkpoint_path)
    return config_path, checkpoint_path


def publish(files: list[Path], experiment: Location) -> None:
    """Copy the exported files to the experiment's storage location (nothing to do when it is `files`' folder)."""
    for path in files:
        experiment.child(path.name).upload(path)


def fetch_tensorboard(experiment: Location, folder: Path) -> int:
    """Copy every trial's TensorBoard event files from remote storage into `folder` (same layout); returns
    how many. With a local storage path they already are there."""
    if experiment.is_local and Path(experiment.path).resolve() == folder.resolve():
        return 0
    names = experiment.files(TENSORBOARD_FILES)
    for name in names:
        experiment.child(name).download(folder / name)
    return len(names)


def write_summary(summary: dict, path: Path) -> None:
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")


def _plain(value):
    """numpy scalars -> Python numbers (YAML and JSON writers need them)."""
    return value.item() if hasattr(value, "item") else value
