"""Job dependencies (id=/after=): waiting, packing on (fake) GPUs, failed dependencies,
reopening, refused graphs and the dry run's waves."""
import json
import os
import sys

import pytest

from test_queue_helpers import records, run_queue, statuses, write_jobs

REC = """\
import json, os, sys, time
name, secs = sys.argv[1], float(sys.argv[2])
t0 = time.time()
time.sleep(secs)
rc = int(sys.argv[3]) if len(sys.argv) > 3 else 0
if len(sys.argv) > 4 and os.path.exists(sys.argv[4]):
    rc = 0                                   # 'fixed' once this file exists
with open('runs.jsonl', 'a') as f:
    f.write(json.dumps({'name': name, 'cvd': os.environ.get('CUDA_VISIBLE_DEVICES'),
                        'start': t0, 'end': time.time()}) + '\\n')
sys.exit(rc)
"""


def runs(tmp_path):
    path = tmp_path / "runs.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return {r["name"]: r for r in rows}


def test_finetunes_wait_for_their_pretraining_while_others_pack_the_gpus(tmp_path):
    """4 fake GPUs: pretraining on 2; three gpus=1 finetunes after it; an unrelated gpus=1
    job and a CPU job run beside the pretraining, not after it."""
    (tmp_path / "rec.py").write_text(REC)
    text = ("## study\n"
            "python rec.py pre 1.0,open,gpus=2;id=pre\n"
            "python rec.py ft1 0.3,open,gpus=1;after=pre\n"
            "python rec.py ft2 0.3,open,gpus=1;after=pre;id=ft2\n"
            "python rec.py ft3 0.3,open,gpus=1;after=pre\n"
            "python rec.py other 0.5,open,gpus=1\n"
            "python rec.py cpu 0.2,open,gpus=0\n"
            "python rec.py last 0.1,open,gpus=2;after=ft2+pre\n")
    jobs = write_jobs(tmp_path, text)
    r = run_queue(tmp_path, jobs, "--gpus", "4")
    assert r.returncode == 0, r.stdout + r.stderr
    rs = runs(tmp_path)
    pre = rs["pre"]
    assert pre["cvd"] == "0,1"
    for ft in ("ft1", "ft2", "ft3"):
        assert rs[ft]["start"] >= pre["end"] - 0.02, (ft, rs)
        assert len(rs[ft]["cvd"].split(",")) == 1
    assert rs["last"]["start"] >= rs["ft2"]["end"] - 0.02
    assert rs["other"]["start"] < pre["end"] and rs["other"]["cvd"] in ("2", "3")
    assert rs["cpu"]["start"] < pre["end"] and rs["cpu"]["cvd"] == ""
    # finetunes running at the same time got different GPUs
    fts = [rs[n] for n in ("ft1", "ft2", "ft3")]
    for a in fts:
        for b in fts:
            if a is not b and a["start"] < b["end"] and b["start"] < a["end"]:
                assert a["cvd"] != b["cvd"]
    assert jobs.read_text() == text.replace(",open,", ",completed,")   # only statuses changed


def test_failed_dependency_fails_its_dependants_and_reopening_reopens_nothing(tmp_path):
    (tmp_path / "rec.py").write_text(REC)
    text = ("python rec.py a 0.1 3 fixed,open,gpus=0;id=a\n"       # fails (exit 3)
            "python rec.py ok 0.1,open,gpus=0;id=ok\n"
            "python rec.py b 0,open,gpus=0;after=a;id=b\n"
            "python rec.py c 0,open,gpus=0;after=b\n"              # through b
            "python rec.py d 0,open,gpus=0;after=ok+a\n"
            "python rec.py e 0,open,gpus=0;after=ok\n")
    jobs = write_jobs(tmp_path, text)
    r = run_queue(tmp_path, jobs, "--gpus", "none")
    assert r.returncode == 1, r.stdout + r.stderr
    assert statuses(jobs) == ["failed", "completed", "failed", "failed", "failed", "completed"]
    assert set(runs(tmp_path)) == {"a", "ok", "e"}                 # b, c, d never started
    assert "L3 failed: dependency L1 (id=a) failed; not started" in r.stdout
    ends = {rec["command"]: rec for rec in records(tmp_path, jobs) if rec["event"] == "end"}
    assert ends["python rec.py b 0"]["reason"] == "dependency L1 (id=a) failed"
    assert ends["python rec.py c 0"]["reason"] == "dependency L3 (id=b) failed"
    assert ends["python rec.py d 0"]["status"] == "failed"
    st = run_queue(tmp_path, jobs, "status")
    assert st.returncode == 0
    assert "L3 failed: dependency L1 (id=a) failed" in st.stdout
    assert "L4 failed: dependency L3 (id=b) failed" in st.stdout
    row_b = next(x for x in st.stdout.splitlines() if x.startswith("3 "))
    assert row_b.split()[1:3] == ["failed", "0"]                    # never tried
    # the user fixes and reopens the dependency only: it runs, its dependants stay failed
    (tmp_path / "fixed").touch()
    jobs.write_text(jobs.read_text().replace("python rec.py a 0.1 3 fixed,failed,",
                                             "python rec.py a 0.1 3 fixed,open,"))
    r = run_queue(tmp_path, jobs, "--gpus", "none")
    assert r.returncode == 0, r.stdout + r.stderr
    assert statuses(jobs) == ["completed", "completed", "failed", "failed", "failed", "completed"]
    # reopening a dependant runs it now that its dependency completed
    jobs.write_text(jobs.read_text().replace("python rec.py b 0,failed,", "python rec.py b 0,open,"))
    r = run_queue(tmp_path, jobs, "--gpus", "none")
    assert r.returncode == 0 and statuses(jobs)[2] == "completed"
    assert "b" in runs(tmp_path) and "c" not in runs(tmp_path)


