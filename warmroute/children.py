"""Child processes that cannot outlive warmroute (Linux: the parent-death signal).

The signal must be set inside the child. ``preexec_fn`` would do that between fork and
exec, but running Python there is unsafe in a process with threads (gRPC has several),
so instead: Envoy is started through util-linux's ``setpriv --pdeathsig``, and our own
Python children call ``prctl`` themselves at start-up (``adopt_parent_death``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import signal
import sys

_PR_SET_PDEATHSIG = 1
PARENT_ENV = "WARMROUTE_PARENT_PID"


def wrap(argv: list[str]) -> list[str]:
    """``argv`` prefixed so the command gets SIGTERM when warmroute dies (if possible)."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if setpriv is None:
        return argv
    return [setpriv, "--pdeathsig", "TERM", "--", *argv]


def child_env() -> dict[str, str]:
    """Environment for a Python child that should call ``adopt_parent_death``."""
    return {**os.environ, PARENT_ENV: str(os.getpid())}


def adopt_parent_death() -> None:
    """In a child started with ``child_env``: exit with the parent, even a SIGKILLed one."""
    parent = os.environ.get(PARENT_ENV)
    if parent is None or not sys.platform.startswith("linux"):
        return
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    ctypes.CDLL(libc_name, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # the parent died before we asked
        os.kill(os.getpid(), signal.SIGTERM)
