"""The trials' rows (leaderboard.csv), the baselines' (baselines.csv) and the winner's export (config.yaml,
checkpoint.pt); balm_tune.experiment names the files and says where they are."""

from __future__ import annotations

import csv
import io
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import ResultGrid

from balm_tune.outcome import Outcome, trial_outcome, trial_status
from balm_tune.space import SearchSpace
from balm_tune.trainable import CHECKPOINT_FILE
from core.atomic import atomic_path, write_atomic
from core.baselines import BASELINES
from core.errors import BalmError


class ExportError(BalmError):
    """The winner cannot be exported; the earlier exported files are left as they were."""


@dataclass
class TrialRow:
    """A trial's line of the leaderboard (leaderboard.csv)."""

    trial_id: str
    status: str  # the outcome's label for this scheduler: 'finished', 'pruned by asha', ...
    outcome: Outcome
    reason: str
    params: dict[str, Any]  # the searched keys' values
    best_val_mse: float  # inf for a failed trial
    best_val_mae: float
    epochs_run: int
    node_id: str
    device: str
    precision: str
    backbone_loads: int  # in the trial's process: 0 when the shared inputs were used, as intended
    prompt_builds: int
    checkpoint: Any  # a ray.tune.Checkpoint on the experiment's storage, or None

    def columns(self) -> dict[str, Any]:
        """The leaderboard.csv columns of this row."""
        return {
            **{k: getattr(self, k) for k in ("trial_id", "status", "outcome", "reason")},
            **self.params,
            **{k: getattr(self, k) for k in ("best_val_mse", "best_val_mae", "epochs_run", "node_id", "device")},
            "precision": self.precision,
        }


@dataclass
class BaselineRow:
    """A baseline's line of baselines.csv, scored on the trials' validation windows and every test window."""

    name: str
    description: str
    val: dict[str, Any]  # core.baselines.Metrics as a dict: mse, mae, windows
    test: dict[str, Any]

    def columns(self) -> dict[str, Any]:
        return {
            "baseline": self.name,
            "description": self.description,
            **{f"{split}_{k}": getattr(self, split)[k] for split in ("val", "test") for k in ("mse", "mae", "windows")},
        }


@dataclass
class AblationRow:
    """An ablation arm's line of baselines.csv (--ablations): the winner's config retrained as the arm, its
    figures the means over its seeds (summary.json `ablations.<arm>`), on the baselines' windows."""

    arm: str
    description: str  # balm_tune.closing.ARMS
    figures: dict[str, Any]
    val_windows: int

    def columns(self) -> dict[str, Any]:
        f, tested = self.figures, self.figures["significance_on_test"]
        return {
            "baseline": f"ablation {self.arm}",
            "description": self.description,
            **{"val_mse": f["best_val_mse_mean"], "val_mae": f["best_val_mae_mean"], "val_windows": self.val_windows},
            **{"test_mse": f["test_mse_mean"], "test_mae": f["test_mae_mean"], "test_windows": f["test_windows"]},
            **{"seeds": len(f["runs"]), "test_mse_std": f["test_mse_std"], "test_mae_std": f["test_mae_std"]},
            **{"parameters": f["parameters"], "step_seconds": f["step_seconds_mean"]},
            "winner_vs_it_p_value": tested["p_value"],  # the Diebold-Mariano test on the winner's seed
        }


def leaderboard(results: ResultGrid, space: SearchSpace) -> list[TrialRow]:
    """One row per trial, best first; failed trials last."""
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
            TrialRow(
                trial_id=metrics.get("trial_id", Path(result.path).name),
                status=trial_status(metrics, outcome, space.scheduler.type),
                outcome=outcome,
                reason=metrics.get("diverged") or reason,
                params={k: _plain(v) for k, v in (result.config or {}).items() if k in space.search},
                best_val_mse=math.inf if failed else metrics.get("best_val_mse", math.inf),
                best_val_mae=math.inf if failed else metrics.get("best_val_mae", math.inf),
                epochs_run=metrics.get("epoch", 0),
                node_id=metrics.get("node_id", ""),
                device=metrics.get("device", ""),
                precision=metrics.get("precision", ""),
                backbone_loads=metrics.get("backbone_loads", 0),
                prompt_builds=metrics.get("prompt_builds", 0),
                checkpoint=result.checkpoint,
            )
        )
    return sorted(rows, key=lambda r: (r.outcome is Outcome.FAILED, r.best_val_mse))


