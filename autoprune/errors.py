"""The one exception type for mistakes a user can make.

A `UserError` is a bad path, a bad YAML, an impossible budget, an unknown trial: something the person running
autoprune can fix. The command line turns it into one line on stderr (`error: ...`) and exit code 2. Anything
else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """A mistake in the user's input, reported as one line without a traceback.

    Example:
        >>> raise UserError("keep ratio must lie in (0, 1], got 1.5")
        Traceback (most recent call last):
        autoprune.errors.UserError: keep ratio must lie in (0, 1], got 1.5
    """
