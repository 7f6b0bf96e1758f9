"""Ties a training subprocess to its worker: if the worker dies, the trainer dies too (Linux).

Called first thing by ``python -m tunery.training``. Done in the child rather than with ``preexec_fn``,
which is unsafe in a threaded parent such as ``tunery serve``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PARENT_ENV = "TUNERY_WORKER_PID"


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL us when the worker that started us exits."""
    expected = os.environ.get(PARENT_ENV)
    if not expected or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(expected):  # the worker died before we asked
        os.kill(os.getpid(), signal.SIGKILL)
