"""One response's typed event stream, written in order: numbered events, output items opened and closed, the response.

The writer holds the response object and its output items; each event carries a copy of what it
describes, so the items in the stream (their ids, text and arguments) are the very items of the final
response. Every event has a `sequence_number`; the stream starts with response.created and
response.in_progress and ends with response.completed, response.incomplete or response.failed
(CLIENTS.md: Codex and the openai client need all of this).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from berth_server.errors import BerthError
from berth_server.protocols.reply import WireEvent
from berth_server.protocols.responses.fold import ERROR_KEY
from berth_server.protocols.responses.items import new_id

ItemKind = Literal["reasoning", "message", "function_call"]
Status = Literal["completed", "incomplete", "failed"]
TERMINAL_EVENT = {"completed": "response.completed", "incomplete": "response.incomplete",
                  "failed": "response.failed"}


def failure_code(error: BerthError) -> str:
    """OpenAI's error.code of a failed response."""
    if isinstance(error.code, str):
        return error.code
    if error.status == 429:
        return "rate_limit_exceeded"
    return "server_error" if error.status >= 500 else "invalid_prompt"


class ResponseWriter:
    """Writes the events of one response (see the module doc)."""

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        self.sequence = 0
        self.item: dict[str, Any] | None = None  # the output item being written

    def _event(self, kind: str, **fields: Any) -> WireEvent:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def _where(self) -> dict[str, Any]:
        assert self.item is not None
        return {"item_id": self.item["id"], "output_index": len(self.response["output"]) - 1}

    def start(self) -> list[WireEvent]:
        """response.created, then response.in_progress."""
        return [self._event("response.created", response=copy.deepcopy(self.response)),
                self._event("response.in_progress", response=copy.deepcopy(self.response))]

    def _open(self, kind: ItemKind, item: dict[str, Any], part: dict[str, Any] | None) -> list[WireEvent]:
        events = self.close_item()
        self.item = {"id": new_id({"reasoning": "rs", "message": "msg", "function_call": "fc"}[kind]), **item}
        self.response["output"].append(self.item)
        added = copy.deepcopy(self.item)
        if part is not None:
            added["content"] = []
        events.append(self._event("response.output_item.added", output_index=len(self.response["output"]) - 1,
                                  item={**added, "status": "in_progress"}))
        if part is not None:
            events.append(self._event("response.content_part.added", **self._where(), content_index=0,
                                      part=copy.deepcopy(part)))
        return events

    def reasoning(self, text: str) -> list[WireEvent]:
        """Reasoning text: into the open reasoning item, or a new one."""
        events: list[WireEvent] = []
        if self.item is None or self.item["type"] != "reasoning":
            part = {"type": "reasoning_text", "text": ""}
            events = self._open("reasoning", {"type": "reasoning", "summary": [], "content": [part],
                                              "encrypted_content": None}, part)
        self.item["content"][0]["text"] += text  # type: ignore[index]
        return [*events, self._event("response.reasoning_text.delta", **self._where(), content_index=0, delta=text)]

    def text(self, text: str, logprobs: list[dict[str, Any]]) -> list[WireEvent]:
        """Output text: into the open message, or a new one."""
        events: list[WireEvent] = []
        if self.item is None or self.item["type"] != "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events = self._open("message", {"type": "message", "role": "assistant", "content": [part]}, part)
        content = self.item["content"][0]  # type: ignore[index]
        content["text"] += text
        content["logprobs"] += logprobs
        return [*events, self._event("response.output_text.delta", **self._where(), content_index=0, delta=text,
                                     logprobs=copy.deepcopy(logprobs))]

    def call(self, call_id: str, name: str) -> list[WireEvent]:
        """A function call begins."""
        return self._open("function_call", {"type": "function_call", "call_id": call_id, "name": name,
                                            "arguments": ""}, None)

    def arguments(self, piece: str) -> list[WireEvent]:
        """The next piece of the open call's arguments."""
        assert self.item is not None and self.item["type"] == "function_call"
        self.item["arguments"] += piece
        return [self._event("response.function_call_arguments.delta", **self._where(), delta=piece)]

    def close_item(self, status: str = "completed") -> list[WireEvent]:
        """Close the open item (its .done events, then output_item.done with the whole item)."""
        item = self.item
        if item is None:
            return []
        item["status"] = status
        where = self._where()
        events = []
        if item["type"] == "function_call":
            events.append(self._event("response.function_call_arguments.done", **where, name=item["name"],
                                      arguments=item["arguments"]))
        else:
            part = item["content"][0]
            if item["type"] == "message":
                events.append(self._event("response.output_text.done", **where, content_index=0, text=part["text"],
                                          logprobs=copy.deepcopy(part["logprobs"])))
            else:
                events.append(self._event("response.reasoning_text.done", **where, content_index=0,
                                          text=part["text"]))
            events.append(self._event("response.content_part.done", **where, content_index=0,
                                      part=copy.deepcopy(part)))
        events.append(self._event("response.output_item.done", output_index=where["output_index"],
                                  item=copy.deepcopy(item)))
        self.item = None
        return events

    def finish(self, status: Status, usage: dict[str, Any] | None, completed_at: int,
               error: BerthError | None = None) -> list[WireEvent]:
        """Close the open item and end the stream with the whole response (response.failed holds `error`)."""
        events = self.close_item("completed" if status == "completed" else "incomplete")
        self.response.update(status=status, usage=usage)
        if status == "completed":
            self.response["completed_at"] = completed_at
        if status == "incomplete":
            self.response["incomplete_details"] = {"reason": "max_output_tokens"}
        terminal = self._event(TERMINAL_EVENT[status], response=copy.deepcopy(self.response))
        if error is not None:
            self.response["error"] = {"code": failure_code(error), "message": error.message}
            terminal["response"]["error"] = dict(self.response["error"])
            terminal[ERROR_KEY] = error
        return [*events, terminal]
