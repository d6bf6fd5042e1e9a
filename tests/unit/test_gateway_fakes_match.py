"""The fake gateways the unit tests use answer the real Gateway's calls: same methods, parameters it accepts.

A fake that drifts from client/gateway.py (a renamed method, a parameter the real one lost) would let
protocol tests pass against calls the real server cannot make.
"""

from __future__ import annotations

import inspect

import pytest
from berth_server.client.gateway import Gateway

from tests.unit.test_frontend_fake import FakeGateway as FrontendFake
from tests.unit.test_ollama_protocol import OllamaGateway
from tests.unit.test_tgi_fakes import FakeGateway as TgiFake
from tests.unit.test_xinference_routes import FakeGateway as EncoderFake


def _public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")}


@pytest.mark.parametrize("fake", [FrontendFake, TgiFake, EncoderFake, OllamaGateway])
def test_every_fake_method_is_a_real_gateway_method_with_its_parameters(fake: type) -> None:
    real = _public_methods(Gateway)
    for name, signature in _public_methods(fake).items():
        assert name in real, f"{fake.__qualname__}.{name} is not a Gateway method"
        accepted = set(real[name].parameters)
        extra = [p for p in signature.parameters if p not in accepted and p != "self"]
        assert not extra, f"{fake.__qualname__}.{name} takes {extra}, which Gateway.{name} does not"
