"""Which replica of a model serves a request (issue 22): the ready one with the fewest requests in flight.

A request with a preference key (its adapter, or a SageMaker session id) goes back to the replica that
served that key last, as long as that replica is ready and not busier than the least busy one by more
than `slack` requests: the adapter is resident there, the session's state lives there. In-flight counts
are this worker's (each gunicorn worker routes on its own; with one worker they are exact).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from berth_server.errors import NotReady


def preference_key(request: Any) -> str | None:
    """The key a request prefers a replica by: its session (SageMaker sessions), else its adapter; None if neither."""
    session = getattr(request, "session_id", None)
    if session:
        return f"session:{session}"
    adapter = getattr(request, "adapter", None)
    return f"adapter:{adapter}" if adapter else None


class ReplicaRouter:
    """Least-in-flight choice among ready replicas, with sticky preference keys (bounded LRU)."""

    def __init__(self, slack: int = 4, max_keys: int = 4096) -> None:
        self.slack = slack
        self.max_keys = max_keys
        self._affinity: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._turn: dict[str, int] = {}

    def pick(self, uid: str, replicas: Sequence[Mapping[str, Any]], in_flight: Callable[[int], int],
             prefer: str | None = None) -> Mapping[str, Any]:
        """The replica (as listed in the model table) to send the next request of `uid` to."""
        ready = [r for r in replicas if r.get("state") == "ready"]
        if not ready:
            raise NotReady(f"model '{uid}' has no ready replica")
        loads = {int(r["index"]): in_flight(int(r["index"])) for r in ready}
        least = min(loads.values())
        if prefer is not None:
            index = self._affinity.get((uid, prefer))
            if index in loads and loads[index] <= least + self.slack:
                self._affinity.move_to_end((uid, prefer))
                return next(r for r in ready if int(r["index"]) == index)
        # Among the least busy, take turns: sequential requests spread over the replicas too.
        candidates = [r for r in ready if loads[int(r["index"])] == least]
        turn = self._turn.get(uid, 0)
        self._turn[uid] = turn + 1
        chosen = candidates[turn % len(candidates)]
        if prefer is not None:
            self._remember(uid, prefer, int(chosen["index"]))
        return chosen

    def _remember(self, uid: str, prefer: str, index: int) -> None:
        self._affinity[(uid, prefer)] = index
        self._affinity.move_to_end((uid, prefer))
        while len(self._affinity) > self.max_keys:
            self._affinity.popitem(last=False)

    def forget(self, uid: str) -> None:
        """Drop what is known about a terminated model."""
        self._turn.pop(uid, None)
        for key in [k for k in self._affinity if k[0] == uid]:
            del self._affinity[key]
