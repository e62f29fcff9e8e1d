"""Which GPUs the queue may hand out."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Optional

from utility.queue.errors import QueueError

_UUID = re.compile(r"^(GPU|MIG)-[0-9A-Za-z/:-]+$")    # as nvidia-smi -L prints them


def parse_gpus_arg(text: str) -> list[str]:
    """--gpus: '8' -> 8 GPUs 0..7; '0,1,5' -> those ids; '3,' -> just GPU 3;
    'none' / '0' -> no GPUs."""
    t = text.strip()
    if t.lower() in ("none", ""):
        return []
    if t.isdigit():
        return [str(i) for i in range(int(t))]
    ids = [p.strip() for p in t.split(",") if p.strip()]
    if not ids:
        raise QueueError(f"--gpus {text[:40]!r}: expected a count (8), a list of ids (0,1,2) or 'none'")
    for i in ids:
        if not (i.isdigit() or _UUID.match(i)):
            raise QueueError(f"--gpus {text[:40]!r}: {i[:40]!r} is not a GPU id (expected a count "
                             "such as 8, indices such as 0,1,2 or UUIDs GPU-.../MIG-..., or 'none')")
    if len(set(ids)) != len(ids):
        raise QueueError(f"--gpus {text[:40]!r}: a GPU is listed twice")
    return ids


def detect_gpus() -> tuple[list[str], str]:
    """(ids, where they came from).  An explicit CUDA_VISIBLE_DEVICES wins (the user
    restricted this shell to those devices), then `nvidia-smi -L`, else no GPUs."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        ids = [p.strip() for p in cvd.split(",") if p.strip()]
        # CUDA stops at the first invalid entry such as -1
        valid: list[str] = []
        for i in ids:
            if i.startswith("-"):
                break
            valid.append(i)
        return valid, "CUDA_VISIBLE_DEVICES"
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
            if out.returncode == 0:
                ids = [str(i) for i, ln in enumerate(out.stdout.splitlines())
                       if ln.strip().startswith("GPU ")]
                return ids, "nvidia-smi -L"
        except (OSError, subprocess.SubprocessError):
            pass
    return [], "none found"


def resolve(arg: Optional[str]) -> tuple[list[str], str]:
    if arg is not None:
        return parse_gpus_arg(arg), "--gpus"
    return detect_gpus()
