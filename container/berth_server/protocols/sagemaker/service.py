"""SageMaker /invocations service: TGI-shaped bodies as TGI's SageMaker image answers them.

Chat ("messages") and completion ("prompt") bodies are answered by the OpenAI protocol's own
views (see blueprint.py), so the reply is byte-for-byte what /v1 would give.
"""

from __future__ import annotations

from typing import Any

from berth_server.client.state import FrontendState
from berth_server.errors import NotFound
from berth_server.protocols.reply import WireReply
from berth_server.protocols.sagemaker.schemas import InvocationTgiBody
from berth_server.protocols.tgi import service as tgi_service
from berth_server.protocols.tgi.schemas import parse


def invoke_tgi(state: FrontendState, uid: str, body: dict[str, Any]) -> WireReply:
    """A TGI-shaped invocation: a list [{generated_text, details?}] per input, or TGI token events."""
    invocation = parse(InvocationTgiBody, body)
    bodies = invocation.bodies()
    # Every prompt is started before any is folded, so the model batches them.
    return tgi_service.reply(state, bodies[:1] if invocation.stream else bodies, uid, stream=invocation.stream)


def endpoint_model(gateway: Any, body: dict[str, Any]) -> dict[str, Any]:
    """The body with "model" dropped unless it names a running model: on SageMaker the endpoint is the model.

    Clients written for TGI send "tgi" and others send the endpoint's name; both mean the default model.
    """
    name = body.get("model")
    if not isinstance(name, str):
        return body  # absent, or not a name: the schema says so
    try:
        gateway.resolve_target(name)  # a model, or an adapter of the endpoint's model
    except NotFound:
        return {key: value for key, value in body.items() if key != "model"}
    return body
