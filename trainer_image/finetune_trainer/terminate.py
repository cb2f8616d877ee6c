"""SIGTERM ends a run at once, also as PID 1 in a container.

The kernel delivers no signal to a PID namespace's first process unless that process handles it,
and the trainer, validator and exporter run as PID 1 in their pods (the image's ENTRYPOINT). Without
a handler, a pod being deleted (suspend, preemption, eviction, a drained node) would sit out its
whole grace period and then be SIGKILLed: exit code 137, which the training Job reads as a kill at
the memory limit and fails on at once.

With :func:`guarded`, SIGTERM raises :class:`Terminated` in the main thread: the run writes its
final progress record (Failed, "terminated by SIGTERM") without waiting for uploads in flight — an
unfinished checkpoint has no manifest and is never resumed from — and the process exits 143.
Ctrl-C (SIGINT, a KeyboardInterrupt) ends a run the same way, with exit code 130. The trainer adds to
the message whether a checkpoint exists to resume from (see ``run.execute``).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Final, NoReturn

EXIT_CODE: Final = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM
INTERRUPTED_EXIT_CODE: Final = 128 + signal.SIGINT  # ... and by SIGINT (Ctrl-C)
MESSAGE: Final = "terminated by SIGTERM"
INTERRUPTED_MESSAGE: Final = "interrupted (Ctrl-C)"
BROKEN_PIPE_EXIT_CODE: Final = 128 + signal.SIGPIPE  # what a shell reports when a reader left: `| head`


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, so that no ``except Exception`` on the way swallows it."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
    raise Terminated(MESSAGE)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
    raise KeyboardInterrupt(INTERRUPTED_MESSAGE)


def guarded(main: Callable[[], int]) -> int:
    """Run ``main`` with SIGTERM raising :class:`Terminated`; on it, exit the process with :data:`EXIT_CODE`.

    Ctrl-C likewise ends it with one line and :data:`INTERRUPTED_EXIT_CODE`, not a traceback, and a
    closed stdout (a reader such as ``head`` that left) silently with :data:`BROKEN_PIPE_EXIT_CODE`.

    The exit is immediate (``os._exit`` after flushing): interpreter shutdown would otherwise join
    the upload threads still in flight. Off the main thread (where no handler can be set), ``main``
    runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        return main()
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    previous_int = signal.signal(signal.SIGINT, _raise_interrupted)
    try:
        return main()
    except Terminated as exc:
        _exit_now(str(exc), EXIT_CODE)
    except KeyboardInterrupt as exc:
        _exit_now(str(exc) or INTERRUPTED_MESSAGE, INTERRUPTED_EXIT_CODE)
    except BrokenPipeError:
        # The reader of stdout is gone (`finetune crds | head`): quietly, as other tools end. stdout is
        # pointed at /dev/null so the flush at interpreter exit does not raise a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_EXIT_CODE
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def _exit_now(message: str, code: int) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
