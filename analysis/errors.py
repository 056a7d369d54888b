"""Error types shared by every trialfed package."""


class UserError(Exception):
    """A problem with the user's input (data, plan, command line), not a bug.

    The CLI prints the message without a traceback and exits with status 2.
    """

    exit_code = 2
