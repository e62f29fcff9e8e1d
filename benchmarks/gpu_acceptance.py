"""Every CUDA path of the tool run once, in one command (``make gpu-check``), on generated data.

    python benchmarks/gpu_acceptance.py                      # all visible GPUs, at most ~8 min
    python benchmarks/gpu_acceptance.py --device cpu --tiny  # the CI smoke mode (< 60 s, CUDA checks SKIPPED)
    python benchmarks/gpu_acceptance.py --only amp_,ddp      # checks whose name starts with these

Each check prints one line: PASS / FAIL / SKIPPED, its name and its figures. A failing check does not
stop the others; a global time budget (``--budget``) skips what no longer fits. The results go to
``<out>/gpu_acceptance.json`` and ``<out>/gpu_acceptance.md`` (GPU name, driver, CUDA, torch, every
figure), and the throughput rows for docs/gpu.md are printed ready to paste. Exit code 1 if any FAIL.
"""
import sys

from gpu_checks.runner import main  # benchmarks/ is this script's folder, so gpu_checks is importable

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
