"""The one exception type for user mistakes, reported as a single line without a traceback,
and the command-line parser of the package's commands that raises it."""

import argparse


class UserError(Exception):
    """Bad input the user can fix: a missing folder, an impossible label count, a bad value.

    The message says what is wrong, where, and how to fix it; `run.py` prints it as one
    line and exits with status 2.
    """


class CommandLineParser(argparse.ArgumentParser):
    """An argparse parser whose mistakes (an unknown option, a bad choice) are a UserError,
    one `error: ...` line with the command's exit status 2, instead of the usage text."""

    def error(self, message: str):
        """Report a command-line mistake as a UserError instead of printing the usage text.

        Args:
            message: argparse's description of the mistake.

        Raises:
            UserError: always, with the message and a pointer to `--help`.
        """
        raise UserError(f"{message} (see {self.prog} --help)")
