"""SageMaker stateful sessions pinned to llama.cpp slots, so a session's next turn reuses the KV its slot holds.

llama.cpp keeps each slot's last prompt in that slot's KV cache and, with cache_prompt, evaluates only
what a new prompt adds to it. A session's turns all go to its slot (`id_slot`), so turn N+1 skips the
prefill of turns 1..N. A new session takes a slot no open session holds; when every slot is held, the
least recently used session gives its slot up (its next turn then prefills from scratch, as without a
session). Closing a session unpins its slot for any request. A request outside any session may still
take an idle pinned slot (llama.cpp picks slots itself): the session's next turn then prefills in full.
"""

from __future__ import annotations

from collections import OrderedDict


class SessionSlots:
    """session id -> slot, least recently used first."""

    def __init__(self, n_slots: int) -> None:
        self.n_slots = max(1, n_slots)
        self._slots: OrderedDict[str, int] = OrderedDict()

    def slot_for(self, session: str) -> int:
        """The session's slot (assigned on its first turn), marked as just used."""
        slot = self._slots.get(session)
        if slot is None:
            taken = set(self._slots.values())
            free = [s for s in range(self.n_slots) if s not in taken]
            if free:
                slot = free[0]
            else:
                _, slot = self._slots.popitem(last=False)  # the least recently used session yields its slot
            self._slots[session] = slot
        self._slots.move_to_end(session)
        return slot

    def release(self, session: str) -> bool:
        """Unpin a closed session's slot; True when it had one."""
        return self._slots.pop(session, None) is not None

    def __len__(self) -> int:
        return len(self._slots)
