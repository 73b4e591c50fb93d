"""`pipeline run report` (moving here from metrics.report)."""
from metrics.report import add_arguments, main  # noqa: F401
