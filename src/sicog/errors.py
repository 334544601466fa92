"""The error a user can fix: bad input, a bad config, a missing file. The CLI prints it as one line and
exits with status 2; every other exception is a bug and keeps its traceback."""


class UserError(ValueError):
    """A problem in what the user gave us, said in one line that names the fix."""
