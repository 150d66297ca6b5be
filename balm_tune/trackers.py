"""Experiment trackers as optional extras: every trial's params and per-epoch metrics to MLflow or W&B.

Both are Ray's own logger callbacks (ray.air.integrations; W&B's with one fix, balm_tune.wandb_logger);
this module checks up front that the package is installed and, for W&B, that credentials or offline mode
are set, so a missing tracker is one line before any trial starts, not a failure after Ray has started.

    python -m balm_tune.search --mlflow sqlite:///mlflow.db    # or http://mlflow-host:5000
    WANDB_MODE=offline python -m balm_tune.search --wandb my-project
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import BalmError


class TrackerError(BalmError, ValueError):
    """A tracker that cannot be used here; the message says how to enable it."""


@dataclass(frozen=True)
class Trackers:
    mlflow_uri: str | None = None  # MLflow tracking URI
    wandb_project: str | None = None  # W&B project (WANDB_MODE=offline writes runs locally)

    def check(self) -> Trackers:
        """Raise TrackerError if a requested tracker is not installed or has no credentials."""
        for flag, value, package in (("--mlflow", self.mlflow_uri, "mlflow"), ("--wandb", self.wandb_project, "wandb")):
            if value is not None and importlib.util.find_spec(package) is None:
                raise TrackerError(
                    f"{flag}: the '{package}' package is not installed (pip install 'balm-tune[{package}]')"
                )
        if self.mlflow_uri is not None:
            _check_mlflow_uri(self.mlflow_uri)
        if self.wandb_project is not None and not _wandb_ready():
            raise TrackerError(
                "--wandb: no W&B credentials (set WANDB_API_KEY, run `wandb login`, or WANDB_MODE=offline)"
            )
        return self

    def callbacks(self, experiment_name: str) -> list:
        """Ray's MLflow / W&B logger callbacks for the requested trackers (one run per trial)."""
        out = []
        if self.mlflow_uri:
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            out.append(MLflowLoggerCallback(tracking_uri=self.mlflow_uri, experiment_name=experiment_name))
        if self.wandb_project:
            from balm_tune.wandb_logger import FinishedWandbLoggerCallback

            out.append(FinishedWandbLoggerCallback(project=self.wandb_project, group=experiment_name))
        return out


def _check_mlflow_uri(uri: str) -> None:
    """MLflow 3 refuses file: stores unless MLFLOW_ALLOW_FILE_STORE=true: say so before Ray starts."""
    if not uri.strip():
        raise TrackerError("--mlflow: expected a tracking URI such as sqlite:///mlflow.db or http://host:5000")
    if uri.startswith("file:") or "://" not in uri:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except MlflowException as err:
            raise TrackerError(
                f"--mlflow {uri}: {str(err).splitlines()[0][:160]}... (use sqlite:///mlflow.db)"
            ) from None


def _wandb_ready() -> bool:
    if os.environ.get("WANDB_MODE") in ("offline", "disabled") or os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="replace")
