"""The one exception type for user mistakes: printed as a short message, no traceback."""


class QueueError(Exception):
    """A mistake in the user's input (jobs file, options, command line)."""
