"""`pipeline run verify` (moving here from pipeline.verify)."""
from pipeline.verify import add_arguments, main  # noqa: F401
