"""`pipeline run benchmark` (moving here from metrics.benchmark)."""
from metrics.benchmark import add_arguments, main  # noqa: F401
