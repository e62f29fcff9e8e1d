"""What a run's numbers depend on besides its config and seed: thread counts, the CPU and the kernel variant
PyTorch picked for it, GPUs, library versions. Each start of a run appends one JSON line to
``environment.jsonl`` in its directory (a resume adds a line), so two runs that differ can be compared.

On CPU, the same config, seed, thread count and kernel variant give bit-identical numbers; another thread
count alone changes float sums in the last bits, and over a training run those differences grow
(docs/reproducibility.md).
"""
from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

ENV_FILE = "environment.jsonl"
LIBRARIES = ("torch", "torchvision", "numpy", "timm", "kornia", "albumentations", "segmentation_models_pytorch",
             "scikit-learn", "pydantic", "Pillow")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ATEN_CPU_CAPABILITY", "CUBLAS_WORKSPACE_CONFIG")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def describe(device: torch.device) -> dict[str, Any]:
    """The facts of this process that change results, as plain JSON values."""
    info: dict[str, Any] = {
        "time": datetime.now().isoformat(timespec="seconds"),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "platform": platform.platform(),
        "env": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "device": str(device),
        "versions": versions(),
        "argv": sys.argv,
    }
    if device.type == "cuda" and torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def record_environment(run_dir: Path, device: torch.device, state: str) -> None:
    """Append this start's environment (``state``: fresh or resume) to the run's environment.jsonl."""
    with (run_dir / ENV_FILE).open("a") as fh:
        fh.write(json.dumps({"start": state, **describe(device)}) + "\n")
