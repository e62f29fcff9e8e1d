"""Planning and reporting at the size of a real study: 6 sources x 17 tasks x 5 modes x 4 repeats
(2,040 finetuning runs). Prints the planning time (configs + jobs written) and the time to build
results.csv, summary.csv and report.html over 2,040 existing run directories (generated here).
Targets: planning < 10 s, report < 60 s.

    python benchmarks/bench_study.py
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml


from utility.paths import REPO_ROOT
from utility.study.cli import report
from utility.study.jobs import append_jobs
from utility.study.plan import make_plan, write_configs
from utility.study.spec import load_study

TASKS = ["digits", "digits-M", "digits-S", "digits-XS", "digits-XXS", "CX8", "CX8-M", "CX8-S", "CX8-XS",
         "BraTS", "BraTS-M", "BraTS-S", "BraTS-XS", "LiTS", "LiTS-M", "LiTS-S", "LiTS-XS"]


def fake_run(rd: Path, metric: str, value: float, epochs: int = 10) -> None:
    rd.mkdir(parents=True, exist_ok=True)
    (rd / "config.yaml").write_text(f"name: {rd.name}\n")
    (rd / "test.log").write_text(f"{metric},avg_val_loss,epoch,model\n{value},0.5,{epochs},last\n")
    (rd / "test_best.log").write_text(f"{metric},avg_val_loss,epoch,model\n{value},0.5,{epochs},best\n")
    (rd / "val.log").write_text(f"epoch,avg_epoch_train_loss,{metric},avg_val_loss,lr,epoch_time_s\n" + "".join(
        f"{e},{1 / e},{value * (1 - 0.5 ** e)},0.5,0.01,3.0\n" for e in range(1, epochs + 1)))
    (rd / "train.log").write_text("epoch,step,loss,lr,global_step\n" + "".join(
        f"{e},{s},{1 / e},0.01,{(e - 1) * 5 + s}\n" for e in range(1, epochs + 1) for s in range(1, 6)))


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench_study_"))
    try:
        enc = tmp / "enc.tar"
        enc.write_bytes(b"x")
        study = {"name": "B", "pretrain": {"Scratch": None, **{f"S{i}": {"encoder": str(enc)} for i in range(5)}},
                 "finetune": {"config": str(REPO_ROOT / "pkgs/FTE/config/demo_digits.yaml")}, "tasks": TASKS,
                 "modes": {"finetune": {}, "lineval": {"frozen_encoder": True}, "m3": {"lr": 1e-4},
                           "m4": {"lr": 1e-2}, "m5": {"weight_decay": 0.01}},
                 "repeats": {"seeds": [42, 1, 2, 3]}, "output_root": str(tmp / "out"), "config_dir": str(tmp / "cfg")}
        path = tmp / "study.yaml"
        path.write_text(yaml.safe_dump(study))
        t0 = time.perf_counter()
        plan = make_plan(load_study(path))
        write_configs(plan)
        append_jobs(plan)
        t_plan = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        from utility.study.results import primary_metric

        metric = {t: primary_metric(t)[0] for t in TASKS}
        for r in plan.runs:
            fake_run(plan.output_root / "finetuning" / r.run_subdir, metric[r.task], float(rng.uniform(0.5, 0.9)))
        t0 = time.perf_counter()
        report(plan, quiet=True)
        t_report = time.perf_counter() - t0
        print(f"# {len(plan.runs)} runs ({len(study['pretrain'])} sources x {len(TASKS)} tasks x 5 modes x 4 repeats)")
        print(f"study_plan_s: ours {t_plan:.2f}, target 10.0, ratio {t_plan / 10:.2f}")
        print(f"study_report_s: ours {t_report:.2f}, target 60.0, ratio {t_report / 60:.2f}")
        print(f"report.html: {(plan.study_dir / 'report.html').stat().st_size / 1e6:.1f} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
