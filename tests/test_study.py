"""Studies: planning (names, configs, job lines, dependencies), idempotent re-plans, refused input,
statistics against scipy computed here from results.csv, and a report from a partial study."""
from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from conftest import HANG_GUARD_S, REPO, small_run_config, task_dict, write_yaml

STUDY = REPO / "pkgs" / "Study" / "study.py"


def study_cmd(*args) -> list[str]:
    return [sys.executable, str(STUDY), *map(str, args)]


@pytest.fixture
def setup(tmp_path):
    task = write_yaml(tmp_path / "tasks" / "tiny.yaml", task_dict())
    ft = write_yaml(tmp_path / "ft.yaml", small_run_config(name="base", task=str(task),
                                                           data_root=str(tmp_path / "data")))
    enc = tmp_path / "enc.tar"
    enc.write_bytes(b"weights")
    pre = write_yaml(tmp_path / "pre.yaml", {"name": "x", "dataset_base_dir": str(tmp_path / "data"),
                                              "resnet": "resnet18", "batch_size": 4, "epochs": 1, "device": "cpu"})
    study = {"name": "S1", "pretrain": {"Scratch": None, "Own": {"encoder": str(enc)},
                                        "SSL": {"config": str(pre), "overrides": {"epochs": 2}}},
             "finetune": {"config": str(ft), "overrides": {"epochs": 2}}, "tasks": [str(task)],
             "modes": {"finetune": {}, "lineval": {"frozen_encoder": True}},
             "repeats": {"seeds": [42, 1]}, "grid": {"lr": [0.001, 0.0001]},
             "output_root": str(tmp_path / "out"), "config_dir": str(tmp_path / "cfgs")}
    return {"tmp": tmp_path, "task": task, "study": study, "path": write_yaml(tmp_path / "study.yaml", study)}


def plan_of(path: Path):
    from utility.study.plan import make_plan
    from utility.study.spec import load_study

    return make_plan(load_study(path))


