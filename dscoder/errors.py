"""The one exception type for user mistakes: the CLI prints it as a single line and exits 2."""


class UserError(Exception):
    """Bad input from the user (a missing file, a wrong value): shown without a traceback."""
