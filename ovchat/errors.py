"""The one exception type users see: a message that names the problem and what to do."""


class OvchatError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits non-zero."""
