"""The one error type a user can cause. The CLI prints it as a single line, never a traceback."""


class LineupError(Exception):
    """Bad input a user can fix: the message names the file/field and what to do."""
