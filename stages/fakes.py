"""`pipeline run fakes` (moving here from detect.fakes)."""
from detect.fakes import add_arguments, main  # noqa: F401
