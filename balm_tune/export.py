"""What a search leaves behind: leaderboard.csv, best_config.yaml, the winner's checkpoint, summary.json."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

from ray.tune import ResultGrid

from balm_tune.outcome import Outcome, trial_outcome
from balm_tune.space import SearchSpace
from balm_tune.storage import Location
from balm_tune.trainable import CHECKPOINT_FILE
from core.baselines import BASELINES
from core.errors import BalmError

TENSORBOARD_FILES = "events.out.tfevents"


class ExportError(BalmError):
    """The winner cannot be exported; the earlier exported files are left as they were."""


def leaderboard(results: ResultGrid, space: SearchSpace) -> list[dict]:
    """One row per trial (params, best val MSE/MAE, epochs, outcome), best first; failed trials last.
    `outcome` is an Outcome; `status` its label for this scheduler ('pruned by asha', ...)."""
    rows = []
    for result, ended in zip(results, _ended(results), strict=True):
        metrics = result.metrics or {}
        outcome, reason = trial_outcome(
            metrics,
            space.max_epochs,
            space.base.patience,
            str(result.error) if result.error else None,
            interrupted=not ended,
        )
        failed = outcome is Outcome.FAILED
        rows.append(
            {
                "kind": "trial",
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


def _ended(results: ResultGrid) -> list[bool]:
    """Per result, whether Tune ended the trial (TERMINATED or ERROR). After Ctrl-C, Tune saves the
    experiment state (the trials it stopped are still RUNNING, PAUSED or PENDING there) and only then
    marks them all TERMINATED in memory, so the statuses are read from that saved state."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(results.experiment_path, storage_filesystem=results.filesystem)
    saved = {trial.path: trial.status for trial in analysis.trials}
    return [saved.get(result.path) in ("TERMINATED", "ERROR") for result in results]


def baseline_rows(baselines: dict[str, dict]) -> list[dict]:
    """Leaderboard rows (kind 'baseline') of the baselines, scored on the trials' validation windows."""
    return [
        {
            "kind": "baseline",
            "trial_id": name,
            "status": "baseline",
            "reason": BASELINES[name],
            "best_val_mse": scores["val"]["mse"],
            "best_val_mae": scores["val"]["mae"],
        }
        for name, scores in baselines.items()
    ]


def write_leaderboard(rows: list[dict], path: Path, baselines: list[dict] = ()) -> None:
    """Trials best first, then the baseline rows (column `kind`: trial | baseline); written atomically."""
    _write_atomic(path, _csv_text(rows, [*rows, *baselines]).encode())


def leaderboard_frame(rows: list[dict]):
    """Rows as pandas reads them from leaderboard.csv (the same columns and types, ids kept as text)."""
    import pandas as pd

    return pd.read_csv(io.StringIO(_csv_text(rows, rows)), dtype={"trial_id": str})


def _csv_text(header_rows: list[dict], rows: list[dict]) -> str:
    fields = [k for k in header_rows[0] if k not in ("params", "checkpoint", "backbone_loads", "prompt_builds")]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def verify_checkpoint(winner: dict) -> None:
    """The winner's checkpoint loads (weights only) and holds weights and config, else ExportError."""
    import torch

    path = f"{winner['checkpoint'].path}/{CHECKPOINT_FILE}"
    try:
        with winner["checkpoint"].as_directory() as checkpoint:
            state = torch.load(Path(checkpoint) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        missing = {"model", "best_model", "config"} - set(state)
    except Exception as err:  # noqa: BLE001 - truncated, corrupt or missing: all mean "cannot export"
        missing = (str(err).splitlines() or [type(err).__name__])[0][:200]
    if missing:
        raise ExportError(
            f"checkpoint {path} of the winning trial {winner['trial_id']} cannot be loaded ({missing}); "
            "nothing exported, the experiment's earlier results are left as they were"
        )


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


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
    tmp = checkpoint_path.with_name(f".{checkpoint_path.name}.tmp")
    with winner["checkpoint"].as_directory() as checkpoint:
        shutil.copyfile(Path(checkpoint) / CHECKPOINT_FILE, tmp)
    config.save(config_path)
    tmp.replace(checkpoint_path)  # atomic: the old checkpoint until the new one is complete
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
    _write_atomic(path, (json.dumps(summary, indent=2, default=str) + "\n").encode())


def _plain(value):
    """numpy scalars -> Python numbers (YAML and JSON writers need them)."""
    return value.item() if hasattr(value, "item") else value
