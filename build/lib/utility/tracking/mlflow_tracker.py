"""MLflow: to the server or store in ``MLFLOW_TRACKING_URI`` when it is set, else to the local file
store ``<output_root>/mlruns`` (logs_and_checkpoints/mlruns by default): one store for all runs,
whatever the working directory, that ``mlflow ui --backend-store-uri`` opens. MLflow 3 keeps the file
store in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``; this process sets it unless the user did.

Params are immutable in MLflow: a resumed run whose resume-free keys changed (``epochs``, ...) keeps
the first value as the param and records the new one as the tag ``current.<key>``."""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse
from urllib.request import url2pathname

from utility.tracking.base import RunInfo, Tracker, param_text

BATCH_PARAMS, BATCH_METRICS = 100, 1000  # MLflow's limits per log_batch call


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock on a local file store (``file:`` URI); nothing for a server."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        yield
        return
    root = Path(url2pathname(parsed.path))
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".experiments.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self) -> None:
        self.client: Any = None
        self.run_id = ""

    @staticmethod
    def load() -> Any:
        import mlflow

        return mlflow

    @staticmethod
    def tracking_uri(info: RunInfo) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or (info.output_root / "mlruns").as_uri()

    def start(self, info: RunInfo) -> dict[str, Any]:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        uri = self.tracking_uri(info)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        prev = info.previous
        if prev.get("run_id") and prev.get("uri") == uri:
            try:
                self.client.get_run(prev["run_id"])
                self.run_id = prev["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
            except MlflowException:
                print(f"mlflow: run {prev['run_id']} is not in {uri}; starting a new one")
        if not self.run_id:
            run = self.client.create_run(self._experiment(info.project, uri), run_name=info.name,
                                         tags={"kind": info.kind, "run_dir": str(info.run_dir)})
            self.run_id = run.info.run_id
        print(f"mlflow: run {self.run_id} (experiment {info.project}) in {uri}")
        return {"run_id": self.run_id, "uri": uri}

    def _experiment(self, name: str, uri: str) -> str:
        """The experiment's id, created if new. Runs started side by side (a study on 8 GPUs) would
        each create it in a file store, which does not check names atomically: a lock file there."""
        from mlflow.exceptions import MlflowException

        with store_lock(uri):
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                return exp.experiment_id
            try:
                return self.client.create_experiment(name)
            except MlflowException:  # a server: another run created it in the meantime
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
                return exp.experiment_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param, RunTag

        have = self.client.get_run(self.run_id).data.params
        text = {k: param_text(v) for k, v in params.items()}
        new = [Param(k, v) for k, v in text.items() if k not in have]
        changed = [RunTag(f"current.{k}", v) for k, v in text.items() if k in have and have[k] != v]
        for i in range(0, max(len(new), len(changed)), BATCH_PARAMS):
            self.client.log_batch(self.run_id, params=new[i:i + BATCH_PARAMS], tags=changed[i:i + BATCH_PARAMS])

    def log_metrics(self, rows: list[tuple[int, dict[str, float]]], step_name: str) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for step, metrics in rows for k, v in metrics.items()]
        for i in range(0, len(items), BATCH_METRICS):
            self.client.log_batch(self.run_id, metrics=items[i:i + BATCH_METRICS])

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        self.log_metrics([(step, metrics)], "epoch")

    def finish(self, finished: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if finished else "FAILED")
