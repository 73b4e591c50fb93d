"""`pipeline run animate` (moving here from fomm.animate)."""
from fomm.animate import add_arguments, main  # noqa: F401
