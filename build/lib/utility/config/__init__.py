"""Configs: YAML + CLI loading, the run schemas, task specs."""
