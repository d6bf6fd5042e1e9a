"""LoRA adapters on the running model, each row of a batch with its own: a bank of device slots.

How rows with different adapters share one forward pass: every adapted Linear keeps the A and B
matrices of all resident adapters side by side (A_cat [in, S*R], B_cat [S*R, out]; S slots of the
max rank R, smaller ranks zero-padded). Before a forward, the scheduler sets one scale vector per
row, [B, S*R], holding the row's adapter scaling on its own slot's R columns and zero elsewhere.
Each adapted layer then adds ((x @ A_cat) * scale) @ B_cat to the base output: two matmuls per
layer whatever the mix of adapters (fewer where projections share an input, and only over the
rows that have an adapter: lora_layers.py), so nothing leaks between rows. Slots are an LRU with a bound (max_loras); pinned adapters are never evicted;
registered adapters beyond the bound are kept on the host (up to max_cpu_loras) or re-read.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from berth_server.adapter_specs import check_adapter_name
from berth_server.engines.lora_layers import AdaptedRows, RowLoraLinear, adapt
from berth_server.engines.lora_weights import AdapterWeights, linear_shapes, read_adapter
from berth_server.errors import Conflict, InvalidRequest, NotFound, Overloaded


@dataclass
class _Registered:
    """A registered adapter: where it lives and how it is held."""

    name: str
    src: str
    folder: Path
    rank: int
    pinned: bool = False


class LoraBank:
    """Registered adapters, their device slots (LRU, bounded, pinnable) and the rows' scale vectors."""

    def __init__(self, model: Any, max_loras: int, max_rank: int, max_cpu_loras: int | None = None):
        self.model = model
        self.slots = max(1, max_loras)
        self.max_rank = max(1, max_rank)
        self.max_cpu_loras = max(self.slots, max_cpu_loras or 0)
        self.row_scale: torch.Tensor | None = None  # [adapted rows, 1, slots*max_rank] for the next forward
        self.adapted_rows: AdaptedRows = None  # which rows those are (lora_layers.AdaptedRows)
        self._generation = 0  # registrations so far: an adapter's salt for cached prefixes
        self._salt: dict[str, str] = {}
        self._shapes = linear_shapes(model)
        self._dtype = next(model.parameters()).dtype
        self._device = next(model.parameters()).device
        self._layers: dict[str, RowLoraLinear] = {}
        self._lock = threading.RLock()
        self._registered: dict[str, _Registered] = {}
        self._host: OrderedDict[str, AdapterWeights] = OrderedDict()  # LRU of host copies
        self._slot_of: OrderedDict[str, int] = OrderedDict()  # resident adapters, least recent first
        self._scaling = [0.0] * self.slots
        self._users = [0] * self.slots  # running rows per slot

    # ---- registration (any thread) -------------------------------------------------------------

    def register(self, name: str, src: str, folder: Path, *, pin: bool = False) -> dict[str, Any]:
        """Read and check an adapter, keep it on the host, and place it on the device when pinned."""
        check_adapter_name(name)
        weights = read_adapter(name, folder, self.max_rank, self._shapes, self._dtype)
        with self._lock:
            if name in self._registered:
                raise Conflict(f"adapter '{name}' is already registered; remove it first")
            if pin and sum(r.pinned for r in self._registered.values()) >= self.slots:
                raise InvalidRequest(f"adapter '{name}': all {self.slots} LoRA slots are pinned", param="pin")
            self._registered[name] = _Registered(name, src, folder, weights.config.rank, pin)
            self._generation += 1
            self._salt[name] = f"{name}#{self._generation}"
            self._keep_on_host(weights)
            if pin and self.acquire(name, claim=False) is None:
                del self._registered[name]
                raise InvalidRequest(f"adapter '{name}': no LoRA slot is free to pin it", param="pin")
            return self._describe(self._registered[name])

    def remove(self, name: str) -> None:
        """Forget an adapter; rows already running with it finish with it, new requests get a 4xx."""
        with self._lock:
            if self._registered.pop(name, None) is None:
                raise NotFound(f"adapter '{name}' not found")
            self._host.pop(name, None)
            slot = self._slot_of.get(name)
            if slot is not None and self._users[slot] == 0:
                with torch.inference_mode():
                    self._free(name)

    def describe(self) -> list[dict[str, Any]]:
        """Every registered adapter, for GET /adapters."""
        with self._lock:
            return [self._describe(r) for r in self._registered.values()]

    def salt(self, name: str) -> str:
        """What cached keys computed under this adapter depend on: its name and registration (a removed and
        re-registered adapter never reuses the old one's cached prefixes)."""
        return self._salt.get(name, name)

    def check(self, name: str) -> None:
        """Raise NotFound unless the adapter is registered."""
        if name not in self._registered:
            raise NotFound(f"adapter '{name}' not found", param="adapter")

    def _describe(self, reg: _Registered) -> dict[str, Any]:
        return {"name": reg.name, "src": reg.src, "rank": reg.rank, "pinned": reg.pinned,
                "loaded": reg.name in self._slot_of}

    def _keep_on_host(self, weights: AdapterWeights) -> None:
        self._host[weights.name] = weights
        self._host.move_to_end(weights.name)
        while len(self._host) > self.max_cpu_loras:
            self._host.popitem(last=False)

    # ---- slots (the batching thread) -----------------------------------------------------------

    def acquire(self, name: str, claim: bool = True) -> int | None:
        """The adapter's slot, loading it (evicting the least recent idle one) if needed.

        None means every slot is busy or pinned: the request waits. claim counts one running row.
        """
        with self._lock, torch.inference_mode():  # the batching thread's tensors are inference tensors
            reg = self._registered.get(name)
            if reg is None:
                raise NotFound(f"adapter '{name}' not found", param="adapter")
            slot = self._slot_of.get(name)
            if slot is None:
                slot = self._free_slot()
                if slot is None:
                    return None
                self._load(reg, slot)
            self._slot_of.move_to_end(name)
            if claim:
                self._users[slot] += 1
            return slot

    def release(self, slot: int) -> None:
        """One row using the slot has finished; free the slot if its adapter was removed meanwhile."""
        with self._lock, torch.inference_mode():
            self._users[slot] -= 1
            name = next((n for n, s in self._slot_of.items() if s == slot), None)
            if name is not None and name not in self._registered and self._users[slot] == 0:
                self._free(name)

    def place(self, name: str) -> int | None:
        """A new request's slot for the adapter (claimed): None while every slot is busy with running rows
        (one will free up); Overloaded when none ever will (every slot holds a pinned adapter)."""
        with self._lock:
            slot = self.acquire(name)
            if slot is None and not any(self._users):
                raise Overloaded(f"adapter '{name}' cannot be loaded: every LoRA slot holds a pinned adapter")
            return slot

    def set_rows(self, slots: list[int | None]) -> None:
        """The scale vectors of the rows of the next forward that have an adapter (None: base model),
        shaped [adapted rows, 1, S*R], and which rows those are: None when every row has one, a slice
        when they lead the batch (as the scheduler orders them), else their indices."""
        adapted = [row for row, slot in enumerate(slots) if slot is not None]
        if not adapted:
            self.row_scale = self.adapted_rows = None
            return
        scale = torch.zeros((len(adapted), 1, self.slots * self.max_rank), dtype=self._dtype)
        for i, row in enumerate(adapted):
            slot = slots[row]
            assert slot is not None
            scale[i, 0, slot * self.max_rank:(slot + 1) * self.max_rank] = self._scaling[slot]
        self.row_scale = scale.to(self._device)
        if len(adapted) == len(slots):
            self.adapted_rows = None
        elif adapted[-1] == len(adapted) - 1:
            self.adapted_rows = slice(0, len(adapted))
        else:
            self.adapted_rows = torch.tensor(adapted, dtype=torch.long, device=self._device)

    def _free_slot(self) -> int | None:
        used = set(self._slot_of.values())
        for slot in range(self.slots):
            if slot not in used:
                return slot
        for name, slot in self._slot_of.items():  # least recently used first
            reg = self._registered.get(name)
            if self._users[slot] == 0 and (reg is None or not reg.pinned):
                self._free(name)
                return slot
        return None

    def _free(self, name: str) -> None:
        slot = self._slot_of.pop(name)
        self._scaling[slot] = 0.0
        cols = slice(slot * self.max_rank, (slot + 1) * self.max_rank)
        for layer in self._layers.values():
            layer.a_cat[:, cols] = 0
            layer.b_cat[cols, :] = 0

    def _load(self, reg: _Registered, slot: int) -> None:
        weights = self._host.get(reg.name)
        if weights is None:  # dropped from the host LRU: read it again
            weights = read_adapter(reg.name, reg.folder, self.max_rank, self._shapes, self._dtype)
            self._keep_on_host(weights)
        cols = slice(slot * self.max_rank, slot * self.max_rank + weights.config.rank)
        for module, (a, b) in weights.pairs.items():
            layer = self._layer(module)
            layer.a_cat[:, cols] = a.t().to(layer.a_cat.device)
            layer.b_cat[cols, :] = b.t().to(layer.b_cat.device)
        self._scaling[slot] = weights.config.scaling
        self._slot_of[reg.name] = slot

    def _layer(self, module: str) -> RowLoraLinear:
        """The module's RowLoraLinear, swapping it (and its siblings sharing an input) into the model on first use."""
        layer = self._layers.get(module)
        if layer is None:
            self._layers.update(adapt(self.model, module, self, self.slots * self.max_rank))
            layer = self._layers[module]
        return layer
