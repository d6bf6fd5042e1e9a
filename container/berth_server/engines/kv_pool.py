"""The transformers engine's KV cache: fixed-size blocks in one pool, allocated once, shared by prefix.

Every layer's keys and values live in flat tensors of `num_blocks * block_size` token slots
([kv_heads, slots, head_dim]); a sequence holds a block table (kv_block_table.py reads and writes
through it). Block 0 is the null block: it stays zero and pads the rows of a step's gathered view.

Prefix caching: a block that is full and computed is registered under a hash chained over the
tokens of every block before it (and a salt: the LoRA adapter, whose keys differ), so a later
sequence with the same prefix reuses it. Blocks are reference counted; a block nobody holds stays
cached in an LRU and is evicted only when a fresh block is wanted and the free list is empty.
`pin(key, blocks)` holds blocks for a caller (a session) until `unpin(key)`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch

NULL_BLOCK = 0


@dataclass(frozen=True)
class LayerShape:
    """What one layer caches per token: key and value (heads, dim); MLA's value dim differs from its key's."""

    key: tuple[int, int]
    value: tuple[int, int]


def block_bytes(shapes: Sequence[LayerShape], block_size: int, dtype: torch.dtype) -> int:
    """Bytes one block takes over all layers."""
    per_token = sum(s.key[0] * s.key[1] + s.value[0] * s.value[1] for s in shapes)
    return per_token * block_size * torch.empty((), dtype=dtype).element_size()


class KVPool:
    """The blocks, their reference counts, the prefix index and its LRU."""

    def __init__(self, shapes: Sequence[LayerShape], num_blocks: int, block_size: int,
                 dtype: torch.dtype, device: torch.device):
        if num_blocks < 2:
            raise ValueError("the KV pool needs at least two blocks (one is the null block)")
        self.block_size = block_size
        self.num_blocks = num_blocks
        slots = num_blocks * block_size
        # Head-major ([heads, slots, dim]): a step's gather is then [heads, rows * width, dim], which the
        # attention reads as one batch of [width, dim] matrices per (head, row) without another copy.
        self.keys = [torch.zeros((s.key[0], slots, s.key[1]), dtype=dtype, device=device) for s in shapes]
        self.values = [torch.zeros((s.value[0], slots, s.value[1]), dtype=dtype, device=device) for s in shapes]
        self._free: deque[int] = deque(range(1, num_blocks))
        self._refs = [0] * num_blocks
        self._by_hash: dict[bytes, int] = {}
        self._hash_of: dict[int, bytes] = {}
        self._idle: OrderedDict[int, None] = OrderedDict()  # cached blocks nobody holds, oldest first
        self._pins: dict[str, list[int]] = {}
        self.queries = 0  # prompt tokens looked up in the prefix cache
        self.hits = 0  # of those, tokens found

    @property
    def nbytes(self) -> int:
        """Bytes the pool holds (fixed from the start)."""
        return sum(t.numel() * t.element_size() for t in [*self.keys, *self.values])

    def available(self) -> int:
        """Blocks a caller could take now: free ones plus cached ones nobody holds."""
        return len(self._free) + len(self._idle)

    def allocate(self) -> int | None:
        """A block for one holder, or None when every block is held."""
        if self._free:
            block = self._free.popleft()
        elif self._idle:
            block, _ = self._idle.popitem(last=False)  # the least recently used cached block
            del self._by_hash[self._hash_of.pop(block)]
        else:
            return None
        self._refs[block] = 1
        return block

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one hold on each block; an unheld cached block waits in the LRU, others are freed."""
        for block in blocks:
            self._refs[block] -= 1
            if self._refs[block] == 0:
                if block in self._hash_of:
                    self._idle[block] = None
                else:
                    self._free.append(block)

    def _hold(self, block: int) -> None:
        self._refs[block] += 1
        self._idle.pop(block, None)

    # ---- prefix cache --------------------------------------------------------------------------

    def chain(self, tokens: Sequence[int], salt: str = "") -> list[bytes]:
        """The hash of every full block of tokens, each chained over the ones before it."""
        out: list[bytes] = []
        parent = self.root(salt)
        size = self.block_size
        for start in range(0, len(tokens) - size + 1, size):
            parent = self.next_hash(parent, tokens[start:start + size])
            out.append(parent)
        return out

    @staticmethod
    def root(salt: str) -> bytes:
        """The hash a chain starts from: the salt (what else the keys depend on, e.g. the adapter)."""
        return hashlib.blake2b(salt.encode(), digest_size=16).digest()

    @staticmethod
    def next_hash(parent: bytes, block_tokens: Sequence[int]) -> bytes:
        """The hash of a block given its tokens and the hash of the block before it."""
        return hashlib.blake2b(parent + ",".join(map(str, block_tokens)).encode(), digest_size=16).digest()

    def find(self, hashes: Sequence[bytes]) -> list[int]:
        """The cached blocks of the longest known prefix of these block hashes (nothing held)."""
        found: list[int] = []
        for h in hashes:
            block = self._by_hash.get(h)
            if block is None:
                break
            found.append(block)
        return found

    def match(self, hashes: Sequence[bytes], tokens: int) -> list[int]:
        """Hold and return the cached blocks of the longest known prefix (counting queries and hits)."""
        found = self.find(hashes)
        for block in found:
            self._hold(block)
        self.queries += tokens
        self.hits += len(found) * self.block_size
        return found

    def register(self, block: int, block_hash: bytes) -> None:
        """Make a full, computed block findable by its hash (a block already known under it stays)."""
        if block_hash not in self._by_hash and block not in self._hash_of:
            self._by_hash[block_hash] = block
            self._hash_of[block] = block_hash

    def pin(self, key: str, blocks: Sequence[int]) -> None:
        """Hold these blocks under key (replacing what key held) until unpin(key)."""
        for block in blocks:
            self._hold(block)
        self.unpin(key)
        self._pins[key] = list(blocks)

    def pinned_keys(self) -> list[str]:
        """The keys holding blocks now."""
        return list(self._pins)

    def unpin(self, key: str) -> None:
        """Let go of the blocks pinned under key (they stay cached while nobody needs the room)."""
        self.release(self._pins.pop(key, []))


DEFAULT_POOL_BYTES = 1 << 30  # 1 GiB (as vLLM's and llama.cpp's CPU defaults): ~23k tokens of SmolLM2-135M in float32


def pool_blocks(per_block: int, wanted_bytes: int | None, fraction: float | None, device: torch.device,
                most_useful: int) -> int:
    """How many blocks the pool gets: wanted_bytes (BERTH_KV_CACHE_GB), else that fraction of the memory
    free now (BERTH_KV_CACHE_FRACTION), else DEFAULT_POOL_BYTES; never more than `most_useful` (what could ever be held at once)."""
    if wanted_bytes is None and fraction is not None:
        wanted_bytes = int(_free_bytes(device) * fraction)
    budget = wanted_bytes if wanted_bytes is not None else DEFAULT_POOL_BYTES
    return max(2, min(budget // max(1, per_block), most_useful))


def _free_bytes(device: torch.device) -> int:
    """Memory free for the pool: the GPU's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return DEFAULT_POOL_BYTES * 4  # unknown: a fraction of 4 GiB
