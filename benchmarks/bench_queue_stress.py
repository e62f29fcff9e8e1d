"""The queue under concurrent writers of Jobs.csv, through the real QueueManager.py.

    python benchmarks/bench_queue_stress.py [--seconds 60] [--appenders 8] [--keep DIR]

The queue (`--watch`, CPU-only short jobs, at most 4 at once) runs in a temporary directory
for about --seconds in two phases that do not overlap:

1. appenders: N processes append lines every few ms while jobs run: one shell loop
   (`echo ... >> Jobs.csv`), Python scripts that open the file for every line and two that
   keep one O_APPEND descriptor open. Every 40th line is a job (`echo <id> >> runs.txt`,
   every 5th of those a `python -c` job), the rest are comments.
2. editors: one process alternately saves the file the way an editor with a backup does
   (move it away, write it anew 2-8 ms later, sometimes adding jobs) and runs `sed -i` to
   reopen failed jobs (status words `failed` -> `open`). Some added jobs fail on their first
   run and succeed on the second, so the sed edits have something to do.

Every job appends its id to runs.txt on each run. At the end the benchmark waits for all
jobs to finish, stops the queue with SIGTERM and prints

    lines appended: N     lines written by the appenders and the editor
    lines lost: N         of those, missing from the final file (must be 0)
    jobs run twice: N     jobs that ran more often than they should (must be 0; jobs reopened
                          by sed after failing should run twice and are not counted)
    queue exits: N        times the queue process ended before it was stopped (must be 0)

followed by detail lines. The editor reads the moved-away file, so it never saves over a
change it has not seen; `sed -i` holds the queue's lock (flock .Jobs.csv.lock) as
docs/QUEUE.md recommends for scripts: a `sed -i` racing a queue write can overwrite it with
any tool, which is not what this measures. --unlocked-sed runs it without the lock.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QM = os.path.join(REPO, "QueueManager.py")

from utility.queue import jobsfile

PY_APPENDER = r'''
import os, sys, time
tag, period, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3]
held = open('Jobs.csv', 'a') if mode == 'held' else None
out = open(tag + '.written', 'w')
Q = chr(34)                       # the CSV quote around a command with commas
n = 0
while not os.path.exists('stop.appenders'):
    n += 1
    if n % 200 == 0:
        code = "open('runs.txt', 'a').write('" + tag + "-" + str(n) + "\\n')"
        line = Q + 'python -c ' + Q + Q + code + Q + Q + Q + ',open,gpus=0\n'
    elif n % 40 == 0:
        line = f'echo {tag}-{n} >> runs.txt,open,gpus=0;shell=1\n'
    else:
        line = f'# {tag} note {n}\n'
    if held is None:
        with open('Jobs.csv', 'a') as f:
            f.write(line)
    else:
        held.write(line)
        held.flush()
    out.write(line)
    time.sleep(period)
out.close()
if held is not None:
    held.close()
'''

SH_APPENDER = r"""
n=0
while [ ! -e stop.appenders ]; do
  n=$((n+1))
  if [ $((n % 40)) -eq 0 ]; then l="echo sh-$n >> runs.txt,open,gpus=0;shell=1"; else l="# sh note $n"; fi
  echo "$l" >> Jobs.csv
  echo "$l" >> sh.written
  sleep 0.004
done
"""

EDITOR = r"""
import os, random, subprocess, sys, time
secs, locked_sed = float(sys.argv[1]), sys.argv[2] == '1'
rng = random.Random(1)
end = time.time() + secs
added = open('editor.written', 'w')
n = saves = seds = 0
while time.time() < end:
    n += 1
    if n % 2:
        os.rename('Jobs.csv', 'Jobs.csv~')             # the editor's backup
        time.sleep(rng.uniform(0.002, 0.008))
        with open('Jobs.csv~') as f:                    # what it saves: the current text
            text = f.read()
        new = ''
        if n % 3 == 1:
            new += f'echo e-{n} >> runs.txt,open,gpus=0;shell=1\n'
        if n % 9 == 1:                                  # fails once, reopened by sed
            new += (f'echo f-{n} >> runs.txt; test -e ok.f-{n} || {{ touch ok.f-{n}; exit 1; }}'
                    f',open,gpus=0;shell=1\n')
        new += f'# editor save {n}\n'
        with open('Jobs.csv', 'w') as f:
            f.write(text + new)
        os.unlink('Jobs.csv~')
        added.write(new)
        added.flush()
        saves += 1
    else:
        cmd = ['sed', '-i', 's/,failed,/,open,/', 'Jobs.csv']
        if locked_sed:
            cmd = ['flock', '.Jobs.csv.lock'] + cmd
        subprocess.run(cmd, check=True)
        seds += 1
    time.sleep(rng.uniform(0.01, 0.03))
