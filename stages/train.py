"""`pipeline run train` (moving here from fomm.train)."""
from fomm.train import add_arguments, main  # noqa: F401
