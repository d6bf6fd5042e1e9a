"""Keep the last lines written to this process's stderr (fd 2), children included, to name a failure's root cause.

vLLM starts its engine core and workers as child processes; when one fails, the parent only raises
"Engine core initialization failed. See root cause above", and the cause is a line the child wrote to
the shared stderr. Routing fd 2 through a pipe (copied on to the real stderr) lets the engine put
that line in the error the user gets.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import deque

# "(Worker pid=1) ERROR 11-29 09:57:16 [file.py:953] KeyError: 'layers.1.mlp.gate.bias'" -> "KeyError: ..."
_EXCEPTION_LINE = re.compile(r"\b((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit)): (.+)$")
_NOT_A_CAUSE = ("See root cause above", "Engine core initialization failed", "See stack trace (above)")


class StderrTail:
    """fds 1 and 2 through pipes: every byte goes on to the original stream; the last `keep` lines are kept."""

    _installed: StderrTail | None = None
    _lock = threading.Lock()

    def __init__(self, keep: int = 400) -> None:
        self.lines: deque[str] = deque(maxlen=keep)
        self._last_read = time.monotonic()

    @classmethod
    def install(cls) -> StderrTail:
        """The process-wide tail, installed once (children started afterwards inherit the pipe)."""
        with cls._lock:
            if cls._installed is None:
                tail = cls()
                for fd in (1, 2):  # vLLM's logger writes to stdout, tracebacks go to stderr
                    out_fd = os.dup(fd)
                    read_fd, write_fd = os.pipe()
                    os.dup2(write_fd, fd)
                    os.close(write_fd)
                    threading.Thread(target=tail._pump, args=(read_fd, out_fd), name=f"berth-fd{fd}-tail",
                                     daemon=True).start()
                cls._installed = tail
            return cls._installed

    def _pump(self, read_fd: int, out_fd: int) -> None:
        partial = b""
        while True:
            try:
                chunk = os.read(read_fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self._last_read = time.monotonic()
            try:
                os.write(out_fd, chunk)
            except OSError:
                pass  # the real stream is gone; keep the tail anyway
            *complete, partial = (partial + chunk).split(b"\n")
            self.lines.extend(line.decode(errors="replace") for line in complete)

    def root_cause(self, settle_s: float = 1.0) -> str | None:
        """The last exception line written (after the pipe has been quiet for a moment), or None."""
        deadline = time.monotonic() + 5.0
        while time.monotonic() - self._last_read < settle_s and time.monotonic() < deadline:
            time.sleep(0.1)
        for line in reversed(list(self.lines)):
            match = _EXCEPTION_LINE.search(line)
            if match and not any(marker in line for marker in _NOT_A_CAUSE):
                return f"{match.group(1)}: {match.group(2).strip()}"
        return None
