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


MLFLOW_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "file")
CONNECT_TIMEOUT_S = 3.0


def _check_mlflow_uri(uri: str) -> None:
    """A tracking URI MLflow can use, checked before Ray starts: a known scheme, a server that answers
    within seconds (MLflow itself retries for minutes), and MLflow 3's refusal of plain file: stores."""
    if not uri.strip():
        raise TrackerError("--mlflow: expected a tracking URI such as sqlite:///mlflow.db or http://host:5000")
    bare = "databricks" if uri == "databricks" else "file"  # a bare path is a file store
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else bare
    if scheme not in MLFLOW_SCHEMES:
        raise TrackerError(f"--mlflow {uri}: unknown scheme {scheme!r}, expected one of {', '.join(MLFLOW_SCHEMES)}")
    if scheme in ("http", "https"):
        _check_reachable(uri)
    if scheme == "file":
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except MlflowException as err:
            raise TrackerError(
                f"--mlflow {uri}: {str(err).splitlines()[0][:160]}... (use sqlite:///mlflow.db)"
            ) from None


def _check_reachable(uri: str) -> None:
    """The server of an http(s) tracking URI accepts a connection within CONNECT_TIMEOUT_S."""
    import socket
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(uri)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as err:
        raise TrackerError(f"--mlflow {uri}: not a URL ({err})") from None
    if not host:
        raise TrackerError(f"--mlflow {uri}: no host in the URL")
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise TrackerError(
            f"--mlflow {uri}: no MLflow server answers at {host}:{port} within {CONNECT_TIMEOUT_S:g} s "
            f"({err.strerror or err})"
        ) from None


def _wandb_ready() -> bool:
    if os.environ.get("WANDB_MODE") in ("offline", "disabled") or os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="replace")
