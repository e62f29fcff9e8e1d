"""User mistakes: finetuning run as a user would, from another folder.

Every mistake must end with exit code 2, one short message naming the key/file and what was
expected, no traceback on the terminal, and nothing the user owns changed. The cases run in-process
through ``run_entry`` (as ``pkgs/FTE/finetune.py`` calls it); ``test_missing_data_folder`` runs the real
script in a child process, the proof that the script itself ends this way.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conftest import REPO, run_inproc, snapshot, small_run_config, task_dict, write_class_image, write_yaml


def finetune(args: list, cwd: Path, cpu_only: bool = True):
    """The finetuning entry point in-process (see ``conftest.run_inproc``)."""
    from utility.runs.finetune import main

    return run_inproc(main, args, cwd, cpu_only=cpu_only)


def assert_user_error(proc, *fragments: str, max_lines: int = 3) -> str:
    """Exit 2, no traceback, a short 'error: ...' message on stderr holding every fragment."""
    err = proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{err}"
    assert "Traceback" not in err and "Traceback" not in proc.stdout, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert 1 <= len(lines) <= max_lines, err
    assert lines[0].startswith("error: "), err
    for f in fragments:
        assert f in err, f"{f!r} not in stderr:\n{err}"
    return err


def args_for(s, *extra) -> list:
    return ["-c", s["config"], "--data_root", s["data_root"], "--output_root", s["out_root"], *extra]


@pytest.fixture
def guarded(tiny_setup):
    """tiny_setup + a check that the user's data and config file are unchanged afterwards."""
    before = snapshot(tiny_setup["data_root"]), tiny_setup["config"].read_bytes()
    yield tiny_setup
    assert snapshot(tiny_setup["data_root"]) == before[0]
    assert tiny_setup["config"].read_bytes() == before[1]


def run_dirs(out_root: Path) -> list[Path]:
    base = out_root / "finetuning"
    return sorted(p for p in base.rglob("*") if p.is_dir()) if base.exists() else []


# ----------------------------------------------------------------------------- config mistakes

def test_unknown_key_in_file(tmp_path, guarded):
    cfg = write_yaml(tmp_path / "typo.yaml", {**small_run_config(task=guarded["task"]), "epoch": 2})
    proc = finetune(["-c", cfg, "--output_root", guarded["out_root"]], cwd=guarded["cwd"])
    assert_user_error(proc, "'epoch'", "did you mean 'epochs'?", "typo.yaml")
    assert not guarded["out_root"].exists()  # nothing written for a config mistake


def test_wrong_type_on_command_line(guarded):
    proc = finetune(args_for(guarded, "--lr", "abc"), cwd=guarded["cwd"])
    assert_user_error(proc, "'lr'", "'abc'", "number")


def test_config_file_missing(tmp_path):
    proc = finetune(["-c", "no_such_config.yaml"], cwd=tmp_path)
    assert_user_error(proc, "config file not found", "no_such_config.yaml")


def test_unknown_task(guarded):
    proc = finetune(args_for(guarded, "--task", "CX9"), cwd=guarded["cwd"])
    assert_user_error(proc, "unknown task 'CX9'", "did you mean 'CX8'?")


# ----------------------------------------------------------------------------- data mistakes

def test_missing_data_folder(tmp_path, run_finetune, guarded):
    # output_root given relative and not existing yet: a new folder under the cwd, not the repository
    repo_out = REPO / "outputs_test_fte"
    assert not repo_out.exists()
    proc = run_finetune(["-c", guarded["config"], "--data_root", tmp_path / "nowhere",
                         "--output_root", "outputs_test_fte"], cwd=guarded["cwd"])
    assert_user_error(proc, "data folder not found", str(tmp_path / "nowhere" / "tiny"))
    assert not repo_out.exists()
    # what an early user error leaves behind: the run dir with only our crash.log (the message) and
    # the emptied run.lock
    run_dir = guarded["cwd"] / "outputs_test_fte" / "finetuning" / "t" / "run"
    assert run_dir.is_dir()
    assert snapshot(run_dir).keys() <= {"crash.log", "run.lock"}
    assert (run_dir / "run.lock").read_text() == ""
    if (run_dir / "crash.log").exists():
        assert "data folder not found" in (run_dir / "crash.log").read_text()