print(saves, seds)
"""


class Queue:
    """The queue process; restarted (and counted) if it ends before stop()."""

    def __init__(self, d: str):
        self.d = d
        self.exits = []
        self.stopping = False
        self.out = open(os.path.join(d, "queue_stdout.txt"), "ab")
        self.proc = self._start()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _start(self):
        return subprocess.Popen(
            [sys.executable, QM, "--jobs", os.path.join(self.d, "Jobs.csv"), "--workdir", self.d,
             "--log-dir", os.path.join(self.d, "logs"), "--gpus", "none", "--watch", "--quiet",
             "--max-parallel", "4"], stdout=self.out, stderr=subprocess.STDOUT, cwd=self.d)

    def _watch(self):
        while True:
            rc = self.proc.wait()
            with self.lock:
                if self.stopping:
                    return
                self.exits.append(rc)
                time.sleep(0.2)
                self.proc = self._start()

    def stop(self) -> int:
        with self.lock:
            self.stopping = True
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


def norm(raw: str):
    """A line as written, independent of the status the queue gave it since."""
    try:
        ln = jobsfile.parse_line(raw, 0)
    except Exception:
        return ("raw", raw.rstrip("\r\n"))
    if ln.kind == "job":
        return ("job", ln.command, ln.options_text)
    return ("raw", raw.rstrip("\r\n"))


def job_id(command: str) -> str:
    if command.startswith("echo "):
        return command.split()[1]
    return command.split("write(")[1].split("\\n")[0].strip("'")      # the python -c jobs


def wait_done(d: str, timeout: float) -> bool:
    jobs = os.path.join(d, "Jobs.csv")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(jobs) as f:
                text = f.read()
        except FileNotFoundError:
            text = ",open,"
        if ",failed," in text:                 # a late fail-once job: reopen it like phase 2
            subprocess.run(["flock", ".Jobs.csv.lock", "sed", "-i", "s/,failed,/,open,/",
                            "Jobs.csv"], cwd=d)
        elif ",open," not in text and ",running," not in text:
            return True
        time.sleep(0.5)
    return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="total time, about")
    ap.add_argument("--appenders", type=int, default=8)
    ap.add_argument("--unlocked-sed", action="store_true",
                    help="run sed -i without the queue's lock (races the queue's writes)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    a = ap.parse_args()
    for tool in ("sed", "flock", "sh"):
        if not shutil.which(tool):
            sys.exit(f"needs {tool}")
    d = os.path.abspath(a.keep) if a.keep else tempfile.mkdtemp(prefix="bench_queue_stress_")
    os.makedirs(d, exist_ok=True)
    phase = a.seconds * 0.4
    with open(os.path.join(d, "Jobs.csv"), "w") as f:
        f.write("# stress benchmark\necho start >> runs.txt,open,gpus=0;shell=1\n")
    with open(os.path.join(d, "appender.py"), "w") as f:
        f.write(PY_APPENDER)
    with open(os.path.join(d, "editor.py"), "w") as f:
        f.write(EDITOR)
    t0 = time.monotonic()
    q = Queue(d)
    time.sleep(1.0)

    # phase 1: appenders
    procs = [subprocess.Popen(["sh", "-c", SH_APPENDER], cwd=d)]
    for i in range(1, a.appenders):
        mode = "held" if i in (1, 2) else "reopen"
        procs.append(subprocess.Popen([sys.executable, "appender.py", f"p{i}", "0.004", mode],
                                      cwd=d))
    time.sleep(phase)
    open(os.path.join(d, "stop.appenders"), "w").close()
    for p in procs:
        p.wait(timeout=30)
    t1 = time.monotonic()

    # phase 2: editor saves and sed -i (the appenders have stopped)
    ed = subprocess.run([sys.executable, "editor.py", str(phase),
                         "0" if a.unlocked_sed else "1"], cwd=d, capture_output=True, text=True)
    saves, seds = (int(x) for x in ed.stdout.split()) if ed.returncode == 0 else (0, 0)
    t2 = time.monotonic()
    done = wait_done(d, timeout=max(30.0, a.seconds))
    rc = q.stop()
    t3 = time.monotonic()

    # what was written, what is there, what ran
    written = []
    for name in sorted(os.listdir(d)):
        if name.endswith(".written"):
            with open(os.path.join(d, name)) as f:
                written += f.read().splitlines(keepends=True)
    with open(os.path.join(d, "Jobs.csv")) as f:
        final_lines = f.read().splitlines(keepends=True)
    final = Counter(norm(x) for x in final_lines)
    want = Counter(norm(x) for x in written)
    lost = sum(max(0, n - final[k]) for k, n in want.items())
    duplicated = sum(max(0, final[k] - n) for k, n in want.items())
    with open(os.path.join(d, "runs.txt")) as f:
        runs = Counter(f.read().split())
    expected = {}
    for k in want:
        if k[0] == "job":
            i = job_id(k[1])
            expected[i] = 2 if i.startswith("f-") else 1
    expected["start"] = 1                      # the job the file starts with
    twice = sum(1 for i, n in expected.items() if runs[i] > n)
    never = sum(1 for i, n in expected.items() if runs[i] < n)
    statuses = Counter(ln.status for ln in jobsfile.parse_text("".join(final_lines), strict=False)
                       if ln.kind == "job")
    exits = len(q.exits) + (0 if rc == 128 + signal.SIGTERM else 1)
    with open(os.path.join(d, "queue_stdout.txt"), errors="replace") as f:
        qout = f.read()

    print(f"lines appended: {len(written)}")
    print(f"lines lost: {lost}")
    print(f"jobs run twice: {twice}")
    print(f"queue exits: {exits}")
    print(f"details: {sum(expected.values())} runs expected for {len(expected)} jobs, "
          f"{sum(runs.values())} runs seen, jobs short of runs: {never}, "
          f"lines duplicated: {duplicated}, final statuses: {dict(statuses)}, "
          f"all done: {done}")
    print(f"details: phase 1 (appenders, {a.appenders} processes) {t1 - t0:.1f} s, "
          f"phase 2 ({saves} editor saves, {seds} sed -i"
          f"{' without lock' if a.unlocked_sed else ' under flock'}) {t2 - t1:.1f} s, "
          f"finishing {t3 - t2:.1f} s; queue stopped with exit {rc} (expected "
          f"{128 + signal.SIGTERM}); early exits: {q.exits}; conflict files: "
          f"{sum(1 for x in os.listdir(d) if '.conflict-' in x)}; "
          f"'changed meanwhile' notes: {qout.count('meanwhile')}")
    if a.keep:
        print(f"kept: {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
