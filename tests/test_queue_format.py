"""Jobs.csv format: predecessor round trip, quoting, options, user mistakes, status, dry run."""
import json
import os
import sys

import pytest

from test_queue_helpers import (jobsfile, latest, run_queue, statuses,
                                write_jobs)
from utility.queue.errors import QueueError


PREDECESSOR = (
    "## E1\r\n"
    "# finetune on BraTS, seeds 42,1,2,3\r\n"
    "true,open,\r\n"
    "echo first run,completed,\r\n"
    "\r\n"
    "## E2 (less data)\n"
    "#true,open,\n"
    "   \n"
    "true --flag a,b.yaml,open,\n"       # a comma inside an unquoted predecessor command
    "echo last,open,"                    # no newline at the end of the file
)


def test_predecessor_file_round_trips_byte_for_byte(tmp_path):
    jobs = write_jobs(tmp_path, PREDECESSOR)
    r = run_queue(tmp_path, jobs, "--gpus", "none")
    assert r.returncode == 0, r.stdout + r.stderr
    expected = (PREDECESSOR.replace("true,open,", "true,completed,", 1)
                .replace("true --flag a,b.yaml,open,", "true --flag a,b.yaml,completed,")
                .replace("echo last,open,", "echo last,completed,"))
    assert "#true,open," in expected            # the commented-out job stays as it was
    assert (tmp_path / "Jobs.csv").read_bytes() == expected.encode()


def test_parse_split_at_last_two_commas_and_quotes():
    lines = jobsfile.parse_text(
        "python a.py -c x,y.yaml,open,\n"
        '"echo ""a,b"" c",failed,gpus=2;retries=1\n'
        '"my prog" arg,running,\n'
        "cmd,open\n"
        "x --l 1,2,completed\n"
        "cmd, Open ,shell=1\n")
    jobs = [ln for ln in lines if ln.kind == "job"]
    assert [(j.command, j.status) for j in jobs] == [
        ("python a.py -c x,y.yaml", "open"),
        ('echo "a,b" c', "failed"),
        ('"my prog" arg', "running"),
        ("cmd", "open"),
        ("x --l 1,2", "completed"),
        ("cmd", "open"),
    ]
    assert jobs[1].options.gpus == 2 and jobs[1].options.retries == 1
    assert jobs[5].options.shell is True
    assert jobs[5].occurrence == 1 and jobs[3].occurrence == 0      # same command twice
    # only the status token changes
    assert jobs[1].with_status("open") == '"echo ""a,b"" c",open,gpus=2;retries=1\n'
    assert jobs[5].with_status("completed") == "cmd, completed ,shell=1\n"


def test_format_job_line_round_trips():
    for cmd in ['echo "a,b" c', "plain cmd", '"quoted" start', "a,b,c"]:
        ln = jobsfile.parse_line(jobsfile.format_job_line(cmd, "open", "gpus=1") + "\n", 1)
        assert (ln.command, ln.status, ln.options.gpus) == (cmd, "open", 1)


def test_options_parse_and_reject():
    o = jobsfile.parse_options("gpus=4; timeout=2h ;no_output_timeout=90s;retries=3;backoff=1m;"
                               "shell=yes;partition=gpu;sbatch=--qos=high --mem=8G")
    assert (o.gpus, o.timeout, o.no_output_timeout, o.retries, o.backoff, o.shell) == \
        (4, 7200.0, 90.0, 3, 60.0, True)
    assert o.partition == "gpu" and o.sbatch == "--qos=high --mem=8G"
    assert jobsfile.parse_options("").gpus == "all"
    assert jobsfile.parse_options("timeout=1:30:00").timeout == 5400
    for bad in ("gpus=two", "colour=red", "retries", "timeout=soon", "gpus=1;gpus=2", "shell=maybe"):
        with pytest.raises(ValueError):
            jobsfile.parse_options(bad)
    with pytest.raises(QueueError, match=r"J.csv:2: unknown status 'done'"):
        jobsfile.parse_text("# ok\ncmd,done,\n", "J.csv")


