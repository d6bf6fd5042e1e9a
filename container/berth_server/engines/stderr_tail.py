"""Keep the last lines written to this process's stderr (fd 2), children included, to name a failure's root cause.

vLLM starts its engine core and workers as child processes; when one fails, the parent only raises
"Engine core initialization failed. See root cause above", and the cause is a line the child wrote to
the shared stderr. Routing fd 2 through a pipe (copied on to the real stderr) lets the engine put
that line in the error the user gets.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections import deque

# "(Worker pid=1) ERROR 11-29 09:57:16 [file.py:953] KeyError: 'layers.1.mlp.gate.bias'" -> "KeyError: ..."
_EXCEPTION_LINE = re.compile(r"\b((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit)): (.+)$")
# vLLM's executor monitor: "Worker proc VllmWorker-0 died unexpectedly (exit code: -4), shutting down executor."
# and its process manager: "Process EngineCore_DP0 (PID: 12) died with exit code -4".
_PROCESS_DEATH = re.compile(
    r"(?:Worker proc|Process) (?P<name>[\w.-]+)(?: \(PID: \d+\))? died (?:unexpectedly \(exit code: |with exit code )"
    r"(?P<code>-?\d+)")
# What a signal that kills an engine's process means for the person reading the launch error.
_SIGNAL_MEANING = {
    signal.SIGILL: "illegal instruction: this CPU lacks or blocks an instruction vLLM's kernels use for this "
                   "dtype and shape",
    signal.SIGSEGV: "segmentation fault: a native kernel read memory it does not own",
    signal.SIGBUS: "bus error: a native kernel read a misaligned or vanished mapping",
    signal.SIGKILL: "killed, most often by the kernel's out-of-memory killer",
    signal.SIGABRT: "aborted by a native library (its message is above in the log)",
    signal.SIGFPE: "arithmetic fault in a native kernel",
}
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

    def process_death(self, settle_s: float = 1.0) -> str | None:
        """A child process that died by a signal or a non-zero exit, said in words, or None."""
        self._settle(settle_s)
        return process_death_in(list(self.lines))

    def _settle(self, settle_s: float) -> None:
        deadline = time.monotonic() + 5.0
        while time.monotonic() - self._last_read < settle_s and time.monotonic() < deadline:
            time.sleep(0.1)

    def root_cause(self, settle_s: float = 1.0) -> str | None:
        """The last exception line written (after the pipe has been quiet for a moment), or None."""
        self._settle(settle_s)
        for line in reversed(list(self.lines)):
            match = _EXCEPTION_LINE.search(line)
            if match and not any(marker in line for marker in _NOT_A_CAUSE):
                return f"{match.group(1)}: {match.group(2).strip()}"
        return None


def process_death_in(lines: list[str]) -> str | None:
    """The last process death vLLM logged in `lines`, with the signal's name and meaning, or None."""
    for line in reversed(lines):
        match = _PROCESS_DEATH.search(line)
        if match:
            return describe_exit(match.group("name"), int(match.group("code")))
    return None


def describe_exit(process: str, code: int) -> str:
    """'process X was killed by SIGILL (illegal instruction: ...)' or 'process X exited with code N'."""
    if code >= 0:
        return f"its process {process} exited with code {code}"
    try:
        sig = signal.Signals(-code)
    except ValueError:
        return f"its process {process} was killed by signal {-code}"
    meaning = _SIGNAL_MEANING.get(sig)
    return f"its process {process} was killed by {sig.name}" + (f" ({meaning})" if meaning else "")
