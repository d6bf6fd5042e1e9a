"""A protocol's reply, written once: a generator of its wire events; the whole (non-streamed) reply is their fold.

A service returns a WireReply instead of a Flask response. Streamed, its events go out one by one
(the HTTP layer frames them); whole, the same events are folded by `fold_events` and shaped by the
protocol's `whole` function into the body it returns. Streamed and whole replies therefore cannot
disagree on text, reasoning, tool calls, finish reasons, logprobs or usage: there is one writer.

A part may yield a list of events instead of one: a group that arrived together, written to the
client in one chunk (FINDINGS: fewer, larger writes halve the relay cost); the fold sees them one by one.

Keys that start with "_" are whole-only: the fold sees them, a streamed event never carries them
(TGI's prefill tokens, which its stream events have no place for).

A wire whose whole reply is not a key-by-key merge of its events (typed event streams such as
OpenAI Responses or Anthropic Messages, where the client itself rebuilds the object) gives its own
`fold`; it still folds the very events it streams. A reply may carry HTTP headers: `headers`, known before
the first byte (sent on streams too), and `whole_headers`, computed from the folded parts once the whole
reply is made (TGI's token counts and timings). How events are framed on the wire (`framing`):
"sse" (`data:` lines), "sse_named" (an `event:` line named by the event's "type", then `data:`)
or "ndjson" (one JSON object per line).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

WireEvent = dict[str, Any]
# What a part yields: one event, or a group of events sent in one write.
WireItem = WireEvent | list[WireEvent]
Framing = Literal["sse", "sse_named", "ndjson"]


@dataclass(frozen=True)
class FoldRules:
    """How one wire's events add up: which strings join and which lists merge item by item.

    Every other value: dicts merge key by key, lists extend, and a later scalar replaces an earlier
    one (a None never replaces a value).
    """

    concat: frozenset[str] = frozenset()  # string fields sent in pieces (content, arguments, text)
    by_index: frozenset[str] = frozenset()  # lists of dicts that merge by their "index" (choices, tool_calls)


@dataclass
class WireReply:
    """What a protocol's view returns: its events, and how the whole reply is made of them.

    Attributes:
        parts: one event stream per independent reply (several only for TGI's batched `inputs`).
        rules: how the events of one part fold.
        whole: folded parts -> the whole reply's JSON body.
        stream: send parts[0]'s events as they come (SSE) instead of the whole reply.
        done: end the stream with `data: [DONE]` (OpenAI).
        on_close: runs once the reply is sent, failed, or the client left (aborts unfinished generations).
        framing: how streamed events are written ("sse", "sse_named", "ndjson").
        fold: the wire's own fold of one part's events, for typed event streams; default fold_events(rules).
        headers: response headers known before the first byte (streamed and whole replies).
        whole_headers: folded parts -> more headers, for a whole reply only (figures known at its end).
    """

    parts: Sequence[Iterable[WireItem]]
    rules: FoldRules
    whole: Callable[[list[WireEvent]], Any]
    stream: bool = False
    done: bool = False
    on_close: Callable[[], None] | None = field(default=None)
    framing: Framing = "sse"
    fold: Callable[[Iterable[WireEvent]], WireEvent] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    whole_headers: Callable[[list[WireEvent]], Mapping[str, str]] | None = None

    def fold_part(self, part: Iterable[WireItem]) -> WireEvent:
        """One part's events folded: by the wire's own fold, else by its rules."""
        if self.fold is None:
            return fold_events(part, self.rules)
        return self.fold(event for item in part for event in (item if isinstance(item, list) else [item]))


def fold_events(items: Iterable[WireItem], rules: FoldRules) -> WireEvent:
    """The whole of a stream of events (the one fold every protocol's whole reply comes from)."""
    whole: WireEvent = {}
    for item in items:
        for event in item if isinstance(item, list) else [item]:
            _merge(whole, event, rules)
    return whole


def streamed(event: WireEvent) -> WireEvent:
    """The event as it goes on the wire: whole-only ("_") keys removed, at any depth."""
    return {key: _public(value) for key, value in event.items() if not key.startswith("_")}


def _public(value: Any) -> Any:
    if isinstance(value, Mapping):
        return streamed(dict(value))
    if isinstance(value, list):
        return [_public(item) for item in value]
    return value


def _merge(into: WireEvent, event: Mapping[str, Any], rules: FoldRules) -> None:
    for key, value in event.items():
        have = into.get(key)
        if value is None:
            into.setdefault(key, None)
        elif isinstance(value, Mapping):
            merged: WireEvent = have if isinstance(have, dict) else {}
            _merge(merged, value, rules)
            into[key] = merged
        elif isinstance(value, list):
            if key in rules.by_index:
                into[key] = _merge_by_index(have if isinstance(have, list) else [], value, rules)
            else:
                into[key] = [*(have if isinstance(have, list) else []), *value]
        elif isinstance(value, str) and key in rules.concat and isinstance(have, str):
            into[key] = have + value
        else:
            into[key] = value


def _merge_by_index(have: list[Any], items: list[Any], rules: FoldRules) -> list[Any]:
    merged = list(have)
    for item in items:
        index = item.get("index") if isinstance(item, Mapping) else None
        target = next((m for m in merged if isinstance(m, dict) and m.get("index") == index), None)
        if index is None or target is None:
            target = {}
            merged.append(target)
        _merge(target, item, rules)
    return merged
