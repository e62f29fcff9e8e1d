# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python

.PHONY: venv demo test bench clean-demo

$(VENV)/.installed: requirements.txt
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VPY) datasets/prepare_demo.py
	$(VPY) pkgs/FTE/finetune.py -c pkgs/FTE/config/demo_digits.yaml

test: venv
	$(VPY) -m pytest -q tests

bench: venv
	$(VPY) benchmarks/bench_engine_step.py
	$(VPY) benchmarks/bench_queue.py
