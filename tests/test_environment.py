"""Each start of a run records what its numbers depend on besides the config: thread counts, CPU, kernel
variant, library versions (environment.jsonl)."""
from __future__ import annotations

import json

import torch

from utility.training.environment import ENV_FILE, record_environment


def test_each_start_appends_threads_cpu_and_versions(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        record_environment(tmp_path, torch.device("cpu"), "fresh")
        torch.set_num_threads(2)
        record_environment(tmp_path, torch.device("cpu"), "resume")
    finally:
        torch.set_num_threads(before)
    rows = [json.loads(line) for line in (tmp_path / ENV_FILE).read_text().splitlines()]
    assert [(r["start"], r["torch_threads"]) for r in rows] == [("fresh", 1), ("resume", 2)]
    first = rows[0]
    assert first["env"]["OMP_NUM_THREADS"] == "3"
    assert first["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert torch.__version__.startswith(first["versions"]["torch"])
    assert first["cpu"] and first["device"] == "cpu" and "python" in first["versions"]
