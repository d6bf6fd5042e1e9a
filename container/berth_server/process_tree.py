"""Children that do not outlive the launcher: each asks the kernel for SIGTERM when its parent dies."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


# A child started from a threaded parent arms itself (no preexec_fn there): Settings.die_with_parent_pid.
ENV_PARENT = "BERTH_DIE_WITH_PARENT"


def arm_for_parent(parent: int | None) -> None:
    """In a child: SIGTERM when the parent with pid `parent` dies (Linux only; None: nothing to do)."""
    if not parent or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request was armed
        os.kill(os.getpid(), signal.SIGTERM)


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn for a child of this process: SIGTERM reaches it if we die, even by SIGKILL (Linux only).

    Children run in their own session (so a terminal's Ctrl-C reaches the launcher only), which also
    means nothing else would stop them: without this, a killed launcher leaves them running.
    """
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()

    def arm() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return arm
