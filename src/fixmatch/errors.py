"""The one exception type for user mistakes, reported as a single line without a traceback."""


class UserError(Exception):
    """Bad input the user can fix: a missing folder, an impossible label count, a bad value.

    The message says what is wrong, where, and how to fix it; `run.py` prints it as one
    line and exits with status 2.
    """