def test_empty_split(tmp_path, make_folder_dataset, write_task_yaml):
    data_root = tmp_path / "data"
    make_folder_dataset(data_root / "tiny", ["a", "b"], 4, splits=("train",))
    make_folder_dataset(data_root / "tiny", ["a", "b"], 2, splits=("test",), ext=".jpg")  # wrong format
    task = write_task_yaml(root="tiny")
    cfg = write_yaml(tmp_path / "run.yaml", small_run_config(task=task))
    proc = finetune(["-c", cfg, "--data_root", data_root, "--output_root", tmp_path / "out"], cwd=tmp_path)
    assert_user_error(proc, "split 'test' is empty", ".png", str(task))


@pytest.mark.parametrize("bad_label", ["bird"])  # numeric indices: test_tasks_index.py
def test_label_outside_classes(tmp_path, bad_label):
    data_root = tmp_path / "data"
    root = data_root / "pets"
    rows = [("file", "label")]
    for split, n in (("train", 8), ("test", 4)):
        for i in range(n):
            name = f"{split}_{i}.png"
            write_class_image(root / split / name, i % 2)
            rows.append((name, ["cat", "dog"][i % 2]))
    rows[5] = ("train_4.png", bad_label)
    with (root / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    task = write_yaml(tmp_path / "pets.yaml", task_dict(
        name="pets", root="pets", classes=["cat", "dog"],
        layout={"reader": "csv", "labels_file": "labels.csv"}))
    cfg = write_yaml(tmp_path / "run.yaml", small_run_config(task=task))
    proc = finetune(["-c", cfg, "--data_root", data_root, "--output_root", tmp_path / "out"], cwd=tmp_path)
    assert_user_error(proc, "train_4.png", repr(bad_label), "cat, dog")


def test_w_l_length_must_match_classes(guarded):
    proc = finetune(args_for(guarded, "--w_l", "[1,5,5,5]"), cwd=guarded["cwd"])
    assert_user_error(proc, "'w_l'", "4 weights", "2 classes")


# ----------------------------------------------------------------------------- weights files

def test_model_path_missing(tmp_path, guarded):
    proc = finetune(args_for(guarded, "--model_path", tmp_path / "enc_missing.tar"), cwd=guarded["cwd"])
    assert_user_error(proc, "model_path not found", "enc_missing.tar")


def test_model_path_of_other_architecture(tmp_path, guarded):
    import torch
    import torchvision

    net = torchvision.models.resnet34(weights=None)
    net.fc = torch.nn.Identity()
    enc = {k: v for k, v in net.state_dict().items()}
    enc_file = tmp_path / "weights" / "encoder_resnet34.tar"
    enc_file.parent.mkdir()
    torch.save(enc, enc_file)
    before = enc_file.read_bytes()
    proc = finetune(args_for(guarded, "--model_path", enc_file), cwd=guarded["cwd"])
    err = assert_user_error(proc, str(enc_file), "does not fit", "model_name")
    assert "unexpected keys" in err  # resnet34 has blocks resnet18 lacks
    assert enc_file.read_bytes() == before


def test_model_path_corrupt(tmp_path, guarded):
    bad = tmp_path / "broken.tar"
    bad.write_bytes(b"PK\x03\x04 this is not a torch file" * 10)
    proc = finetune(args_for(guarded, "--model_path", bad), cwd=guarded["cwd"])
    assert_user_error(proc, "cannot load weights", str(bad))


# ----------------------------------------------------------------------------- device

def test_cuda_requested_without_cuda(guarded):
    proc = finetune(args_for(guarded, "--device", "cuda"), cwd=guarded["cwd"], cpu_only=True)
    assert_user_error(proc, "'cuda'", "CUDA is not available", "device: cpu")


# ----------------------------------------------------------------------------- other runs are safe

def other_run(guarded) -> Path:
    """A finished run of another config under the same name (user's results, own crash.log)."""
    run_dir = guarded["out_root"] / "finetuning" / "t" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("name: t/run\ntask: digits\nlr: 0.5\nmodel_name: resnet50\n")
    (run_dir / "train.log").write_text("epoch,step,loss\n1,1,0.5\n")
    (run_dir / "val.log").write_text("epoch,avg_epoch_train_loss,accuracy\n1,0.5,0.9\n")
    (run_dir / "crash.log").write_text("the user's own crash.log\n")
    (run_dir / "finetuned_model.tar").write_bytes(b"\x00\x01weights")
    return run_dir


def test_existing_run_with_other_config_is_refused_untouched(guarded):
    run_dir = other_run(guarded)
    before = snapshot(run_dir)
    proc = finetune(args_for(guarded), cwd=guarded["cwd"])
    assert_user_error(proc, str(run_dir), "different config", "lr", "another name")
    assert snapshot(run_dir) == before  # byte for byte, and no new files (not even crash.log)


def test_kfold_run_does_not_nest_into_other_run(guarded):
    run_dir = other_run(guarded)
    before = snapshot(run_dir)
    proc = finetune(args_for(guarded, "--folds", "2"), cwd=guarded["cwd"])
    assert_user_error(proc, str(run_dir), "another name")
    assert snapshot(run_dir) == before
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(before)  # no fold_<i>/ folders


@pytest.mark.parametrize("files", [
    {"notes.txt": "my notes\n", "test.log": "accuracy\n0.9\n"},             # no config.yaml at all
    {"config.yaml": "- not\n- a mapping\n", "train.log": "epoch,step,loss\n1,1,0.3\n",
     "val.log": "epoch,avg_epoch_train_loss,accuracy\n1,0.3,0.8\n"},          # someone else's config.yaml
], ids=["no_config", "foreign_config"])
def test_foreign_non_empty_dir_is_refused_untouched(guarded, files):
    run_dir = guarded["out_root"] / "finetuning" / "t" / "run"
    run_dir.mkdir(parents=True)
    for name, text in files.items():
        (run_dir / name).write_text(text)
    before = snapshot(run_dir)
    proc = finetune(args_for(guarded), cwd=guarded["cwd"])
    assert_user_error(proc, str(run_dir), "another name", "nothing was overwritten")
    assert snapshot(run_dir) == before


@pytest.mark.e2e  # trains in-process
def test_fixed_mistake_reruns_under_same_name(guarded):
    """After a user error (the state test_missing_data_folder checks: a run dir holding only our
    crash.log) the corrected command must run, from any cwd, and write the run directory with the
    predecessor's CSV columns."""
    s = guarded
    run_dir = s["out_root"] / "finetuning" / "t" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "crash.log").write_text("error: task tiny: data folder not found: /somewhere/tiny\n")
    proc = finetune(args_for(s), cwd=s["cwd"])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    with (run_dir / "train.log").open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:3] == ["epoch", "step", "loss"]
    # 16 train images: val = 25 % = 4, train 12 -> batches of 8: 2 steps
    assert [r[:2] for r in rows[1:]] == [["1", "1"], ["1", "2"]]
    with (run_dir / "val.log").open() as fh:
        header = next(csv.reader(fh))
    assert header[:4] == ["epoch", "avg_epoch_train_loss", "accuracy", "avg_val_loss"]
    with (run_dir / "test.log").open() as fh:
        test_rows = list(csv.DictReader(fh))
    assert len(test_rows) == 1 and 0.0 <= float(test_rows[0]["accuracy"]) <= 1.0
    assert not (run_dir / "crash.log").exists() or "error:" not in (run_dir / "crash.log").read_text()
