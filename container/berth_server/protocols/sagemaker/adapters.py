"""SageMaker's adapter contract: POST/GET /adapters, DELETE /adapters/{name}, and the adapter headers.

As AWS's model-hosting container standard defines it: registering takes {"name", "src", "preload",
"pin"} (a JSON body, or the same keys as query parameters) and answers "Adapter <name> registered";
on /invocations, X-Amzn-SageMaker-Adapter-Identifier (else -Alias) selects the adapter for that
request whatever the body's shape. The adapters belong to the default model (the endpoint's).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from berth_server.adapter_specs import AdapterSource, check_adapter_name
from berth_server.client.state import FrontendState
from berth_server.protocols import bounds
from berth_server.protocols.sagemaker.schemas import Shape
from berth_server.protocols.wire import parse

ADAPTER_HEADERS = ("X-Amzn-SageMaker-Adapter-Identifier", "X-Amzn-SageMaker-Adapter-Alias")


class RegisterAdapterBody(BaseModel):
    """POST /adapters."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=bounds.MAX_NAME_CHARS)
    src: str = Field(min_length=1, max_length=4096)
    preload: bool = True
    pin: bool = False
    persist: bool = False  # Berth's: kept under BERTH_HOME, so a server restart registers it again


def register(state: FrontendState, body: dict[str, Any]) -> str:
    """Register an adapter on the default model; SageMaker's reply text."""
    spec = parse(RegisterAdapterBody, body)
    adapter = AdapterSource(name=check_adapter_name(spec.name), src=spec.src, preload=spec.preload, pin=spec.pin,
                            persist=spec.persist)
    state.gateway.add_adapter(state.gateway.resolve_model(None), adapter)
    return f"Adapter {spec.name} registered"


def unregister(state: FrontendState, name: str) -> str:
    """Remove an adapter from the default model."""
    state.gateway.remove_adapter(state.gateway.resolve_model(None), check_adapter_name(name))
    return f"Adapter {name} unregistered"


def listing(state: FrontendState) -> list[dict[str, Any]]:
    """The default model's adapters: name, src, rank, pinned, loaded."""
    adapters = state.gateway.adapters(state.gateway.resolve_model(None), max_age_s=0.0)
    return [{"name": a.name, "src": a.src, "rank": a.rank, "pinned": a.pinned, "loaded": a.loaded}
            for a in adapters]


def adapter_from_headers(headers: Any) -> str | None:
    """The adapter an invocation's headers select, if any."""
    for header in ADAPTER_HEADERS:
        value = (headers.get(header) or "").strip()
        if value:
            return value
    return None


def with_adapter(body: dict[str, Any], shape: Shape, adapter: str) -> dict[str, Any]:
    """The body with the header's adapter put where its protocol reads one (the header wins over the body)."""
    if shape == "tgi":
        parameters = body.get("parameters")
        return {**body, "parameters": {**(parameters if isinstance(parameters, dict) else {}), "adapter_id": adapter}}
    return {**body, "lora_name": adapter}
