"""The job queue behind QueueManager.py (standard library only; see docs/QUEUE.md).

Modules: jobsfile (Jobs.csv format, parsing, locking), parsecache (re-reads that keep each
line's identity), safewrite (status writes that keep what other programs write meanwhile),
writes (the loop's pending status changes), state (per-job JSON-lines records), gpus (GPU
detection), scheduler (which job starts where), base (the Backend protocol the loop asks,
shared helpers), local_backend (processes, logs), slurm_backend + slurm_script (sbatch/squeue/
scancel, the batch script that checkpoints and requeues at the time limit), cli.

The loop (runner) is composed of objects: book (the jobs this queue owns, messages, records,
status changes), deps (id=/after=), recovery ('running' lines nobody runs), watchdogs
(timeouts).
"""
