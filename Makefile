# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python

.PHONY: venv demo demo-queue demo-finetune demo-seg study-e2 test test-fast bench gpu-check gpu-check-smoke

# the pinned requirements, then this checkout as the package `utility` (editable) with the console scripts
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(VPY) -m pip install -q --no-deps -e .
	touch $@

venv: $(VENV)/.installed

# Numbers depend on the thread count (docs/reproducibility.md): the demos, studies and benchmarks fix it,
# so that the same command gives the same numbers on every machine with this many cores or more.
THREADS ?= 2
demo demo-queue demo-finetune demo-seg study-e2 bench: export OMP_NUM_THREADS = $(THREADS)
demo demo-queue demo-finetune demo-seg study-e2 bench: export MKL_NUM_THREADS = $(THREADS)

# The main job as a study (config/studies/demo_digits.yaml): SimCLR-pretrain once on the demo digits,
# linear-evaluate the SimCLR and a random encoder on 10 % of the labels with 3 seeds each, print the
# summary (mean ± 95 % CI, paired t-test) and where report.html is. Running it again reuses what is done.
demo: venv
	$(VPY) datasets/prepare_demo.py
	$(VPY) pkgs/Study/study.py -c config/studies/demo_digits.yaml

# The predecessor's data-size question (E2) on the demo digits: Scratch vs SimCLR at 10 % and 100 %
# of the labels, 3 seeds, linear evaluation (about 15 min on 2 CPU cores).
study-e2: venv
	$(VPY) datasets/prepare_demo.py
	$(VPY) pkgs/Study/study.py -c config/studies/e2_digits.yaml

# The single-run queue demo (config/demo/Jobs.demo.csv): pretrain, two linear evaluations, side by side.
demo-queue: venv
	$(VPY) datasets/prepare_demo.py
	mkdir -p logs_and_checkpoints/demo
	cp config/demo/Jobs.demo.csv logs_and_checkpoints/demo/Jobs.csv
	$(VPY) QueueManager.py --jobs logs_and_checkpoints/demo/Jobs.csv --workdir .
	$(VPY) pkgs/FTE/summarize_runs.py logs_and_checkpoints/finetuning/demo/linear_eval_pretrained logs_and_checkpoints/finetuning/demo/linear_eval_scratch

# Just finetuning: a ResNet-18 from scratch on the demo digits (about 2 min on 2 CPU cores; test accuracy ~0.98).
demo-finetune: venv
	$(VPY) datasets/prepare_demo.py
	$(VPY) pkgs/FTE/finetune.py -c pkgs/FTE/config/demo_digits.yaml

# Segmentation: a ResNet-18 U-Net from scratch on synthetic phantoms (foreground Dice in test.log).
demo-seg: venv
	$(VPY) datasets/prepare_demo_seg.py
	$(VPY) pkgs/FTE/finetune.py -c pkgs/FTE/config/demo_seg.yaml

# the whole suite (what CI runs), in TEST_WORKERS processes (pytest-xdist; a test module stays on one worker,
# so its module-scoped fixtures run once); one torch thread per worker, since the workers already fill the
# cores (tests that need a thread count set it themselves). test-fast: the unit tier only (in-process).
TEST_WORKERS ?= 2
test: venv
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(VPY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope tests

test-fast: venv
	$(VPY) -m pytest -q -m unit tests

bench: venv
	$(VPY) benchmarks/bench_engine_step.py
	$(VPY) benchmarks/bench_simclr_step.py
	$(VPY) benchmarks/bench_data_loading.py
	$(VPY) benchmarks/bench_augment.py
	$(VPY) benchmarks/bench_queue.py
	$(VPY) benchmarks/bench_study.py
	$(VPY) benchmarks/bench_queue_stress.py
	$(VPY) benchmarks/bench_scale.py

# Every CUDA path once on this machine's GPUs (docs/gpu.md): PASS/FAIL lines, gpu_acceptance.json and .md,
# throughput rows for docs/gpu.md. At most ~8 min on one GPU; generated data, no downloads.
gpu-check: venv
	$(VPY) benchmarks/gpu_acceptance.py --out logs_and_checkpoints/gpu_acceptance

# The same script's CPU smoke mode (CI runs it in tests/test_gpu_acceptance.py): CUDA checks SKIPPED.
gpu-check-smoke: venv
	$(VPY) benchmarks/gpu_acceptance.py --device cpu --tiny --out logs_and_checkpoints/gpu_acceptance_cpu
