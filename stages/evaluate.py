"""`pipeline run evaluate` (moving here from metrics.evaluate_stage)."""
from metrics.evaluate_stage import add_arguments, main  # noqa: F401
