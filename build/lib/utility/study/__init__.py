"""Studies: one YAML from a research question to its answer (plan -> queue -> results -> statistics -> report)."""
