"""The job queue behind QueueManager.py (standard library only; see docs/QUEUE.md).

Modules: jobsfile (Jobs.csv format, locking, atomic status updates), state (per-job JSON-lines
records), gpus (GPU detection), scheduler (which job starts where), local_backend (processes,
logs, watchdogs), slurm_backend (sbatch/squeue/scancel), runner (the queue loop), cli.
"""
