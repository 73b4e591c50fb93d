"""`pipeline run detect` (moving here from detect.commands)."""
from detect.commands import add_arguments, main  # noqa: F401
