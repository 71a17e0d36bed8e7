"""`ovchat chat`: an interactive, streaming, multi-turn chat in the terminal.

Answers go to stdout as they are generated; notices and stats go to stderr. When stdin is not a
terminal the whole input is one message and only the answer is printed, for scripts.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path

from .catalog import models_home
from .errors import OvchatError
from .session import ChatSession

HELP = """Commands:
  /help            this list
  /reset           forget the conversation (the system prompt stays)
  /system [TEXT]   show or set the system prompt (/system - removes it)
  /save FILE       write the conversation as JSON messages
  /load FILE       continue a saved conversation
  /stats           prompt, cached and new tokens, time to first token, tok/s of the last answer
  /exit            leave (Ctrl-D does too; Ctrl-C stops an answer, or leaves at an empty prompt)
A line ending in \\ continues on the next line; \"\"\" starts and ends a multi-line message.
Start a message with // to send a line that begins with /."""


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _setup_line_editing() -> Callable[[], str]:
    """Line editing and a history file for what the user typed; returns a peek at the edit buffer."""
    try:
        import readline
    except ImportError:  # not on every platform; input() still works
        return lambda: ""
    history = models_home() / "chat_history"
    try:
        history.parent.mkdir(parents=True, exist_ok=True)
        if history.is_file():
            readline.read_history_file(history)
    except OSError:
        pass
    readline.set_history_length(2000)
    import atexit

    def save() -> None:
        try:
            readline.write_history_file(history)
        except OSError:
            pass

    atexit.register(save)
    return readline.get_line_buffer


def _read_message(peek: Callable[[], str]) -> str | None:
    """One message from the prompt: None to leave. Handles continuations and triple quotes."""
    lines: list[str] = []
    prompt = ">>> "
    in_block = False
    while True:
        try:
            line = input(prompt)
        except EOFError:
            print(file=sys.stderr)
            return None
        except KeyboardInterrupt:
            typed = lines or peek().strip()
            print(file=sys.stderr)
            if typed:  # Ctrl-C on a half-typed message drops it, as in a shell
                lines, in_block, prompt = [], False, ">>> "
                continue
            return None
        if not lines and line.strip().startswith('"""'):
            in_block = True
            line = line.strip()[3:]
        if in_block:
            if line.rstrip().endswith('"""'):
                lines.append(line.rstrip()[:-3])
                return "\n".join(lines).strip()
            lines.append(line)
        elif line.endswith("\\"):
            lines.append(line[:-1])
        else:
            lines.append(line)
            return "\n".join(lines).strip()
        prompt = "... "


def _command(session: ChatSession, text: str) -> bool:
    """Run a slash command; False means leave."""
    name, _, arg = text.partition(" ")
    arg = arg.strip()
    if name in ("/exit", "/quit", "/bye"):
        return False
    if name == "/help":
        _err(HELP)
    elif name == "/reset":
        session.reset()
        _err("conversation cleared (system prompt kept)")
    elif name == "/system":
        if arg == "-":
            session.system = None
            _err("system prompt removed")
        elif arg:
            session.system = arg
            _err("system prompt set")
        else:
            _err(f"system prompt: {session.system!r}" if session.system else "no system prompt")
    elif name in ("/save", "/load") and not arg:
        _err(f"usage: {name} FILE")
    elif name == "/save":
        path = session.save(arg)
        _err(f"saved {len(session.conversation())} messages to {path}")
    elif name == "/load":
        _err(f"loaded {session.load(arg)} messages from {Path(arg).expanduser()}")
    elif name == "/stats":
        _err(session.stats.line() if session.stats else "no answer yet")
    else:
        _err(f"unknown command {name}: /help lists the commands (start with // to send a line beginning with /)")
    return True


def _print(stream) -> None:
    chunk = None
    for chunk in stream:
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if chunk is not None and chunk.stopped_loop:
        _err("[stopped a repeating answer]")


def _print_stats(session: ChatSession, verbose: bool) -> None:
    if verbose and session.stats:
        _err(f"[{session.stats.line()}]")


def _answer(session: ChatSession, text: str, verbose: bool) -> None:
    stream = None
    try:
        stream = session.send(text)  # fits the context first: it may drop old turns, or refuse
        dropped = session.stats.dropped_turns
        if dropped:
            _err(f"[context full: dropped the {dropped} oldest turn{'s' if dropped > 1 else ''} to make room]")
        _print(stream)
    except KeyboardInterrupt:  # Ctrl-C stops this answer (even before its first token), not the session
        if stream is not None:
            stream.close()
        sys.stdout.write("\n")
        kept = session.messages and session.messages[-1].get("cut")
        _err("[answer stopped; kept in the history as cut]" if kept else "[stopped before the answer began]")
    _print_stats(session, verbose)


def repl(session: ChatSession, verbose: bool = False) -> None:
    """Read messages until /exit, Ctrl-D or Ctrl-C at an empty prompt."""
    # Ctrl-C is how a user stops an answer. A process started with SIGINT ignored (a background job
    # of a script, nohup-style launchers) inherits that, and Python then never raises KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    model = session.model
    _err(f"ovchat · {model.name} on {model.device} · context {model.context_length} tokens · /help, Ctrl-D quits")
    sampling = session.sampling.summary()
    origin = model.chat_sampling_source if sampling == model.chat_sampling.summary() else "as asked"
    _err(f"sampling: {sampling} ({origin})")
    peek = _setup_line_editing()
    while True:
        text = _read_message(peek)
        if text is None:
            return
        if not text:
            continue
        try:
            if text.startswith("/") and not text.startswith("//"):
                if not _command(session, text):
                    return
                continue
            _answer(session, text[1:] if text.startswith("//") else text, verbose)
        except OvchatError as exc:
            _err(f"error: {exc}")
        except KeyboardInterrupt:  # a Ctrl-C outside an answer (a command, a second Ctrl-C) keeps the session
            _err("[interrupted]")


def answer_piped(session: ChatSession, text: str, verbose: bool = False) -> None:
    """Not a terminal: the whole input is one message; print only the answer."""
    if not text.strip():
        raise OvchatError("no message on standard input")
    _print(session.send(text.strip()))
    _print_stats(session, verbose)
