"""`pipeline run export` (moving here from fomm.export)."""
from fomm.export import add_arguments, main  # noqa: F401
