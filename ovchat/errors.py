"""The one exception type users see: a message that names the problem and what to do."""


class OvchatError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits non-zero."""


def print_nothing(_: str) -> None:
    """The default progress logger of library calls: silent (the CLI passes one that prints)."""


def describe(exc: BaseException) -> str:
    """One line for a foreign exception: its OS reason, else its last non-empty line, else its type."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
