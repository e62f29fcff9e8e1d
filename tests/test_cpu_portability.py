"""Tests must not pass only on the CPU they were written on.

float32 results of vectorised kernels (sigmoid, softmax, convolutions, resampling) can differ in the
last bit with the SIMD width and the thread count, so a test that compares computed floats exactly
passes on one machine and fails on another. Tests compare computed floats with tolerances unless
bit-exactness is the point, and then compute both sides in a way that is bit-exact by construction.

This file runs the tests that compare computed floats exactly (audited: see the comments at each)
under the CPU kernel variants PyTorch can be forced to (``ATEN_CPU_CAPABILITY``: default = scalar,
avx2, avx512) and several thread counts. Only the variants this CPU can run: forcing one it lacks kills
the child with SIGILL, so those are skipped, each named in its skip reason (``pytest -rs``).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import HANG_GUARD_S, REPO

ORDER = ("default", "avx2", "avx512")  # each needs the instructions of the ones before it


def cpu_capability() -> str:
    """The best kernel variant PyTorch found this CPU able to run ('default', 'avx2' or 'avx512')."""
    found = torch.backends.cpu.get_cpu_capability().lower()
    return found if found in ORDER else "default"

EXACT_COMPARISONS = [
    "tests/test_metrics.py::test_multiclass_load_states_equals_single_accumulation",
    "tests/test_metrics.py::test_multilabel_load_states_equals_single_accumulation",
    "tests/test_segmentation_metrics.py::test_method_evaluation_independent_of_batch_size",
    "tests/test_data_io.py::test_preprocess_pipeline_on_file",
]


@pytest.mark.parametrize("capability, threads", [("default", 1), ("avx2", 1), ("avx512", 3)])
def test_exact_float_comparisons_hold_on_other_cpu_kernels(capability, threads):
    best = cpu_capability()
    if ORDER.index(capability) > ORDER.index(best):
        pytest.skip(f"ATEN_CPU_CAPABILITY={capability} skipped: this CPU runs at most {best}")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability, OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *EXACT_COMPARISONS],
                          cwd=str(REPO), env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert f"{len(EXACT_COMPARISONS)} passed" in proc.stdout


def test_a_capability_the_cpu_lacks_is_skipped_and_named(monkeypatch):
    """On a CPU without AVX-512 (an AMD EPYC, say) the avx512 variant is skipped, not run into SIGILL."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    with pytest.raises(pytest.skip.Exception, match="ATEN_CPU_CAPABILITY=avx512 skipped: this CPU runs at most avx2"):
        test_exact_float_comparisons_hold_on_other_cpu_kernels("avx512", 3)
