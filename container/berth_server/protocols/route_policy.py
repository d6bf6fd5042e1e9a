"""Which routes change the server's state: a view says so itself, and routes through /invocations refuse it.

SageMaker reaches a container only through /invocations; `X-Amzn-SageMaker-Custom-Attributes: route=...`
sends an invocation to any other route (protocols/sagemaker/routes.py). Reading and generating routes
are open that way by default, whoever adds them; a view that launches, terminates, registers or
removes something carries `@changes_state` and is refused there unless the operator allows it
(BERTH_INVOCATIONS_ROUTES).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

View = TypeVar("View", bound=Callable[..., object])
CHANGES_STATE = "berth_changes_state"


def changes_state(view: View) -> View:
    """Mark a view as one that changes the server's state (launch, terminate, register, remove)."""
    setattr(view, CHANGES_STATE, True)
    return view


def is_state_changing(view: Callable[..., object]) -> bool:
    """True for a view marked with @changes_state."""
    return bool(getattr(view, CHANGES_STATE, False))
