"""The unit tests' one fake gateway answers the real Gateway's calls: same methods, parameters it accepts.

A fake that drifts from client/gateway.py (a renamed method, a parameter the real one lost) would let
protocol tests pass against calls the real server cannot make.
"""

from __future__ import annotations

import importlib
import inspect

import pytest
from berth_server.client.gateway import Gateway

from tests.unit.fakes.gateway import FakeGateway

# Test modules that specialise the fake (a scripted finish, an exploding stream, tool calls): their
# overrides must stay real Gateway calls too.
for module in ("test_frontend_app", "test_responses_protocol", "test_anthropic_protocol", "test_openai_tool_calls"):
    importlib.import_module(f"tests.unit.{module}")


def _public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")}


def _fake_and_its_specialisations() -> list[type]:
    found, pending = [], [FakeGateway]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("fake", _fake_and_its_specialisations(), ids=lambda cls: cls.__qualname__)
def test_every_fake_method_is_a_real_gateway_method_with_its_parameters(fake: type) -> None:
    real = _public_methods(Gateway)
    for name, signature in _public_methods(fake).items():
        assert name in real, f"{fake.__qualname__}.{name} is not a Gateway method"
        accepted = set(real[name].parameters)
        extra = [p for p in signature.parameters if p not in accepted and p not in ("self", "_")]
        assert not extra, f"{fake.__qualname__}.{name} takes {extra}, which Gateway.{name} does not"
