"""Hardening (issue 12, items 5-12): runs never collide, a damaged cache or checkpoint is found, a full
disk is one line, SIGTERM saves, and every mistake is one line naming its culprit before work starts.

Subprocess runs share module-scoped fixtures (one reference run, one interrupted + resumed run); the
failing commands run in-process through ``run_entry`` to keep the whole file cheap. CPU only.
"""
from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FINETUNE, REPO, make_folder_dataset, run_inproc, small_run_config, task_dict, write_png, write_yaml
from utility.config.loader import load_config
from utility.config.schemas import FTEConfig, PretrainConfig
from utility.data.badfiles import BadFiles
from utility.data.cache import SharedStore, private_dir
from utility.data.dataset import ImageDataset, Preprocess
from utility.data.index import Split
from utility.errors import UserError
from utility.training import checkpoint as ckmod
from utility.training.runlock import RunLock

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}

# Delivers a real SIGTERM to the run's whole process group (as the queue does: DataLoader workers
# included) right after global step 3, so the signal lands mid-epoch whatever the machine's speed.
SIGTERM_AT_STEP = textwrap.dedent("""
    import os, signal, sys
    from utility.training import engine
    original = engine.Trainer._stop_signal
    def stop_signal(self, sync_point=True):
        if self.global_step == 3 and not getattr(self, "_sent", False):
            self._sent = True
            os.killpg(os.getpgid(0), signal.SIGTERM)
        return original(self, sync_point)
    engine.Trainer._stop_signal = stop_signal
    from utility.entry import run_entry
    from utility.runs.finetune import main
    sys.exit(run_entry(main))
""")