def _ended(results: ResultGrid) -> list[bool]:
    """Per result, whether Tune ended the trial (TERMINATED or ERROR). After Ctrl-C, Tune saves the
    experiment state (the trials it stopped are still RUNNING, PAUSED or PENDING there) and only then
    marks them all TERMINATED in memory, so the statuses are read from that saved state."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(results.experiment_path, storage_filesystem=results.filesystem)
    saved = {trial.path: trial.status for trial in analysis.trials}
    return [saved.get(result.path) in ("TERMINATED", "ERROR") for result in results]


def baseline_rows(baselines: dict[str, dict], ablations: dict[str, dict] | None = None) -> list[Row]:
    """baselines.csv's rows, from the summary's `baselines` (scored on the trials' windows) and, after
    --ablations, its `ablations` (the arms' means over seeds, with their own columns)."""
    from balm_tune.closing import ARMS

    rows: list[Row] = [BaselineRow(name, BASELINES[name], s["val"], s["test"]) for name, s in baselines.items()]
    val_windows = next(iter(baselines.values()))["val"]["windows"] if baselines else 0
    return rows + [AblationRow(arm, ARMS[arm], f, val_windows) for arm, f in (ablations or {}).items()]


Row = TrialRow | BaselineRow | AblationRow


def write_rows(rows: list[Row], path: Path) -> None:
    """leaderboard.csv (the trials, best first) or baselines.csv (the baselines beside them), atomically."""
    write_atomic(path, _csv_text(rows))


def leaderboard_frame(rows: list[Row]):
    """Rows as pandas reads them from leaderboard.csv or baselines.csv (the same columns and types, ids
    kept as text)."""
    import pandas as pd

    return pd.read_csv(io.StringIO(_csv_text(rows)), dtype={"trial_id": str})


def _csv_text(rows: list[Row]) -> str:
    """Every row's columns, in the order they first appear (trial rows have them all; ablation rows add
    theirs after the baselines'); a row without a column leaves it empty."""
    columns = [row.columns() for row in rows]
    names = list(dict.fromkeys(name for row in columns for name in row))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=names or ["trial_id"])
    writer.writeheader()
    writer.writerows(columns)
    return text.getvalue()


def verify_checkpoint(winner: TrialRow) -> None:
    """The winner's checkpoint loads (weights only) and holds weights and config, else ExportError."""
    import torch

    path = f"{winner.checkpoint.path}/{CHECKPOINT_FILE}"
    try:
        with winner.checkpoint.as_directory() as checkpoint:
            state = torch.load(Path(checkpoint) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        missing = {"model", "best_model", "config"} - set(state)
    except Exception as err:  # noqa: BLE001 - truncated, corrupt or missing: all mean "cannot export"
        missing = (str(err).splitlines() or [type(err).__name__])[0][:200]
    if missing:
        raise ExportError(
            f"checkpoint {path} of the winning trial {winner.trial_id} cannot be loaded ({missing}); "
            "nothing exported, the experiment's earlier results are left as they were"
        )


def export_winner(winner: TrialRow, config, provenance: dict, config_path: Path, checkpoint_path: Path) -> None:
    """Write the winner's full core config with its provenance to `config_path` and copy its checkpoint
    (from the experiment's storage, local or remote) to `checkpoint_path`, each atomically: the old
    file stays until the new one is complete."""
    config.extras = {
        "search": {k: getattr(winner, k) for k in ("trial_id", "best_val_mse", "best_val_mae", "epochs_run")},
        **provenance,
    }
    with winner.checkpoint.as_directory() as checkpoint, atomic_path(checkpoint_path) as copy:
        shutil.copyfile(Path(checkpoint) / CHECKPOINT_FILE, copy)
        config.save(config_path)


def _plain(value):
    """numpy scalars -> Python numbers (YAML and JSON writers need them)."""
    return value.item() if hasattr(value, "item") else value
