"""Self-supervised pretraining by method name: ``python pkgs/SSL/pretrain.py -c cfg.yaml [--key value ...]``.

``method: simclr | barlow_twins | byol | vicreg | mocov2`` (default simclr) with ``method_settings``;
the rest of the config is pkgs/SimCLR/main.py's (utility/config/schemas.py, SimCLRConfig)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utility.entry import run_entry  # noqa: E402
from utility.runs.pretrain import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_entry(lambda argv: main(argv, "pkgs/SSL/pretrain.py")))