@pytest.mark.parametrize("text,needle", [
    ("# header\ntrue,open,gpus=lots\n", "Jobs.csv:2: bad option field 'gpus=lots'"),
    ("true,open,\ntrue,finished,\n", "Jobs.csv:2: unknown status 'finished'"),
    ("just a command\n", "Jobs.csv:1: expected '<command>,<status>,[options]'"),
    ("echo 'unclosed,open,\n", "Jobs.csv:1: cannot split the command"),
])
def test_user_mistakes_give_short_message_and_exit_2(tmp_path, text, needle):
    jobs = write_jobs(tmp_path, text)
    before = jobs.read_bytes()
    r = run_queue(tmp_path, jobs, "--gpus", "none")
    assert r.returncode == 2
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert jobs.read_bytes() == before                 # nothing ran, nothing written


def test_missing_jobs_file(tmp_path):
    r = run_queue(tmp_path, tmp_path / "nope.csv")
    assert r.returncode == 2
    assert "nope.csv does not exist" in r.stderr and "Traceback" not in r.stderr
    r = run_queue(tmp_path, tmp_path / "nope.csv", "status")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_quoted_command_with_commas_and_quotes_runs_verbatim(tmp_path):
    (tmp_path / "args.py").write_text(
        "import json, sys\nopen('args.json', 'w').write(json.dumps(sys.argv[1:]))\n")
    jobs = write_jobs(tmp_path, '"python args.py ""a,b"" \'c d\' e,f",open,gpus=0\n')
    r = run_queue(tmp_path, jobs, "--gpus", "none")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((tmp_path / "args.json").read_text()) == ["a,b", "c d", "e,f"]
    assert jobs.read_text() == '"python args.py ""a,b"" \'c d\' e,f",completed,gpus=0\n'


def test_no_shell_by_default_and_shell_opt_in(tmp_path):
    jobs = write_jobs(tmp_path, "echo hi > plain.txt,open,\necho hi > shell.txt,open,shell=1\n")
    r = run_queue(tmp_path, jobs, "--gpus", "none")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (tmp_path / "plain.txt").exists()        # '>' was an argument to echo
    assert (tmp_path / "shell.txt").read_text() == "hi\n"
    logs = latest(tmp_path, jobs)
    plain_log = open(logs[("echo hi > plain.txt", 0)]["log"]).read()
    assert plain_log == "hi > plain.txt\n"
    assert "[L1] hi > plain.txt" in r.stdout             # echoed with a job prefix


def test_failed_vs_completed_exit_codes(tmp_path):
    (tmp_path / "exit.py").write_text("import sys\nprint('bye')\nsys.exit(int(sys.argv[1]))\n")
    jobs = write_jobs(tmp_path, "python exit.py 0,open,\npython exit.py 3,open,\n"
                                "no-such-program-xyz,open,\n")
    r = run_queue(tmp_path, jobs, "--gpus", "none")
    assert r.returncode == 1                             # some job failed
    assert statuses(jobs) == ["completed", "failed", "failed"]
    lt = latest(tmp_path, jobs)
    assert lt[("python exit.py 0", 0)]["exit_code"] == 0
    assert lt[("python exit.py 3", 0)]["exit_code"] == 3
    assert lt[("no-such-program-xyz", 0)]["exit_code"] == 127
    assert open(lt[("python exit.py 3", 0)]["log"]).read() == "bye\n"
    st = run_queue(tmp_path, jobs, "status")
    assert st.returncode == 0
    rows = st.stdout.splitlines()
    assert rows[0].split()[:6] == ["line", "status", "tries", "duration", "where", "exit"]
    assert rows[1].split()[1] == "completed" and rows[2].split()[1] == "failed"
    assert rows[2].split()[5] == "3" and lt[("python exit.py 3", 0)]["log"] in rows[2]
    assert "1 completed, 2 failed" in rows[-1]


def test_dry_run_changes_nothing(tmp_path):
    text = "true,open,gpus=2\ntrue,open,gpus=1\ntrue,open,gpus=2\ntrue,completed,\n"
    jobs = write_jobs(tmp_path, text)
    r = run_queue(tmp_path, jobs, "--gpus", "3", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert jobs.read_text() == text
    assert "wave 0: L1 on GPUs 0,1" in r.stdout
    assert "wave 0: L2 on GPUs 2" in r.stdout
    assert "wave 1: L3 on GPUs 0,1" in r.stdout
    assert "skip L4 (completed)" in r.stdout
    assert not (tmp_path / "logs").exists()
