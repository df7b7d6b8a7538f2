"""User-facing errors: bad input that a CLI reports as one line, without a traceback."""


class UserError(Exception):
    """Bad input (missing path, malformed file, wrong checkpoint, conflicting flags). The message is one actionable
    sentence: what was wrong, where, and what to do."""
