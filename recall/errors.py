"""One exception type for every user-facing problem: the CLI prints it without a traceback."""


class RecallError(Exception):
    """A problem with the user's input: the message names what is wrong and how to fix it."""
