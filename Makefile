# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python

.PHONY: venv demo demo-finetune demo-seg test bench

$(VENV)/.installed: requirements.txt
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.installed

# The main job through the queue: SimCLR-pretrain on the demo digits, linear-evaluate the pretrained
# and a random encoder with few labels, print both side by side (~5-10 min on 2 CPU cores).
demo: venv
	$(VPY) datasets/prepare_demo.py
	mkdir -p logs_and_checkpoints/demo
	cp config/demo/Jobs.demo.csv logs_and_checkpoints/demo/Jobs.csv
	$(VPY) QueueManager.py --jobs logs_and_checkpoints/demo/Jobs.csv --workdir .
	$(VPY) pkgs/FTE/summarize_runs.py logs_and_checkpoints/finetuning/demo/linear_eval_pretrained logs_and_checkpoints/finetuning/demo/linear_eval_scratch

# Just finetuning: a ResNet-18 from scratch on the demo digits (~1 min).
demo-finetune: venv
	$(VPY) datasets/prepare_demo.py
	$(VPY) pkgs/FTE/finetune.py -c pkgs/FTE/config/demo_digits.yaml

# Segmentation: a ResNet-18 U-Net from scratch on synthetic phantoms (foreground Dice in test.log).
demo-seg: venv
	$(VPY) datasets/prepare_demo_seg.py
	$(VPY) pkgs/FTE/finetune.py -c pkgs/FTE/config/demo_seg.yaml

test: venv
	$(VPY) -m pytest -q tests

bench: venv
	$(VPY) benchmarks/bench_engine_step.py
	$(VPY) benchmarks/bench_simclr_step.py
	$(VPY) benchmarks/bench_data_loading.py
	$(VPY) benchmarks/bench_augment.py
	$(VPY) benchmarks/bench_queue.py
	$(VPY) benchmarks/bench_study.py
	$(VPY) benchmarks/bench_queue_stress.py
	$(VPY) benchmarks/bench_scale.py