@pytest.mark.parametrize("text, needle", [
    ("true,open,id=pre\ntrue,open,after=pree\n", "Jobs.csv:2: after=pree: no job has id=pree"),
    ("true,open,id=a\ntrue,completed,id=a\n", "Jobs.csv:2: id=a is already the id of line 1"),
    ("true,open,id=a;after=c\ntrue,open,id=b;after=a\ntrue,open,id=c;after=b\n",
     "Jobs.csv:1: dependency cycle L1 -> L3 -> L2 -> L1"),
    ("true,open,id=a;after=a\n", "Jobs.csv:1: dependency cycle L1 -> L1"),
    ("true,open,id=a b\n", "Jobs.csv:1: bad option field 'id=a b'"),
])
def test_bad_dependencies_stop_the_queue_naming_the_line(tmp_path, text, needle):
    jobs = write_jobs(tmp_path, text)
    for args in ((), ("--dry-run",)):
        r = run_queue(tmp_path, jobs, "--gpus", "none", *args)
        assert r.returncode == 2 and needle in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert jobs.read_text() == text


def test_unknown_id_in_a_finished_line_is_fine(tmp_path):
    """A user deletes a finished pretraining line: its finished dependants are no mistake."""
    jobs = write_jobs(tmp_path, "true,completed,after=gone\ntrue,open,\n")
    r = run_queue(tmp_path, jobs, "--gpus", "none")
    assert r.returncode == 0, r.stderr
    assert statuses(jobs) == ["completed", "completed"]


def test_dry_run_shows_the_waves(tmp_path):
    text = ("true pre,open,gpus=2;id=pre\ntrue ft1,open,gpus=1;after=pre\ntrue ft2,open,gpus=1;after=pre\n"
            "true other,open,gpus=1\ntrue big,open,gpus=9;id=big\ntrue stuck,open,gpus=0;after=big\n"
            "true done,completed,id=done\ntrue x,open,gpus=0;after=done\n"
            "false,failed,id=bad\ntrue y,open,gpus=0;after=bad\n")
    jobs = write_jobs(tmp_path, text)
    r = run_queue(tmp_path, jobs, "--gpus", "3", "--dry-run")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "wave 0: L1 on GPUs 0,1 (" in out and "wave 0: L4 on GPUs 2 (" in out
    assert "wave 1: L2 on GPUs 0, after L1 (" in out and "wave 1: L3 on GPUs 1, after L1 (" in out
    assert "wave 0: L8 on no GPU, after L7 (" in out
    assert "never: L5 needs 9 GPUs" in out
    assert "never: L6 waits for L5 (id=big, open), which cannot run" in out
    assert "skip L10 (open; would be marked failed: dependency L9 (id=bad) failed)" in out
    assert jobs.read_text() == text


def test_slurm_dry_run_names_the_afterok_dependencies(tmp_path):
    jobs = write_jobs(tmp_path, "true pre,open,gpus=1;id=pre\ntrue ft,open,gpus=1;after=pre\n"
                                "true done,completed,id=d\ntrue x,open,gpus=0;after=d\n")
    r = run_queue(tmp_path, jobs, "--backend", "slurm", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "submit L2 (sbatch --gres=gpu:1 --dependency=afterok:<job of L1>): true ft" in r.stdout
    assert "submit L4 (sbatch): true x" in r.stdout                 # completed dependency: no flag
