"""Run pipelines: finetuning and pretraining, built on one run session."""
