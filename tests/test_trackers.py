"""Experiment trackers (config key ``trackers``): a real finetuning run logged to MLflow's local
file store and to wandb offline, read back and compared with the run's own files (config.yaml,
train.log, val.log, test.log, test_best.log), resumed into the same tracker run; a tracker that is
not installed stops the run before any work; a failing tracker warns once and the run goes on.
Nothing here reaches the network: wandb runs offline (no key, no netrc), MLflow writes a folder."""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import socket
import struct
import sys
from pathlib import Path

import pytest
import yaml

from conftest import make_folder_dataset, run_finetune, small_run_config, task_dict, write_yaml



def installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # sys.modules[name] is None: its import is blocked
        return False


INSTALLED = [t for t in ("mlflow", "wandb") if installed(t)]
# no login, no user settings, no server: wandb offline, MLflow's default local store
UNSET = ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_DIR", "NETRC", "MLFLOW_TRACKING_URI")


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def num(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One finetuning run (1 epoch) with every installed tracker, then resumed to 2 epochs."""
    if not INSTALLED:
        pytest.skip("neither mlflow nor wandb is installed (pip install -r requirements-trackers.txt)")
    tmp = tmp_path_factory.mktemp("trackers")
    make_folder_dataset(tmp / "data" / "tiny", ["bar_h", "bar_v"], 6)
    task = write_yaml(tmp / "tasks" / "tiny.yaml", task_dict())
    cfg = write_yaml(tmp / "cfg.yaml", small_run_config(name="E1/run", task=task, trackers=INSTALLED))
    args = ["-c", cfg, "--data_root", tmp / "data", "--output_root", tmp / "out"]
    with pytest.MonkeyPatch.context() as mp:  # run_finetune passes on os.environ
        for var in UNSET:
            mp.delenv(var, raising=False)
        mp.setenv("HOME", str(tmp / "home"))
        first = run_finetune(args, cwd=tmp)
        assert first.returncode == 0, first.stderr
        run_dir = tmp / "out" / "finetuning" / "E1" / "run"
        ids_first = json.loads((run_dir / "trackers.json").read_text())
        second = run_finetune(args + ["--epochs", "2"], cwd=tmp)
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stdout
    return {"run_dir": run_dir, "out": tmp / "out", "ids_first": ids_first,
            "ids": json.loads((run_dir / "trackers.json").read_text()),
            "config": yaml.safe_load((run_dir / "config.yaml").read_text()), "stderr": first.stderr + second.stderr}


def test_tracked_run_resumes_into_the_same_tracker_runs_without_warnings(tracked):
    assert set(tracked["ids"]) == set(INSTALLED)
    assert tracked["ids"] == tracked["ids_first"]
    assert "warning: tracker" not in tracked["stderr"]
    assert len(read_rows(tracked["run_dir"] / "val.log")) == 2


# ----------------------------------------------------------------------------- MLflow

@pytest.fixture(scope="module")
def mlflow_run(tracked):
    pytest.importorskip("mlflow")
    import os

    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(tracked["out"] / "mlruns").as_uri())
    exp = client.get_experiment_by_name("E1")  # the run name's first folder
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, "the resumed run must continue the first MLflow run"
    return client, runs[0]


def test_mlflow_params_are_the_resolved_config(tracked, mlflow_run):
    _, run = mlflow_run
    params, cfg = run.data.params, tracked["config"]
    assert set(params) == set(cfg)
    for k, v in cfg.items():
        if k == "epochs":  # a resume-free key changed on resume: params are immutable in MLflow
            continue
        assert (params[k] == v) if isinstance(v, str) else (json.loads(params[k]) == v), k
    assert params["epochs"] == "1" and run.data.tags["current.epochs"] == "2"
    assert run.info.run_id == tracked["ids"]["mlflow"]["run_id"]
    assert run.info.status == "FINISHED" and run.info.run_name == "E1/run"
    assert run.data.tags["kind"] == "finetuning"


def test_mlflow_metrics_are_the_csv_logs(tracked, mlflow_run):
    client, run = mlflow_run
    rid, rd = run.info.run_id, tracked["run_dir"]

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(rid, key))

    val = read_rows(rd / "val.log")
    for col in val[0]:
        if col != "epoch":
            got, want = history(f"epoch/{col}"), [(int(r["epoch"]), float(r[col])) for r in val]
            assert len(got) == len(want) and all(g[0] == w[0] and same(g[1], w[1]) for g, w in zip(got, want)), col
    train = read_rows(rd / "train.log")
    assert history("train/loss") == [(int(r["global_step"]), float(r["loss"])) for r in train]
    assert history("train/lr") == [(int(r["global_step"]), float(r["lr"])) for r in train]
    for log, prefix in (("test.log", "test_last"), ("test_best.log", "test_best")):
        row = read_rows(rd / log)[0]
        latest = {k[len(prefix) + 1:]: v for k, v in run.data.metrics.items() if k.startswith(prefix + "/")}
        want = {k: num(v) for k, v in row.items() if num(v) is not None}
        assert set(latest) == set(want) and all(same(latest[k], want[k]) for k in want), log
        steps = {m.step for m in client.get_metric_history(rid, f"{prefix}/accuracy")}
        assert int(row["epoch"]) in steps


# ----------------------------------------------------------------------------- wandb (offline files)

def wandb_records(path: Path) -> list:
    """Records of a .wandb file: LevelDB-log blocks of 32 KiB after a 7-byte header, each record
    a 7-byte header (crc, length, type: 1 full, 2 first, 3 middle, 4 last) and a protobuf Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, out, buf = path.read_bytes(), 7, [], b""
    assert data[:4] == b":W&B", path
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def test_wandb_offline_run_holds_config_epochs_and_test_rows(tracked):
    pytest.importorskip("wandb")
    rd, run_id = tracked["run_dir"], tracked["ids"]["wandb"]["id"]
    assert tracked["ids"]["wandb"]["mode"] == "offline"
    dirs = sorted((rd / "wandb").glob("offline-run-*"))
    assert len(dirs) == 2 and all(d.name.endswith(run_id) for d in dirs)  # one per attempt, one run id
    history: dict[int, dict[str, float]] = {}
    summary: dict[str, float] = {}
    config: dict[str, object] = {}
    for d in dirs:
        for rec in wandb_records(d / f"run-{run_id}.wandb"):
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.history.item}
                if "epoch" in items and any(k.startswith("epoch/") for k in items):
                    history[int(items["epoch"])] = items
            elif kind == "summary":
                summary.update({"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in rec.summary.update})
            elif kind == "config":
                config.update({u.key: json.loads(u.value_json) for u in rec.config.update})
    val = read_rows(rd / "val.log")
    assert sorted(history) == [1, 2]
    for r in val:
        for col, text in r.items():
            if col != "epoch":
                assert same(float(history[int(r["epoch"])][f"epoch/{col}"]), float(text)), col
    for log, prefix in (("test.log", "test_last"), ("test_best.log", "test_best")):
        for col, text in read_rows(rd / log)[0].items():
            if num(text) is not None:
                assert same(float(summary[f"{prefix}/{col}"]), num(text)), (log, col)
    cfg = tracked["config"]
    assert {k: config[k] for k in cfg} == {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


# ----------------------------------------------------------------------------- not installed, failures

def test_missing_tracker_exits_2_before_any_work(tmp_path):
    shim = tmp_path / "shim"  # modules that fail to import, as an uninstalled package does
    for name in ("wandb", "mlflow"):
        (shim / name).mkdir(parents=True)
        (shim / name / "__init__.py").write_text(f"raise ImportError(\"No module named '{name}'\")\n")
    task = write_yaml(tmp_path / "tasks" / "tiny.yaml", task_dict())
    cfg = write_yaml(tmp_path / "cfg.yaml", small_run_config(task=task, trackers=["mlflow", "wandb"]))
    out = tmp_path / "out"
    proc = run_finetune(["-c", cfg, "--output_root", out, "--data_root", tmp_path / "nodata"], cwd=tmp_path,
                        env={"PYTHONPATH": os.pathsep.join([str(shim), os.environ["PYTHONPATH"]])})
    assert proc.returncode == 2, proc.stderr
    assert "tracker 'mlflow'" in proc.stderr and "pip install -r requirements-trackers.txt" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_tracker_names_are_validated():
    from utility.config.loader import validate
    from utility.config.schemas import FTEConfig
    from utility.errors import UserError

    cfg = validate(FTEConfig, {"name": "x", "task": "t", "trackers": "WandB"}, "test")
    assert cfg.trackers == ["wandb"]
    with pytest.raises(UserError, match="trackers"):
        validate(FTEConfig, {"name": "x", "task": "t", "trackers": ["tensorboardx"]}, "test")


def test_require_trackers_names_the_missing_one(monkeypatch):
    from utility.errors import UserError
    from utility.tracking import require_trackers

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(UserError, match=r"tracker 'wandb'.*pip install -r requirements-trackers.txt"):
        require_trackers(["wandb"])
    require_trackers([])


class Recorder:
    """A tracker that keeps what it is given; ``fail_on`` names the method that raises."""

    name = "fake"

    def __init__(self, fail_on: str = "") -> None:
        self.fail_on, self.calls = fail_on, []

    def __getattr__(self, method: str):
        def call(*args):
            self.calls.append((method, args))
            if method == self.fail_on:
                raise ConnectionError("server down")
        return call


def test_failing_tracker_warns_once_and_the_others_go_on(tmp_path, capsys):
    from utility.tracking.hub import Tracking
    from utility.training.rundir import CsvLog, write_table

    broken, healthy = Recorder(fail_on="log_metrics"), Recorder()
    tracking = Tracking(tmp_path, {"broken": broken, "healthy": healthy})
    log = CsvLog(tmp_path / "val.log", ["epoch", "accuracy", "lr"], on_row=tracking.on_row)
    for e in (1, 2, 3):
        log.write({"epoch": e, "accuracy": e / 10, "lr": 0.1})
    write_table(tmp_path / "test.log", ["accuracy", "epoch", "model"], [{"accuracy": 0.5, "epoch": 3, "model": "last"}],
                tracking.on_row)
    (tmp_path / "other").mkdir()
    CsvLog(tmp_path / "other" / "val.log", ["epoch", "x"], on_row=tracking.on_row).write({"epoch": 9, "x": 1.0})  # another run's log
    tracking.on_run_end(None, True)
    log.write({"epoch": 4, "accuracy": 0.4, "lr": 0.1})  # after close: nobody listens
    err = capsys.readouterr().err
    assert err.count("warning: tracker broken failed") == 1 and "server down" in err
    assert [r["epoch"] for r in read_rows(tmp_path / "val.log")] == ["1", "2", "3", "4"]  # the run's files go on
    assert [c[0] for c in broken.calls] == ["log_metrics"]
    assert healthy.calls == [("log_metrics", ([(e, {"epoch/accuracy": e / 10, "epoch/lr": 0.1})], "epoch"))
                             for e in (1, 2, 3)] + [("log_summary", ({"test_last/accuracy": 0.5,
                                                                       "test_last/epoch": 3.0}, 3)),
                                                    ("finish", (True,))]


def test_mlflow_server_down_at_start_warns_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    from utility.config.schemas import FTEConfig
    from utility.tracking import tracking_for

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = FTEConfig(name="x", task="t", trackers=["mlflow"], output_root=str(tmp_path))
    run_dir = tmp_path / "finetuning" / "x"
    run_dir.mkdir(parents=True)
    tracking = tracking_for(cfg, run_dir)
    tracking.on_run_start(None, resumed=False)
    assert tracking.trackers == {}
    assert "warning: tracker mlflow failed (start" in capsys.readouterr().err
    tracking.close(False)
    assert json.loads((run_dir / "trackers.json").read_text()) == {}


def test_wandb_goes_online_only_when_logged_in(tmp_path):
    from utility.tracking.wandb_tracker import wandb_mode

    netrc = tmp_path / "netrc"
    assert wandb_mode({"HOME": str(tmp_path)}) == "offline"
    assert wandb_mode({"WANDB_API_KEY": "k" * 40}) == "online"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    assert wandb_mode({"NETRC": str(netrc)}) == "online"
    assert wandb_mode({"NETRC": str(netrc), "WANDB_BASE_URL": "https://wandb.example.org"}) == "offline"
    assert wandb_mode({"WANDB_API_KEY": "k" * 40, "WANDB_MODE": "disabled"}) == "disabled"


def test_run_names_and_projects_follow_the_run_directory(tmp_path):
    from utility.config.schemas import FTEConfig, PretrainConfig
    from utility.tracking.hub import run_info

    ft = FTEConfig(name="E1/PT_a_FT_b", task="t", output_root=str(tmp_path))
    info = run_info(ft, tmp_path / "finetuning" / "E1" / "PT_a_FT_b" / "fold_0")
    assert (info.name, info.project, info.kind) == ("E1/PT_a_FT_b/fold_0", "E1", "finetuning")
    pt = PretrainConfig(name="enc", dataset_base_dir=["x"], output_root=str(tmp_path), tracker_project="P")
    info = run_info(pt, tmp_path / "pretraining" / "enc")
    assert (info.name, info.project, info.kind, info.output_root) == ("enc", "P", "pretraining", tmp_path.resolve())
    info = run_info(pt.model_copy(update={"tracker_project": None}), tmp_path / "pretraining" / "enc")
    assert info.project == "pretraining"