def test_plan_names_configs_jobs_and_dependencies(setup):
    proc = subprocess.run(study_cmd("-c", setup["path"], "--plan-only"), capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr
    plan = plan_of(setup["path"])
    task = "tiny"  # a task given as a YAML path is named by its file name
    assert len(plan.runs) == 3 * 2 * 2 * 2 and len(plan.pretrain) == 1
    names = {r.name for r in plan.runs}
    assert f"S1/PT_Scratch_FT_{task}_lr0.001" in names
    assert f"S1/PT_SSL_FT_{task}_lineval_lr0.0001_f1" in names
    cfgs = sorted((setup["tmp"] / "cfgs").rglob("*.yaml"))
    assert len(cfgs) == 25  # 24 finetuning + 1 pretraining
    run = next(r for r in plan.runs if r.name == f"S1/PT_SSL_FT_{task}_lineval_lr0.0001_f1")
    cfg = yaml.safe_load(run.config_path.read_text())
    assert cfg["seed"] == 1 and cfg["frozen_encoder"] is True and cfg["lr"] == 0.0001 and cfg["epochs"] == 2
    assert cfg["model_path"] == str(setup["tmp"] / "out" / "pretraining" / "S1" / "SSL" / "encoder_pretrained.tar")
    own = next(r for r in plan.runs if r.source == "Own")
    assert yaml.safe_load(own.config_path.read_text())["model_path"] == str(setup["tmp"] / "enc.tar")
    scratch = next(r for r in plan.runs if r.source == "Scratch")
    assert yaml.safe_load(scratch.config_path.read_text())["model_path"] is None
    pre = yaml.safe_load(plan.pretrain[0].config_path.read_text())
    assert pre["epochs"] == 2 and pre["name"] == "S1/SSL"
    lines = [ln for ln in plan.jobs_file.read_text().splitlines() if ln and not ln.startswith("#")]
    assert len(lines) == 25 and "pkgs/SimCLR/main.py" in lines[0] and f"id={plan.pretrain[0].job_id}" in lines[0]
    ssl_lines = [ln for ln in lines if "PT_SSL_FT" in ln]
    other = [ln for ln in lines[1:] if "PT_SSL_FT" not in ln]
    assert len(ssl_lines) == 8 and all(ln.endswith(f"after={plan.pretrain[0].job_id}") for ln in ssl_lines)
    assert all("after=" not in ln for ln in other)
    # every generated config is a valid finetuning config (the planner validated it; check one by hand)
    from utility.config.loader import validate
    from utility.config.schemas import FTEConfig

    validate(FTEConfig, cfg, "generated")


def test_replan_is_idempotent_and_picks_up_new_seeds(setup):
    from utility.study.cli import main

    assert main(["-c", str(setup["path"]), "--plan-only"]) == 0
    jobs = plan_of(setup["path"]).jobs_file
    first = jobs.read_text()
    # a user edits the jobs file (marks a job completed, adds a comment): a re-plan keeps every byte
    edited = first.replace(",open,", ",completed,", 1) + "# my note\n"
    jobs.write_text(edited)
    assert main(["-c", str(setup["path"]), "--plan-only"]) == 0
    assert jobs.read_text() == edited
    setup["study"]["repeats"] = {"seeds": [42, 1, 7]}
    write_yaml(setup["path"], setup["study"])
    assert main(["-c", str(setup["path"]), "--plan-only"]) == 0
    text = jobs.read_text()
    assert text.startswith(edited)
    added = text[len(edited):].splitlines()
    assert len(added) == 12 and all("_f2.yaml" in ln for ln in added)


def test_changed_setting_of_an_existing_run_is_refused(setup):
    from utility.study.cli import main

    assert main(["-c", str(setup["path"]), "--plan-only"]) == 0
    before = {p: p.read_bytes() for p in (setup["tmp"] / "cfgs").rglob("*.yaml")}
    setup["study"]["finetune"]["overrides"] = {"epochs": 5}
    write_yaml(setup["path"], setup["study"])
    proc = subprocess.run(study_cmd("-c", setup["path"], "--plan-only"), capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 2
    assert "epochs" in proc.stderr and "S1/PT_" in proc.stderr and "Traceback" not in proc.stderr
    assert {p: p.read_bytes() for p in (setup["tmp"] / "cfgs").rglob("*.yaml")} == before


@pytest.mark.parametrize("change, words", [
    (lambda s: s.update(pretrian=s.pop("pretrain")), ["pretrian", "did you mean 'pretrain'"]),
    (lambda s: s["pretrain"].update(Own={"encoder": "/nonexistent/enc.tar"}), ["Own", "/nonexistent/enc.tar"]),
    (lambda s: s.update(grid={"lr": []}), ["grid", "lr"]),
    (lambda s: s.update(tasks=["no_such_task"]), ["no_such_task"]),
    (lambda s: s["finetune"].update(overrides={"weight_decay": "heavy"}), ["weight_decay", "heavy"]),
    (lambda s: s["pretrain"]["SSL"].update(overrides={"temperature": -1}), ["SSL", "temperature"]),
    (lambda s: s["finetune"].update(confg="x"), ["finetune.confg", "finetune.config"]),
])
def test_bad_study_refused_before_anything_is_written(setup, change, words, capsys):
    from utility.entry import run_entry
    from utility.study.cli import main

    change(setup["study"])
    write_yaml(setup["path"], setup["study"])
    assert run_entry(main, ["-c", str(setup["path"]), "--plan-only"]) == 2  # in-process, as the entry point runs it
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for w in words:
        assert w in err
    assert not (setup["tmp"] / "cfgs").exists() and not (setup["tmp"] / "out").exists()


def test_gpu_jobs_on_a_machine_without_gpus_stop_before_queueing(setup, monkeypatch, capsys):
    import utility.queue.gpus as gpus
    from utility.entry import run_entry
    from utility.study.cli import main

    monkeypatch.setattr(gpus, "resolve", lambda arg: ([], "nvidia-smi -L"))
    assert run_entry(main, ["-c", str(setup["path"])]) == 2  # gpus_per_job: the default 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gpus_per_job is 1" in err[0] and "set gpus_per_job: 0" in err[0], err
    assert not (setup["tmp"] / "cfgs").exists() and not (setup["tmp"] / "out").exists()
    assert run_entry(main, ["-c", str(setup["path"]), "--plan-only"]) == 0  # planning needs no GPU


def test_study_help_lists_the_study_keys(capsys):
    from utility.study.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "  gpus_per_job int >= 0 (default 1)" in out and "  repeats.folds int >= 2 or null (default null)" in out
    assert "  pretrain.<source>.encoder str or null" in out and "  finetune.config str (default required)" in out


def test_duplicate_label_refused(setup):
    text = setup["path"].read_text().replace("  Scratch: null\n", "  Scratch: null\n  Scratch: null\n", 1)
    setup["path"].write_text(text)
    proc = subprocess.run(study_cmd("-c", setup["path"], "--plan-only"), capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 2 and "Scratch" in proc.stderr and "twice" in proc.stderr


# ----------------------------------------------------------------------------- results, statistics, report

def fake_run(rd: Path, acc: float, val_acc: list[float]) -> None:
    rd.mkdir(parents=True, exist_ok=True)
    (rd / "config.yaml").write_text(f"name: x\nacc: {acc}\n")
    (rd / "test.log").write_text(f"accuracy,avg_val_loss,epoch,model\n{acc},0.5,{len(val_acc)},last\n")
    (rd / "test_best.log").write_text(f"accuracy,avg_val_loss,epoch,model\n{acc + 0.01},0.4,1,best\n")
    rows = "".join(f"{e + 1},1.0,{v},0.5,0.01,2.5\n" for e, v in enumerate(val_acc))
    (rd / "val.log").write_text("epoch,avg_epoch_train_loss,accuracy,avg_val_loss,lr,epoch_time_s\n" + rows)
    (rd / "train.log").write_text("epoch,step,loss,lr,global_step\n" + "".join(
        f"{e + 1},1,{1.0 / (e + 1)},0.01,{e + 1}\n" for e in range(len(val_acc))))


def test_statistics_equal_scipy_and_report_from_partial_study(setup):
    setup["study"].update(grid={}, modes={"lineval": {"frozen_encoder": True}}, repeats={"seeds": [1, 2, 3, 4]})
    write_yaml(setup["path"], setup["study"])
    plan = plan_of(setup["path"])
    rng = np.random.default_rng(0)
    values: dict[str, dict[int, float]] = {}
    for r in plan.runs:
        if r.source == "Own" and r.seed == 4:
            continue  # missing run: Own has 3 repeats, so Own vs others is Welch
        if r.source == "SSL" and r.seed == 3:
            rd = plan.output_root / "finetuning" / r.name
            rd.mkdir(parents=True)
            (rd / "crash.log").write_text("error: boom\n")
            continue
        acc = round(float(rng.uniform(0.5, 0.9)), 6)
        values.setdefault(r.source, {})[r.seed] = acc
        fake_run(plan.output_root / "finetuning" / r.name, acc, [0.5, 0.7, 0.8, acc])
    from utility.study.cli import report

    report(plan, quiet=True)
    with (plan.study_dir / "results.csv").open() as fh:
        results = list(csv.DictReader(fh))
    assert len(results) == 12
    assert {r["status"] for r in results} == {"completed", "failed", "missing"}
    failed = next(r for r in results if r["status"] == "failed")
    assert failed["crash_log"].endswith("crash.log")
    done = [r for r in results if r["status"] == "completed"]
    assert all(float(r["best_accuracy"]) == pytest.approx(float(r["last_accuracy"]) + 0.01) for r in done)
    assert all(r["wall_time_s"] == "10.0" and r["epochs"] == "4" for r in done)
    with (plan.study_dir / "summary.csv").open() as fh:
        summary = {r["source"]: r for r in csv.DictReader(fh)}
    for src, vals in values.items():
        x = np.array(list(vals.values()))
        row = summary[src]
        assert int(row["n"]) == len(x)
        assert float(row["mean"]) == pytest.approx(x.mean(), rel=1e-9)
        assert float(row["std"]) == pytest.approx(x.std(ddof=1), rel=1e-9)
        half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
        assert float(row["ci95_high"]) == pytest.approx(x.mean() + half, rel=1e-9)
    # Own lacks seed 4: the paired t-test on the three seeds both have, not Welch's over all
    s, o = values["Scratch"], values["Own"]
    assert set(o) != set(s)
    common = sorted(set(o) & set(s))
    x, y = np.array([o[k] for k in common]), np.array([s[k] for k in common])
    assert float(summary["Own"]["p_vs_Scratch"]) == pytest.approx(stats.ttest_rel(x, y).pvalue, rel=1e-9)
    assert summary["Own"]["test_vs_Scratch"] == "paired t-test" and summary["Own"]["repeats_vs_Scratch"] == "3"
    pooled = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)           # equal sizes: the mean variance
    g = (1 - 3 / (4 * 6 - 9)) * (x.mean() - y.mean()) / pooled
    assert float(summary["Own"]["hedges_g_vs_Scratch"]) == pytest.approx(g, rel=1e-9)
    assert summary["Own"]["ci95_over"] == "seeds"
    # the columns added for uncertainty come after every original one
    with (plan.study_dir / "summary.csv").open() as fh:
        header = next(csv.reader(fh))
    assert header.index("test_vs_SSL") < header.index("repeats_vs_Scratch") < header.index("p_holm_vs_Scratch")
    assert max(header.index(f"test_vs_{x}") for x in ("Scratch", "Own", "SSL")) < header.index("ci95_over")
    pct = (np.mean(list(o.values())) - np.mean(list(s.values()))) / abs(np.mean(list(s.values()))) * 100
    assert float(summary["Own"]["pct_change_vs_Scratch"]) == pytest.approx(pct, rel=1e-9)
    page = (plan.study_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3
    assert "failed" in page and "crash.log" in page and "missing" in page


def test_paired_test_when_repeats_match(tmp_path):
    from utility.study.stats import compare

    a = {"s1": 0.8, "s2": 0.85, "s3": 0.83}
    b = {"s1": 0.7, "s2": 0.78, "s3": 0.74}
    pct, p, kind = compare(a, b)
    assert kind == "paired t-test"
    assert p == pytest.approx(stats.ttest_rel([0.8, 0.85, 0.83], [0.7, 0.78, 0.74]).pvalue, rel=1e-12)
    assert pct == pytest.approx((np.mean(list(a.values())) / np.mean(list(b.values())) - 1) * 100)


def test_convergence_epoch_definition():
    from utility.study.results import convergence_epoch

    # trailing 3-epoch means: .1 .3 .4667 .7333 .8667 .9 -> only the last is within 0.5 % of .9
    assert convergence_epoch([0.1, 0.5, 0.8, 0.9, 0.9, 0.9]) == 6
    assert convergence_epoch([0.9] * 5) == 1
    assert convergence_epoch([0.5, 0.9, 0.9, 0.9, 0.9, 0.9]) == 4
    assert convergence_epoch([float("nan")] * 3) is None


def test_pretraining_with_a_given_name_is_shared_between_studies(setup):
    setup["study"]["pretrain"]["SSL"]["overrides"] = {"epochs": 2, "name": "shared/SSL"}
    write_yaml(setup["path"], setup["study"])
    plan = plan_of(setup["path"])
    enc = setup["tmp"] / "out" / "pretraining" / "shared" / "SSL" / "encoder_pretrained.tar"
    assert plan.pretrain[0].name == "shared/SSL" and plan.pretrain[0].encoder == enc
    assert {r.config["model_path"] for r in plan.runs if r.source == "SSL"} == {str(enc)}


def test_a_run_still_changing_at_its_last_epoch_has_not_converged():
    from utility.study.results import convergence_epoch, has_converged

    rising = [0.1, 0.5, 0.8, 0.9, 0.9, 0.9]  # trailing means reach .9 only at the last epoch
    assert not has_converged(rising, convergence_epoch(rising))
    flat = [0.5, 0.9, 0.9, 0.9, 0.9, 0.9]
    assert has_converged(flat, convergence_epoch(flat))
    assert has_converged([0.7], convergence_epoch([0.7]))  # one epoch: nothing to compare
    assert not has_converged([float("nan")] * 3, None)


# ----------------------------------------------------------------------------- uncertainty over subjects

def _holm_ref(p: list[float]) -> list[float]:
    """Holm step-down, written out: the i-th smallest p times (m - i), running maximum, capped at 1."""
    m, order = len(p), sorted(range(len(p)), key=lambda i: p[i])
    out, run = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        run = max(run, min(1.0, (m - rank) * p[i]))
        out[i] = run
    return out


def _bh_ref(p: list[float]) -> list[float]:
    """Benjamini-Hochberg step-up, written out: from the largest p down, running minimum of p m / rank."""
    m, order = len(p), sorted(range(len(p)), key=lambda i: p[i])
    out, run = [0.0] * m, 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        run = min(run, p[i] * m / rank)
        out[i] = run
    return out


def test_subject_bootstrap_and_adjusted_p_values_over_the_grid(setup):
    """Runs with per-sample predictions on one test set of 12 subjects (uneven sizes): summary.csv's
    subject intervals and paired differences equal a recomputation over the same 1000 draws (seed 0);
    Holm and BH over the grid equal the implementations above; the report shows them."""
    setup["study"].update(grid={}, modes={"lineval": {"frozen_encoder": True}}, repeats={"seeds": [1, 2, 3]})
    write_yaml(setup["path"], setup["study"])
    plan = plan_of(setup["path"])
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 5, 12)
    subject = np.repeat([f"p{i:02d}" for i in range(12)], sizes)
    n = len(subject)
    files = [f"/data/test/{i:03d}.png" for i in range(n)]
    y = rng.integers(0, 3, n)
    correct: dict[tuple[str, int], np.ndarray] = {}
    skill = {"Scratch": 0.5, "Own": 0.8, "SSL": 0.6}
    for r in plan.runs:
        if r.source == "Own" and r.seed == 3:
            continue                                       # Own and Scratch share seeds 1 and 2 only
        probs = rng.dirichlet([1, 1, 1], n)
        hit = rng.random(n) < skill[r.source]
        probs[hit, y[hit]] += 2
        probs /= probs.sum(1, keepdims=True)
        pred = probs.argmax(1)
        correct[(r.source, r.seed)] = pred == y
        rd = plan.output_root / "finetuning" / r.name
        fake_run(rd, float(np.mean(pred == y)), [0.5, 0.6])
        (rd / "classes.txt").write_text("a\nb\nc\n")
        order = rng.permutation(n)                         # written in any order: aligned by file
        lines = ["file,target,predicted,prob_a,prob_b,prob_c,subject"] + [
            f"{files[i]},{'abc'[y[i]]},{'abc'[pred[i]]},{float(probs[i, 0])!r},{float(probs[i, 1])!r},{float(probs[i, 2])!r},{subject[i]}"
            for i in order]
        (rd / "predictions_test_last.csv").write_text("\n".join(lines) + "\n")
    from utility.study.cli import report

    report(plan, quiet=True)
    with (plan.study_dir / "summary.csv").open() as fh:
        summary = {r["source"]: r for r in csv.DictReader(fh)}
    codes = np.unique(subject, return_inverse=True)[1]
    members = [np.flatnonzero(codes == s) for s in range(12)]
    draws = np.random.default_rng(0).integers(0, 12, (1000, 12))
    idx = [np.concatenate([members[s] for s in d]) for d in draws]

    def dist(src: str, seeds: list[int]) -> np.ndarray:
        return np.mean([[correct[(src, s)][i].mean() for i in idx] for s in seeds], axis=0)

    for src, seeds in (("Scratch", [1, 2, 3]), ("Own", [1, 2]), ("SSL", [1, 2, 3])):
        d = dist(src, seeds)
        assert summary[src]["n_subjects"] == "12"
        assert float(summary[src]["subjects_ci95_low"]) == pytest.approx(np.percentile(d, 2.5), abs=1e-9)
        assert float(summary[src]["subjects_ci95_high"]) == pytest.approx(np.percentile(d, 97.5), abs=1e-9)
    delta = dist("Own", [1, 2]) - dist("Scratch", [1, 2])                # the repeats both have
    point = np.mean([correct[("Own", s)].mean() - correct[("Scratch", s)].mean() for s in (1, 2)])
    own = summary["Own"]
    assert float(own["diff_vs_Scratch"]) == pytest.approx(point, abs=1e-12)
    assert float(own["diff_ci95_low_vs_Scratch"]) == pytest.approx(np.percentile(delta, 2.5), abs=1e-9)
    assert float(own["diff_ci95_high_vs_Scratch"]) == pytest.approx(np.percentile(delta, 97.5), abs=1e-9)
    p = min(1.0, 2 * (min(np.sum(delta <= 0), np.sum(delta >= 0)) + 1) / 1001)
    assert float(own["p_subjects_vs_Scratch"]) == pytest.approx(p, abs=1e-12)
    assert float(summary["Scratch"]["diff_vs_Own"]) == pytest.approx(-point, abs=1e-12)
    # the grid's family: three pairs of sources, once each, for both kinds of p-value
    pairs = [("Own", "Scratch"), ("SSL", "Scratch"), ("SSL", "Own")]
    for raw, holm_col, bh_col in (("p_vs_", "p_holm_vs_", "p_bh_vs_"),
                                  ("p_subjects_vs_", "p_subjects_holm_vs_", "p_subjects_bh_vs_")):
        ps = [float(summary[a][f"{raw}{b}"]) for a, b in pairs]
        for (a, b), h, q in zip(pairs, _holm_ref(ps), _bh_ref(ps)):
            for x, o in ((a, b), (b, a)):
                assert float(summary[x][f"{holm_col}{o}"]) == pytest.approx(h, rel=1e-12)
                assert float(summary[x][f"{bh_col}{o}"]) == pytest.approx(q, rel=1e-12)
    page = (plan.study_dir / "report.html").read_text()
    assert "Uncertainty over repeats and over subjects" in page
    assert f"[{float(own['subjects_ci95_low']):.3f}, {float(own['subjects_ci95_high']):.3f}] (12)" in page
