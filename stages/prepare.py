"""`pipeline run prepare` (moving here from pipeline.prepare)."""
from pipeline.prepare import add_arguments, main  # noqa: F401
