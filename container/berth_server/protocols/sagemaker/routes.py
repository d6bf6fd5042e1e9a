"""Any route through /invocations: `X-Amzn-SageMaker-Custom-Attributes: route=/v1/embeddings`.

SageMaker only ever calls /invocations, so (as AWS's Omni container does) the custom attributes may
name another route; the invocation is then served by that route's own view, with its own body,
reply and error shape. The route is looked up in the app's URL map, so every route any protocol
registers is reachable without being listed here. POST is used where the route takes it, else GET
(listings such as /adapters); `method=DELETE` in the same attributes picks another method.

Refused (before anything runs): routes that do not exist (404), /invocations itself and the
health/stream routes, and views marked @changes_state (launch, terminate, register, remove) or any
method other than GET/POST unless BERTH_INVOCATIONS_ROUTES allows the path (403).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import current_app, g
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from berth_server.errors import BerthError, InvalidRequest
from berth_server.errors import NotFound as BerthNotFound
from berth_server.protocols.route_policy import is_state_changing

CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
# SageMaker's own entry points: routing to them would loop or make no sense as an invocation.
NOT_ROUTABLE = frozenset({"/invocations", "/ping", "/invocations-bidirectional-stream"})
MAX_ROUTE_CHARS = 512


class UnknownRoute(BerthNotFound):
    """route=... names no route of this server."""

    code: str | None = None  # not a model: no model_not_found code


class RouteForbidden(BerthError):
    """The route exists but the operator has not opened it to /invocations."""

    status = 403
    error_type = "validation"
    openai_type = "permission_error"


@dataclass(frozen=True)
class RoutedCall:
    """The view an invocation is routed to, and how to call it."""

    path: str
    method: str
    endpoint: str
    view: Callable[..., Any]
    args: dict[str, Any]

    def use_error_shape(self) -> None:
        """Answer errors from now on in the route's own shape (its blueprint's)."""
        blueprint = self.endpoint.rpartition(".")[0]
        shape = getattr(current_app.blueprints.get(blueprint), "berth_errors", None)
        if shape is not None:
            g.berth_errors = shape

    def __call__(self) -> Any:
        """Run the route's own view, with its blueprint's error shape."""
        self.use_error_shape()
        return self.view(**self.args)


def custom_attributes(header: str | None) -> dict[str, str]:
    """SageMaker's custom attributes as key=value pairs (separated by "," or ";"; other items ignored)."""
    pairs: dict[str, str] = {}
    for item in (header or "").replace(";", ",").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            pairs[key.strip().lower()] = value.strip()
    return pairs


def allowed_patterns(setting: str | None) -> tuple[str, ...]:
    """BERTH_INVOCATIONS_ROUTES as globs over paths."""
    return tuple(p.strip() for p in (setting or "").split(",") if p.strip())


def resolve(attributes: dict[str, str], allowed: tuple[str, ...]) -> RoutedCall | None:
    """The call an invocation's custom attributes route it to; None when they name no route."""
    path = attributes.get("route")
    if path is None:
        return None
    if not path.startswith("/") or len(path) > MAX_ROUTE_CHARS or "?" in path or "#" in path:
        raise InvalidRequest(f"route={path[:80]!r}: a route is a path starting with '/', without a query",
                             param="route")
    if path.rstrip("/") in NOT_ROUTABLE or path in NOT_ROUTABLE:
        raise InvalidRequest(f"route={path} cannot be reached through /invocations", param="route")
    method = attributes.get("method", "").upper()
    endpoint, args, method = _match(path, method)
    view = current_app.view_functions[endpoint]
    if (is_state_changing(view) or method not in ("GET", "POST")) and not _allowed(path, allowed):
        raise RouteForbidden(f"route={path} ({method}) changes the server's state; /invocations reaches it only "
                             "when BERTH_INVOCATIONS_ROUTES allows it")
    return RoutedCall(path=path, method=method, endpoint=endpoint, view=view, args=args)


def _match(path: str, method: str) -> tuple[str, dict[str, Any], str]:
    """(endpoint, view args, method) in the app's URL map: POST first, then GET, unless a method is named."""
    adapter = current_app.url_map.bind("localhost")
    for candidate in [method] if method else ["POST", "GET"]:
        try:
            endpoint, args = adapter.match(path, method=candidate)
            return str(endpoint), dict(args), candidate
        except MethodNotAllowed as exc:
            last: Exception = exc
        except (NotFound, RequestRedirect):
            raise UnknownRoute(f"route={path}: no such route", param="route") from None
    methods = ", ".join(sorted(getattr(last, "valid_methods", None) or []))
    raise InvalidRequest(f"route={path} does not take {method or 'POST or GET'} (it takes {methods})",
                         param="route")


def _allowed(path: str, allowed: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in allowed)
