"""The shared training loop and what it needs: optimisers, schedules, checkpoints, processes, run logs."""
