"""The job queue behind QueueManager.py (standard library only; see docs/QUEUE.md).

Modules: jobsfile (Jobs.csv format, parsing, locking), safewrite (status writes that keep
what other programs write meanwhile), writes (the loop's pending status changes), state
(per-job JSON-lines records), gpus (GPU detection), scheduler (which job starts where), base
(the Backend protocol the loop asks, shared helpers), local_backend (processes, logs),
slurm_backend (sbatch/squeue/scancel), recovery ('running' lines nobody runs), runner (the
queue loop), cli.
"""
