"""The one exception type users see: its message names what is wrong and how to fix it."""


class FewsightError(Exception):
    """A problem with the user's input or environment, reported as one line (never a traceback)."""
