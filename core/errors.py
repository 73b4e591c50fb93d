"""Errors that mean "the input is wrong", as opposed to bugs.

The `pipeline` command prints a `UserError` as one line naming the bad value and
what was expected, and exits with status 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input (a path, a value, a file's content): say which and what was expected."""