def finetune(args, cwd, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(FINETUNE), *map(str, args)], cwd=str(cwd), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def assert_one_line_error(rc: int, text: str, *fragments: str) -> None:
    assert rc == 2, text
    assert "Traceback" not in text, text
    errors = [ln for ln in text.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, text
    for f in fragments:
        assert f in errors[0], f"{f!r} not in {errors[0]!r}"


def log_rows(path: Path, drop: tuple[str, ...] = ("epoch_time_s", "datetime", "data_wait", "images_per_s")) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening")
    make_folder_dataset(root / "data" / "tiny", ["a", "b"], 8)
    task = write_yaml(root / "tiny.yaml", task_dict())
    cfg = write_yaml(root / "run.yaml", small_run_config(task=task, data_root=str(root / "data"),
                                                         output_root=str(root / "out"), batch_size=2, epochs=1))
    cwd = root / "cwd"
    cwd.mkdir()
    return {"root": root, "cfg": cfg, "out": root / "out", "cwd": cwd}


@pytest.fixture(scope="module")
def runs(setup):
    """An uninterrupted 1-epoch run ('ref', one worker) beside the same run SIGTERMed at step 3
    ('sig'); then 'sig' is resumed."""
    ref = finetune(["-c", setup["cfg"], "--name", "ref", "--num_workers", 1], setup["cwd"])
    script = setup["root"] / "sigterm_at_step.py"
    script.write_text(SIGTERM_AT_STEP.format(repo=str(REPO)))
    sig = subprocess.Popen([sys.executable, str(script), "-c", str(setup["cfg"]), "--name", "sig",
                            "--num_workers", "1"], cwd=str(setup["cwd"]), env=ENV, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    stopped = finish(sig)
    ck = torch.load(setup["out"] / "finetuning" / "sig" / "checkpoint_last.pt", weights_only=True)
    resumed = finish(finetune(["-c", setup["cfg"], "--name", "sig", "--num_workers", 1], setup["cwd"]))
    return {"ref": finish(ref), "stopped": stopped, "ck": ck, "resumed": resumed}


# ----------------------------------------------------------------------------- item 11: SIGTERM

def test_sigterm_mid_epoch_saves_and_resume_matches(setup, runs):
    rc, text = runs["stopped"]
    assert rc == 128 + signal.SIGTERM, text
    assert "Traceback" not in text and "stopped by SIGTERM" in text and "epoch 1 step 3" in text, text
    assert (runs["ck"]["epoch"], runs["ck"]["batch_in_epoch"], runs["ck"]["global_step"]) == (0, 3, 3)
    assert runs["resumed"][0] == 0 and "resuming" in runs["resumed"][1], runs["resumed"][1]
    assert runs["ref"][0] == 0, runs["ref"][1]
    ref, sig = setup["out"] / "finetuning" / "ref", setup["out"] / "finetuning" / "sig"
    # 1 epoch of 6 steps (12 train images, batch 2), stopped after step 3; later epochs after a mid-epoch
    # resume: test_reproducibility (SIGKILL)
    assert len(log_rows(ref / "val.log")) == 1 and len(log_rows(ref / "train.log")) == 6
    assert log_rows(sig / "val.log") == log_rows(ref / "val.log")
    assert log_rows(sig / "train.log") == log_rows(ref / "train.log")
    assert log_rows(sig / "test.log") == log_rows(ref / "test.log")


# ----------------------------------------------------------------------------- items 5, 9, 10: one line, exit 2

@pytest.fixture(scope="module")
def failures(setup, runs):
    """The failing commands of items 5, 9 and 10 that need a real run, in-process through ``run_entry`` (as
    the script runs them; the other cases of those items are checked in-process below); {case: (rc, output)}."""
    root, cfg, out = setup["root"], setup["cfg"], setup["out"]
    (root / "a_file").write_text("not a folder")
    target = root / "out_damaged" / "finetuning" / "ref"  # a copy of the finished reference run
    shutil.copytree(out / "finetuning" / "ref", target)
    last = target / "checkpoint_last.pt"
    last.write_bytes(last.read_bytes()[:2000])  # truncated
    locked = out / "finetuning" / "locked"  # a live process holds the lock of run 'locked'
    locked.mkdir(parents=True)
    holder = hold_lock(locked)
    cases = {
        "output_root_file": ["--output_root", root / "a_file"],
        "truncated_checkpoint": ["--output_root", root / "out_damaged", "--name", "ref", "--epochs", 3],
        "best_metric": ["--name", "bm", "--best_metric", "acuracy"],
        "locked": ["--name", "locked"],
    }
    from utility.runs.finetune import main

    try:
        procs = {k: run_inproc(main, ["-c", cfg, *extra], setup["cwd"]) for k, extra in cases.items()}
    finally:
        holder.kill()
    results = {k: (p.returncode, p.stdout + p.stderr) for k, p in procs.items()}
    holder.wait()
    return {**results, "_holder_pid": holder.pid, "_damaged": last}


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """A process holding ``run_dir``'s lock until it is killed."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from utility.training.runlock import RunLock; RunLock(Path(sys.argv[1])).acquire().claim(); "
                               "print('held', flush=True); time.sleep(3600)", str(run_dir)],
                              cwd=str(REPO), env=ENV, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.parametrize("case, fragments", [
    ("output_root_file", ["a_file", "output_root"]),
    ("best_metric", ["'best_metric'", "'acuracy'", "accuracy, avg_val_loss"]),
])
def test_one_line_errors(failures, case, fragments):
    assert_one_line_error(*failures[case], *fragments)


def test_best_metric_checked_before_training(failures, setup):
    assert not (setup["out"] / "finetuning" / "bm" / "train.log").exists()


def test_damaged_checkpoint_names_the_file_and_the_ways_on(failures):
    path = failures["_damaged"]
    assert_one_line_error(*failures["truncated_checkpoint"], str(path), "damaged", "to start over",
                          str(path.with_name("checkpoint_best.pt")))


def test_second_run_on_a_locked_directory_stops(failures, setup):
    rc, text = failures["locked"]
    assert_one_line_error(rc, text, "in use by process", str(failures["_holder_pid"]), socket.gethostname())
    assert sorted(p.name for p in (setup["out"] / "finetuning" / "locked").iterdir()) == ["run.lock"]


def test_other_damaged_inputs_are_one_line(tmp_path):
    """In-process (the entry point turns any UserError into one line and exit 2, as above)."""
    from utility.models.weights import read_state_dict
    from utility.training.session import make_run_dir

    text = tmp_path / "notes.txt"
    text.write_text("hello, I am not a weights file\n")
    with pytest.raises(UserError, match=r"notes\.txt: not a PyTorch weights file"):
        read_state_dict(text)  # was "KeyError: 101"
    (tmp_path / "checkpoint_best.pt").write_bytes(b"")
    ck = tmp_path / "checkpoint_last.pt"
    ck.write_text("some text\n")
    with pytest.raises(UserError, match=r"checkpoint_last\.pt is damaged.*to start over.*checkpoint_best\.pt"):
        ckmod.load_checkpoint(ck, ckmod.RESUME_KEYS)
    torch.save({"model": {}}, ck)  # readable, but not a resume checkpoint
    with pytest.raises(UserError, match="damaged.*no 'optimizer' entry"):
        ckmod.load_checkpoint(ck, ckmod.RESUME_KEYS)
    with pytest.raises(UserError, match="cannot create the run directory /proc/no/such.*output_root"):
        make_run_dir(Path("/proc/no/such/place/finetuning/x"))


def test_too_many_folds_refused_before_the_first_fold(setup):
    from utility.config.tasks import load_task
    from utility.runs.supervised_data import check_folds

    cfg = load_config(FTEConfig, ["-c", str(setup["cfg"]), "--folds", "50"], "prog")[0]
    with pytest.raises(UserError, match="'folds': 50 folds but task tiny has only 16 train \\+ val subjects"):
        check_folds(cfg, load_task(cfg.task))
    check_folds(cfg.model_copy(update={"folds": 16}), load_task(cfg.task))


def test_stale_lock_is_taken_over(tmp_path, capfd):
    holder = hold_lock(tmp_path)
    with pytest.raises(UserError, match=f"in use by process {holder.pid}"):
        RunLock(tmp_path).acquire()
    holder.kill()  # SIGKILL: nothing cleans up; the flock dies with the process, its pid stays in the file
    holder.wait()
    lock = RunLock(tmp_path).acquire()
    lock.claim()
    assert f"taking over the lock of process {holder.pid}" in capfd.readouterr().err
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert (tmp_path / "run.lock").read_text() == ""  # a clean end leaves nothing to take over


def test_lock_is_free_once_its_process_dies_even_if_forked_children_live_on(tmp_path):
    """DataLoader workers (forked) outlive a SIGKILLed run for seconds; the lock must not."""
    holder = subprocess.Popen([sys.executable, "-c",
                               "import os, sys, time; from pathlib import Path; "
                               "from utility.training.runlock import RunLock; RunLock(Path(sys.argv[1])).acquire().claim(); "
                               "child = os.fork()\n"
                               "if child == 0: time.sleep(60); os._exit(0)\n"
                               "print(child, flush=True); time.sleep(3600)", str(tmp_path)],
                              cwd=str(REPO), env=ENV, stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(UserError, match=f"in use by process {holder.pid}"):
            RunLock(tmp_path).acquire()
        holder.kill()
        holder.wait()
        os.kill(child, 0)  # the forked child still runs
        RunLock(tmp_path).acquire().release()
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ----------------------------------------------------------------------------- items 10, 12: config checks

def _load(tmp_path, file_keys: dict, argv: list[str], schema=FTEConfig):
    cfg = write_yaml(tmp_path / "c.yaml", file_keys)
    return load_config(schema, ["-c", str(cfg), *argv], "prog")


@pytest.mark.parametrize("argv, fragments", [
    (["--lr", ".inf"], ["'lr'", "finite"]),
    (["--lr", ".nan"], ["'lr'", "finite"]),
    (["--seed", "100000000000000000000000"], ["'seed'", "4294967295"]),
    (["--fold", "1"], ["'fold' and 'folds'", "folds (the number of folds) is not set"]),
    (["--fold", "3", "--folds", "3"], ["'fold' and 'folds'", "outside 0..2"]),
    (["--normalizer", "windowed"], ["'normalizer' and 'window'"]),
    (["--epohcs", "3"], ["'epohcs'", "on the command line", "did you mean 'epochs'"]),
    (["--data_format", "5"], ["'data_format'", "extension"]),
    (["--cache_dir", "a\x00b"], ["'cache_dir'", "on the command line", "NUL"]),
])
def test_config_mistakes_name_their_keys(tmp_path, argv, fragments):
    with pytest.raises(UserError) as exc:
        _load(tmp_path, small_run_config(), argv)
    msg = str(exc.value)
    for f in fragments:
        assert f in msg, msg
    assert "(config)" not in msg and "'model_name': 'resnet18'" not in msg  # never the whole config


def test_key_in_the_file_names_the_file(tmp_path):
    with pytest.raises(UserError, match=r"unknown config key 'epohcs' in .*c\.yaml"):
        _load(tmp_path, {**small_run_config(), "epohcs": 3}, [])
    with pytest.raises(UserError, match=r"config key 'name' in .*c\.yaml holds a NUL character"):
        _load(tmp_path, small_run_config(name="a\x00b"), [])


@pytest.mark.parametrize("scale", [[1.0, 0.08], [0.0, 1.0], [0.5, 1.5], [-0.1, 0.5]])
def test_simclr_crop_scale_checked(tmp_path, scale):
    keys = {"name": "p", "dataset_base_dir": str(tmp_path), "crop_scale": scale}
    with pytest.raises(UserError, match="'crop_scale'.*0 < min <= max <= 1"):
        _load(tmp_path, keys, [], PretrainConfig)
    assert _load(tmp_path, {**keys, "crop_scale": [0.2, 1.0]}, [], PretrainConfig)[0].crop_scale == (0.2, 1.0)


def test_seed_at_the_limit_trains_its_loader(tmp_path):
    """The largest accepted seed must not overflow where it is used (loader and sampler generators)."""
    from utility.data.loader import build_loader

    cfg = _load(tmp_path, small_run_config(), ["--seed", str(2**32 - 1)])[0]
    ds = torch.utils.data.TensorDataset(torch.arange(6.0))
    loader = build_loader(ds, 2, cfg.seed, True, 0)
    loader.set_epoch(3)
    assert sorted(int(x) for b in loader for x in b[0]) == list(range(6))


# ----------------------------------------------------------------------------- item 10: broken single files

def test_unpreprocessable_files_are_skipped_and_listed(tmp_path):
    good = write_png(tmp_path / "good.png", np.full((8, 8), 100, dtype=np.uint8))
    arrays = {"seven.npy": np.zeros((7, 8, 8)), "ten.npy": np.ones((8, 8, 10)), "empty.npy": np.zeros((0, 0)),
              "strings.npy": np.array([["a", "b"], ["c", "d"]]), "flat.npy": np.zeros((1, 0, 5))}
    paths = [good]
    for name, arr in arrays.items():
        np.save(tmp_path / name, arr)
        paths.append(tmp_path / name)
    ds = ImageDataset(Split("train", paths, [0] * len(paths)), Preprocess(3, (8, 8), "naive"), False, 2)
    items = [ds[i] for i in range(len(paths))]
    assert items[0]["valid"] and [it["valid"] for it in items[1:]] == [False] * len(arrays)
    bad = BadFiles({"train": paths}, 1.0, tmp_path)
    batch = torch.utils.data.default_collate(items)
    bad.record("train", batch)
    bad.write_report()
    with (tmp_path / "bad_files.csv").open(newline="") as fh:
        listed = {Path(r["file"]).name: r["reason"] for r in csv.DictReader(fh)}
    assert sorted(listed) == sorted(arrays)
    assert "dtype" in listed["strings.npy"] and "empty" in listed["empty.npy"]


def test_too_many_bad_files_write_the_list_before_stopping(tmp_path):
    paths = [tmp_path / f"f{i}.png" for i in range(10)]
    bad = BadFiles({"train": paths}, 0.1, tmp_path)
    batch = {"index": torch.arange(4), "valid": torch.tensor([False, False, True, True]),
             "bad": ["unreadable: x", "unreadable: y", "", ""]}
    with pytest.raises(UserError, match="max_bad_fraction.*bad_files.csv"):
        bad.record("train", batch)
    text = (tmp_path / "bad_files.csv").read_text()
    assert "f0.png" in text and "f1.png" in text and "f2.png" not in text


# ----------------------------------------------------------------------------- item 8: disk full on save

@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                 "data/0: file write failed"),
])
def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    path = tmp_path / "checkpoint_last.pt"
    ckmod.atomic_save({"model": {"w": torch.zeros(4)}, "epoch": 1}, path)
    before = path.read_bytes()

    def full_disk(obj, f):
        Path(f).write_bytes(b"partial")  # what a writer leaves when the disk fills mid-way
        raise failure

    monkeypatch.setattr(ckmod.torch, "save", full_disk)
    state = {"model": {"w": torch.zeros(3, 2**20)}, "epoch": 2}  # 12 MiB of tensors
    with pytest.raises(UserError) as exc:
        ckmod.atomic_save(state, path)
    msg = str(exc.value)
    assert msg.startswith("no space left on /") and "need about 12 MB" in msg and "intact" in msg, msg
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.pt"]  # no .tmp left


# ----------------------------------------------------------------------------- items 6, 7: the shared cache

def _store_dataset(paths, cache_dir) -> ImageDataset:
    prep = Preprocess(1, (8, 8), "naive")
    store = SharedStore(paths, 1, (8, 8), repr(prep), cache_dir=cache_dir)
    return ImageDataset(Split("s", paths, [0] * len(paths)), prep, False, 2, cache=store)


def test_cache_folder_is_private_and_foreign_ones_refused(tmp_path):
    mine = tmp_path / "mine"
    private_dir(mine)
    assert (mine.stat().st_mode & 0o777) == 0o700 and mine.stat().st_uid == os.getuid()
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    for tighten in (False, True):
        with pytest.raises(UserError, match="writable by other users"):
            private_dir(open_dir, tighten)
    readable = tmp_path / "readable"
    readable.mkdir(mode=0o755)
    readable.chmod(0o755)
    private_dir(readable, tighten=True)  # the default folder as an earlier version made it: made private
    assert (readable.stat().st_mode & 0o777) == 0o700
    if os.getuid() == 0:  # only root can give a folder away
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 12345, 12345)
        with pytest.raises(UserError, match="belongs to another user"):
            private_dir(foreign)


def test_damaged_cache_items_are_found_and_rebuilt(tmp_path, capfd):
    rng = np.random.default_rng(0)
    paths = [write_png(tmp_path / "img" / f"{i}.png", rng.integers(0, 256, (12, 12), dtype=np.uint8))
             for i in range(6)]
    clean = [ImageDataset(Split("s", paths, [0] * 6), Preprocess(1, (8, 8), "naive"), False, 2)[i]["image"]
             for i in range(6)]
    first = _store_dataset(paths, tmp_path / "cache")
    for i in range(6):
        first[i]
    assert first.cache.complete
    data = first.cache.dir / "data.f32"
    raw = bytearray(data.read_bytes())
    item = len(raw) // 6
    for k in (1, 4):  # flip bytes of items 1 and 4 (someone else, or a disk error)
        raw[k * item + 10] ^= 0xFF
        raw[k * item + 100] ^= 0x0F
    data.write_bytes(bytes(raw))
    del first
    capfd.readouterr()
    again = _store_dataset(paths, tmp_path / "cache")  # a later process: nothing verified yet
    got = [again[i]["image"].clone() for i in (0, 1, 2)]
    batch = again.batch_from_cache([3, 4, 5])  # the filled-store path checks too
    err = capfd.readouterr().err
    assert err.count("were damaged") == 2 and "item 1" in err and "item 4" in err, err
    for i, x in zip((0, 1, 2), got):
        assert torch.equal(x, clean[i])
    for k, i in enumerate((3, 4, 5)):
        assert torch.equal(batch["image"][k], clean[i])
    assert bool(batch["valid"].all())
    assert torch.equal(again.cache.get(4), clean[4])  # rebuilt in the store itself
    third = _store_dataset(paths, tmp_path / "cache")
    assert third.cache.damaged(range(6)) == []


def test_full_cache_device_is_an_error_before_training(tmp_path, monkeypatch):
    paths = [write_png(tmp_path / f"{i}.png", np.zeros((8, 8), dtype=np.uint8)) for i in range(4)]

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(UserError) as exc:
        _store_dataset(paths, tmp_path / "cache")
    msg = str(exc.value)
    assert msg.startswith("no space left on /") and "for the cache of dataset" in msg and "opmode: disk" in msg
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]  # no half-made store left


def test_store_space_is_reserved_at_creation(tmp_path):
    paths = [write_png(tmp_path / f"{i}.png", np.zeros((8, 8), dtype=np.uint8)) for i in range(64)]
    ds = _store_dataset(paths, tmp_path / "cache")
    data = ds.cache.dir / "data.f32"
    assert data.stat().st_blocks * 512 >= data.stat().st_size == 64 * 8 * 8 * 4  # allocated, not sparse


# ----------------------------------------------------------------------------- item 11: the engine (every entry point)

def test_ctrl_c_in_the_shared_engine_saves_and_resumes(tmp_path):
    """The loop finetuning and pretraining share: SIGINT at a step -> checkpoint there, Stopped (130),
    then a resume whose val.log equals an uninterrupted run's."""
    from test_engine import TinyMethod, data, loaders, make_model, make_trainer
    from utility.errors import Stopped

    class InterruptAt(TinyMethod):
        def train_loss(self, model, batch, ctx):
            if self.train_calls == 2:
                os.kill(os.getpid(), signal.SIGINT)  # a real signal, delivered to this process
            return super().train_loss(model, batch, ctx)

    train, val = data()
    ref = make_trainer(make_model(), TinyMethod(), tmp_path / "ref")
    ref.fit(*loaders(train, val))
    ref.close()
    first = make_trainer(make_model(), InterruptAt(), tmp_path / "run")
    with pytest.raises(Stopped) as exc:
        first.fit(*loaders(train, val))
    first.close()
    assert exc.value.exit_code == 130 and "epoch 1 step 3" in str(exc.value)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    ck = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)
    assert (ck["epoch"], ck["batch_in_epoch"]) == (0, 3)
    again = make_trainer(make_model(), TinyMethod(), tmp_path / "run")
    assert again.resume()
    again.fit(*loaders(train, val))
    again.close()
    assert log_rows(tmp_path / "run" / "val.log") == log_rows(tmp_path / "ref" / "val.log")
