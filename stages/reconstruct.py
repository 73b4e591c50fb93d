"""`pipeline run reconstruct` (moving here from fomm.reconstruct)."""
from fomm.reconstruct import add_arguments, main  # noqa: F401
