"""Run a plain Python function as a sluice exec-kernel worker.

The sluice runner starts the worker with a pipe on its stdin and stdout and sends one message per
line, ``{"id": "<id>", "input": <any JSON>}``. :func:`serve` calls your function with the decoded
``input`` and answers each line with exactly one line, ``{"id": "<id>", "output": <JSON>}`` or
``{"id": "<id>", "error": "<text>"}``. stderr is yours for logs. The full protocol is in
``docs/EXEC.md`` in the sluice repository.

Example, a worker script ``worker.py``::

    from sluice_worker import serve

    def shout(text):
        return text.upper()

    if __name__ == "__main__":
        serve(shout)

and by hand: ``printf '{"id":"a","input":"hi"}\\n' | python worker.py`` prints
``{"id":"a","output":"HI"}``. An unchanged function needs no script at all:
``python -m sluice_worker worker:shout``.

The same thing in-process, with explicit streams (this example runs as a doctest):

>>> import io
>>> from sluice_worker import serve
>>> out = io.StringIO()
>>> serve(str.upper, stdin=io.StringIO('{"id": "a", "input": "hi"}\\n'), stdout=out)
>>> out.getvalue()
'{"id":"a","output":"HI"}\\n'
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import IO, Any, Callable, Optional

__all__ = ["PROTOCOL_VERSION", "__version__", "serve"]

__version__ = "0.1.0"

#: The exec-kernel protocol version this package speaks (``SLUICE_EXEC_PROTOCOL``).
PROTOCOL_VERSION = 1

EX_DATAERR = 65  # a line that is not a protocol message (sysexits.h)
EX_CONFIG = 78  # the runner speaks another protocol version (sysexits.h)


def serve(
    fn: Callable[[Any], Any], *, stdin: Optional[IO] = None, stdout: Optional[IO] = None
) -> None:
    """Answer protocol messages with ``fn`` until stdin ends.

    Reads one ``{"id": ..., "input": ...}`` line at a time from ``stdin`` (default: the process's
    standard input, read as UTF-8 bytes), calls ``fn(input)`` and writes one answer line to
    ``stdout`` (default: ``sys.stdout`` as it is when ``serve`` is called), flushing each line.
    Answers are ASCII-only JSON, so the stream's encoding does not matter.

    - ``fn`` returns a value: the answer is ``{"id": ..., "output": value}``.
    - ``fn`` raises an :class:`Exception`: the answer is ``{"id": ..., "error": "Type: message"}``,
      where Type is the bare class name for built-in exceptions (``"ValueError: bad number"``)
      and for classes defined in ``__main__``, and ``module.QualName`` for any other class
      (``"mylib.errors.Invalid: bad"``); just Type when the message is empty. The traceback is logged to stderr; the worker goes on.
    - The value is not JSON-serialisable (a set, an object, NaN or infinity): the answer is an
      error such as ``"TypeError: Object of type set is not JSON serializable"``.

    While ``fn`` runs, ``sys.stdout`` is ``sys.stderr``, so ``print()`` in ``fn`` goes to the log
    and can never corrupt the protocol; it is restored afterwards. (Output written to file
    descriptor 1 directly, e.g. by a subprocess, is not redirected: pass it
    ``stdout=sys.stderr``.)

    Returns at the end of stdin. Exits the process (:class:`SystemExit`) with status 78 when
    ``SLUICE_EXEC_PROTOCOL`` is set to a version other than ``"1"``, with status 65 on a line
    that is not a JSON object with a string ``"id"`` and an ``"input"``, with status 1 when the
    reader of stdout has gone (broken pipe) and 130 on KeyboardInterrupt; each of these with one
    line on stderr at most and no traceback. Whatever else ``fn`` raises that is not an
    :class:`Exception` (``SystemExit``, ``GeneratorExit``) propagates.
    """
    _check_protocol_version()
    if stdin is None:
        stdin = getattr(sys.stdin, "buffer", sys.stdin)
    if stdout is None:
        stdout = sys.stdout
    try:
        for number, line in enumerate(stdin, 1):
            message_id, value = _parse(line, number)
            stdout.write(_answer(fn, message_id, value) + "\n")
            stdout.flush()
    except BrokenPipeError:
        _silence(stdout)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


def _check_protocol_version() -> None:
    """Exit with status 78 unless ``SLUICE_EXEC_PROTOCOL`` is unset or ``"1"``."""
    version = os.environ.get("SLUICE_EXEC_PROTOCOL")
    if version is not None and version != str(PROTOCOL_VERSION):
        _log(
            f"SLUICE_EXEC_PROTOCOL={version!r}, but sluice-worker {__version__} speaks exec "
            f"protocol {PROTOCOL_VERSION} only: install a sluice-worker matching the runner"
        )
        sys.exit(EX_CONFIG)


def _parse(line: Any, number: int) -> tuple:
    try:
        message = json.loads(line)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        message = None
    if not (
        isinstance(message, dict) and isinstance(message.get("id"), str) and "input" in message
    ):
        shown = repr(line[:200]) + ("..." if len(line) > 200 else "")
        _log(
            f"line {number} is not a protocol message (a JSON object with a string "
            f'"id" and an "input"): {shown}'
        )
        sys.exit(EX_DATAERR)
    return message["id"], message["input"]


def _answer(fn: Callable[[Any], Any], message_id: str, value: Any) -> str:
    saved = sys.stdout
    sys.stdout = sys.stderr
    try:
        output = fn(value)
    except Exception as exc:
        _log(f"message {message_id!r} failed:")
        traceback.print_exc(file=sys.stderr)
        return _encode({"id": message_id, "error": _describe(exc)})
    finally:
        sys.stdout = saved
    try:
        return _encode({"id": message_id, "output": output})
    except Exception as exc:  # TypeError, ValueError (NaN, circular), RecursionError
        return _encode({"id": message_id, "error": _describe(exc)})


def _encode(answer: dict) -> str:
    return json.dumps(answer, separators=(",", ":"), allow_nan=False)


def _describe(exc: BaseException) -> str:
    cls = type(exc)
    name = cls.__qualname__
    if cls.__module__ not in ("builtins", "__main__"):
        name = f"{cls.__module__}.{name}"
    try:
        text = str(exc)
    except Exception:
        text = "<exception str() failed>"
    return f"{name}: {text}" if text else name


def _log(text: str) -> None:
    print(f"sluice_worker: {text}", file=sys.stderr, flush=True)


def _silence(stream: IO) -> None:
    """After a broken pipe, point stream's descriptor at /dev/null so the interpreter's final
    flush cannot print 'Exception ignored ... BrokenPipeError' (Python's documented recipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # not a real file (StringIO, socket wrapper): nothing to silence
