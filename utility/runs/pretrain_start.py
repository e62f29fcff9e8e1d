"""How a pretraining run starts: from an existing encoder (``init_encoder``, the predecessor's
IxR -> IxR_2 continuation on new data) and on which parallel mode the predecessor's ``dataparallel``
flag lands under torchrun."""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from utility.errors import UserError
from utility.models.weights import load_encoder_weights, read_state_dict, split_state_dict
from utility.paths import resolve_user_path
from utility.distributed import is_main, launched_by_torchrun


def predecessor_parallel(cfg: Any) -> str:
    """``parallel`` to request. The predecessor's ``dataparallel: true`` meant "use the GPUs": DataParallel
    in one process, but DDP when torchrun started several processes (said once, the file stays as it is)."""
    if not (cfg.dataparallel and cfg.parallel == "auto"):
        return cfg.parallel
    if launched_by_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if os.environ.get("RANK", "0") == "0":
            print("dataparallel: true under torchrun with several processes: running DDP "
                  "(one process per GPU) instead of DataParallel", file=sys.stderr)
        return "ddp"
    return "dp"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def start_from_encoder(encoder: nn.Module, given: str, run_dir: Path) -> None:
    """Load the encoder weights of ``given`` (an encoder file, a finetuned model or a SimCLR checkpoint;
    every encoder key must fit) into ``encoder``; heads and optimizer start fresh. The file and its
    SHA-256 go to ``<run_dir>/provenance.yaml``. A resumed run loads its checkpoint over this."""
    path = resolve_user_path(given)
    if not path.is_file():
        raise UserError(f"config key 'init_encoder': encoder file not found: {path}")
    enc_sd, _ = split_state_dict(read_state_dict(path))
    load_encoder_weights(encoder, enc_sd, path, allow_partial=False)
    if is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        record = {"init_encoder": str(path.resolve()), "init_encoder_sha256": file_sha256(path),
                  "optimizer": "fresh (init_encoder loads encoder weights only)"}
        (run_dir / "provenance.yaml").write_text(yaml.safe_dump(record, sort_keys=False))
        print(f"encoder initialised from {path} (optimizer fresh)")
