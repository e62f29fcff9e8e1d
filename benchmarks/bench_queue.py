"""Queue speed: GPU packing makespan and dispatch latency, through the real QueueManager.py.

    python benchmarks/bench_queue.py [--jobs 8] [--sleep 1] [--chain 10]

Prints `name: ours X, baseline Y, ratio R` lines:
* makespan_8x1gpu_on_8gpus: wall time of the queue running 8 one-GPU `sleep 1` jobs on 8
  simulated GPUs (--gpus 8), baseline: the same queue running one such job (target ratio <= 1.2;
  the predecessor ran them one after another, with 30 s sleeps in between).
* dispatch_new_job_s: a job appended to a waiting queue (--watch) with a free GPU -> its process
  starts; baseline: subprocess.Popen of the same command from a bare Python loop.
* dispatch_handoff_s: one job ends -> the next one (file order, same GPU) starts, median over a
  chain of jobs; baseline: the same chain run back to back by a bare subprocess loop.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QM = os.path.join(REPO, "QueueManager.py")
STAMP = "date +%s.%N"          # prints the time its process started running


def queue_cmd(d: str, *extra: str) -> list:
    return [sys.executable, QM, "--jobs", os.path.join(d, "Jobs.csv"),
            "--log-dir", os.path.join(d, "logs"), "--quiet", *extra]


def makespan(n: int, secs: float) -> float:
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "Jobs.csv"), "w") as f:
            f.write("# benchmark\n" + f"sleep {secs},open,gpus=1\n" * n)
        t0 = time.perf_counter()
        subprocess.run(queue_cmd(d, "--gpus", "8"), check=True, stdout=subprocess.DEVNULL)
        dt = time.perf_counter() - t0
        with open(os.path.join(d, "Jobs.csv")) as f:
            assert f.read().count(",completed,") == n
        return dt


def log_stamps(d: str) -> list:
    logs = sorted(os.path.join(d, "logs", x) for x in os.listdir(os.path.join(d, "logs"))
                  if x.endswith(".log"))
    out = []
    for p in logs:
        with open(p) as f:
            out.append([float(x) for x in f.read().split()])
    return out


def new_job_latency(reps: int) -> float:
    vals = []
    with tempfile.TemporaryDirectory() as d:
        jobs = os.path.join(d, "Jobs.csv")
        with open(jobs, "w") as f:
            f.write("# benchmark\n")
        q = subprocess.Popen(queue_cmd(d, "--gpus", "1", "--watch"), stdout=subprocess.DEVNULL)
        try:
            time.sleep(1.0)                          # the queue is up and idle
            for i in range(reps):
                with open(jobs) as f:
                    text = f.read()
                tmp = jobs + ".new"
                with open(tmp, "w") as f:
                    f.write(text + f"{STAMP},open,gpus=1\n")
                t0 = time.time()
                os.replace(tmp, jobs)
                # wait for it to finish
                end = time.time() + 10
                while time.time() < end:
                    with open(jobs) as f:
                        if f.read().count(",completed,") == i + 1:
                            break
                    time.sleep(0.01)
                stamps = log_stamps(d)
                vals.append(max(s[0] for s in stamps) - t0)
                time.sleep(0.2)
        finally:
            q.terminate()
            q.wait(timeout=30)
    return statistics.median(vals)


def popen_latency(reps: int) -> float:
    vals = []
    for _ in range(reps):
        t0 = time.time()
        out = subprocess.run(STAMP.split(), capture_output=True, text=True).stdout
        vals.append(float(out) - t0)
    return statistics.median(vals)


CHAIN_JOB = f"sh -c '{STAMP}; sleep 0.1; {STAMP}'"


def handoff_latency(n: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "Jobs.csv"), "w") as f:
            f.write("# benchmark\n" + f"{CHAIN_JOB},open,gpus=1\n" * n)
        subprocess.run(queue_cmd(d, "--gpus", "1"), check=True, stdout=subprocess.DEVNULL)
        stamps = sorted(log_stamps(d))
    return statistics.median(b[0] - a[1] for a, b in zip(stamps, stamps[1:]))


def bare_handoff(n: int) -> float:
    stamps = []
    argv = ["sh", "-c", f"{STAMP}; sleep 0.1; {STAMP}"]
    for _ in range(n):
        out = subprocess.run(argv, capture_output=True, text=True).stdout
        stamps.append([float(x) for x in out.split()])
    return statistics.median(b[0] - a[1] for a, b in zip(stamps, stamps[1:]))


def line(name: str, ours: float, base: float) -> None:
    print(f"{name}: ours {ours:.4f}, baseline {base:.4f}, ratio {ours / base:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--sleep", type=float, default=1.0)
    ap.add_argument("--chain", type=int, default=10)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    if not shutil.which("date") or not shutil.which("sleep"):
        sys.exit("needs the date and sleep programs")
    one = makespan(1, a.sleep)
    many = makespan(a.jobs, a.sleep)
    line(f"makespan_{a.jobs}x1gpu_on_8gpus_s", many, one)
    line("dispatch_new_job_s", new_job_latency(a.reps), popen_latency(a.reps))
    line("dispatch_handoff_s", handoff_latency(a.chain), bare_handoff(a.chain))


if __name__ == "__main__":
    main()
