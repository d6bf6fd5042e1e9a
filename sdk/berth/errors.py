"""The SDK's own errors: each carries a one-line message the CLI prints as is."""

from __future__ import annotations


class BerthError(Exception):
    """Base class for every error the SDK raises on purpose."""


class ValidationError(BerthError, ValueError):
    """An argument is wrong; caught before any remote call."""


class DockerUnavailableError(BerthError):
    """No Docker engine answers; the docker target cannot run."""


class DeployError(BerthError):
    """A deployment did not reach a serving state (timed out, failed, or the process exited)."""


class InvokeError(BerthError):
    """A prediction failed; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        """Keep the status next to the message."""
        super().__init__(message)
        self.status = status
