"""How every pygfm entry point ends on an error: one line, a documented exit code.

``pygfm-data``, ``pygfm-train``, ``pygfm-screen``, ``pygfm-hpo`` and ``pygfm-demo``
wrap their ``main`` in :func:`entry_point`. What the user can fix (a bad
config or argument, a missing, unreadable, corrupt or unwritable file, a full
disk) prints ``PROG: error: MESSAGE`` on stderr, one line without a traceback.
Exit codes, the same for all five:

* 0: done;
* 1: the run failed (a diverging loss, every trial failed, ...; the command's
  own errors that it lists as such) or an unexpected exception, which is a bug:
  it keeps its traceback, followed by a line asking to report it;
* 2: bad input: ``ValueError`` (and pygfm's ``ConfigError``, ``DatasetError``,
  ``InputError``, ``ScreenError``), ``KeyError`` (a missing key or name) and
  ``OSError`` (missing or existing files, permissions, a read-only
  filesystem, a full disk; the message names the file when the error does);
* 130: interrupted (Ctrl-C, or SIGTERM where the command turns it into an
  interrupt);
* 141 (128 + SIGPIPE): stdout was closed early (``pygfm-data info DIR | head``);
  nothing is printed, as a Unix tool killed by SIGPIPE prints nothing.

Under MPI a failing rank must end the job so that no other rank waits for it in
a collective: the command sets :attr:`Context.abort`, called with the exit code
after the line is printed.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Callable

__all__ = ["Context", "entry_point", "error_message", "USAGE", "FAILED", "INTERRUPTED",
           "BROKEN_PIPE"]

FAILED, USAGE, INTERRUPTED, BROKEN_PIPE = 1, 2, 130, 141
REPORT = "this is a bug in pygfm; please report it with the traceback above"


@dataclass
class Context:
    """What the wrapper needs to know about the command while it runs.

    ``prog``: the name in the error line (``pygfm-data info``, ``pygfm-train
    (rank 1)``); ``abort``: called with the exit code after an error (MPI);
    ``failures``: further exception types that mean "the run failed" (exit 1,
    one line); ``usage_errors``: further types that exit 2; ``interrupted``: the
    line printed on Ctrl-C; ``agreed_errors``: types that every rank of the job
    raises together (rank 0 alone prints the line, no rank aborts the others:
    ``close`` is called instead); ``rank``: this process's rank."""

    prog: str
    abort: Callable[[int], None] | None = None
    failures: tuple = ()
    usage_errors: tuple = ()
    interrupted: str = "interrupted"
    agreed_errors: tuple = ()
    close: Callable[[], None] | None = None
    rank: int = 0


def _os_message(error: OSError) -> str:
    """An OSError as ``FILE: reason`` (``str()`` of a plain OSError is
    ``[Errno 28] No space left on device: 'FILE'``)."""
    if type(error).__str__ is not OSError.__str__ or error.strerror is None:
        return str(error)  # a message of its own (FileWriteError, FileExistsError(...))
    names = [str(n) for n in (error.filename, error.filename2) if n is not None]
    return f"{' -> '.join(names)}: {error.strerror}" if names else error.strerror


def error_message(error: BaseException) -> str:
    """The one-line message of an expected error."""
    if isinstance(error, KeyError):  # str() of a KeyError is its argument's repr
        text = str(error.args[0]) if error.args else "a key is missing"
    elif isinstance(error, OSError):
        text = _os_message(error)
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split("\n")) if "\n" in text.strip() else text.strip()


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so that Python's flush at
    exit does not raise (and print) a second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _code_of(error: BaseException, context: Context) -> int | None:
    if isinstance(error, context.failures):
        return FAILED
    if isinstance(error, (ValueError, KeyError, OSError) + context.usage_errors):
        return USAGE
    return None


def _end(context: Context, code: int) -> int:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if context.abort is not None:
        context.abort(code)
    return code


def run(main: Callable[[Context], int | None], context: Context) -> int:
    """``main(context)`` with the errors handled as the module doc says."""
    try:
        return int(main(context) or 0)
    except BrokenPipeError:
        _silence_stdout()
        return _end(context, BROKEN_PIPE)
    except KeyboardInterrupt:
        print(f"{context.prog}: {context.interrupted}", file=sys.stderr, flush=True)
        return _end(context, INTERRUPTED)
    except Exception as error:  # noqa: BLE001 - every error ends in one line
        code = _code_of(error, context)
        if code is None:
            traceback.print_exc()
            code = FAILED
            print(f"{context.prog}: error: {error_message(error)} ({type(error).__name__}; "
                  f"{REPORT})", file=sys.stderr, flush=True)
        elif isinstance(error, context.agreed_errors):
            if context.rank == 0:
                print(f"{context.prog}: error: {error_message(error)}", file=sys.stderr,
                      flush=True)
            if context.close is not None:
                context.close()
            return code
        else:
            print(f"{context.prog}: error: {error_message(error)}", file=sys.stderr,
                  flush=True)
        return _end(context, code)


def entry_point(prog: str, **settings):
    """Decorator: ``main(argv, context)`` becomes ``main(argv=None) -> int`` run
    under :func:`run` (``settings`` are :class:`Context` fields)."""
    def decorate(body):
        @functools.wraps(body)
        def main(argv=None) -> int:
            return run(lambda context: body(argv, context), Context(prog, **settings))
        return main
    return decorate
