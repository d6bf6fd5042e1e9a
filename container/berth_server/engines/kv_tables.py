"""Block tables: what each running sequence holds in the KV pool, and how it grows, shrinks and shares.

A sequence (a scheduler Slot) carries `tokens` (prompt, then generated), `blocks` (its block
table), `computed` (tokens whose keys and values are in those blocks) and `hashes` (the prefix
hashes of its full blocks). This module keeps those fields consistent with the pool.
"""

from __future__ import annotations

from typing import Any, Protocol

from berth_server.engines.kv_pool import KVPool


class Sequence(Protocol):
    """The fields of a Slot this module reads and writes."""

    tokens: list[int]
    blocks: list[int]
    computed: int
    hashes: list[bytes]
    salt: str


class BlockTables:
    """The pool plus the per-sequence operations the scheduler needs."""

    def __init__(self, pool: KVPool, prefix_caching: bool = True):
        self.pool = pool
        self.prefix_caching = prefix_caching

    @property
    def block_size(self) -> int:
        return self.pool.block_size

    @property
    def capacity(self) -> int:
        """Tokens one sequence could hold if it had the whole pool (less the null block)."""
        return (self.pool.num_blocks - 1) * self.pool.block_size

    def blocks_for(self, tokens: int) -> int:
        """Blocks that hold this many tokens."""
        return -(-tokens // self.pool.block_size)

    def start(self, seq: Sequence, reuse: bool) -> None:
        """Give a sequence that holds nothing the cached blocks of its longest known prefix (when reuse).

        At least one token is left to compute: its logits give the next token."""
        seq.blocks, seq.computed, seq.hashes = [], 0, []
        if not (reuse and self.prefix_caching):
            return
        size = self.pool.block_size
        usable = (len(seq.tokens) - 1) // size  # full blocks that leave a token to compute
        hashes = self.pool.chain(seq.tokens[:usable * size], seq.salt)
        seq.blocks = self.pool.match(hashes, len(seq.tokens))
        seq.hashes = hashes[:len(seq.blocks)]
        seq.computed = len(seq.blocks) * size

    def reserve(self, seq: Sequence, tokens: int) -> bool:
        """Grow the block table to hold `tokens` tokens; False when the pool has no block left."""
        while len(seq.blocks) * self.pool.block_size < tokens:
            block = self.pool.allocate()
            if block is None:
                return False
            seq.blocks.append(block)
        return True

    def commit(self, seq: Sequence, fed: int) -> None:
        """Count `fed` more tokens as computed; register blocks that just became full for reuse."""
        seq.computed += fed
        if not self.prefix_caching:
            return
        size = self.pool.block_size
        full = seq.computed // size
        parent = seq.hashes[-1] if seq.hashes else self.pool.root(seq.salt)
        for index in range(len(seq.hashes), full):
            parent = self.pool.next_hash(parent, seq.tokens[index * size:(index + 1) * size])
            seq.hashes.append(parent)
            self.pool.register(seq.blocks[index], parent)

    def free(self, seq: Sequence) -> None:
        """Let go of every block (full ones stay cached for reuse until the room is needed)."""
        self.pool.release(seq.blocks)
        seq.blocks, seq.computed, seq.hashes = [], 0, []

    def pin(self, key: str, tokens: list[int], salt: str = "") -> int:
        """Hold the cached blocks of these tokens' longest cached prefix under key (a session's earlier
        turns), replacing what key held, until unpin(key); returns the tokens held."""
        blocks = self.pool.find(self.pool.chain(tokens, salt))
        self.pool.pin(key, blocks)
        return len(blocks) * self.pool.block_size

    def unpin(self, key: str) -> None:
        """Let go of what key holds."""
        self.pool.unpin(key)

    def counts(self) -> dict[str, Any]:
        """Prefix-cache counters (tokens) and the pool's occupancy."""
        pool = self.pool
        return {"prefix_queries": pool.queries, "prefix_hits": pool.hits, "blocks": pool.num_blocks,
                "blocks_available": pool.available(), "block_size": pool.block_size, "bytes": pool.nbytes}


def tables_for(model: Any, device: Any, num_blocks: int, block_size: int, prefix_caching: bool = True) -> BlockTables:
    """A pool of num_blocks blocks shaped for this model's layers, with its block tables.

    A model on "sdpa" attention is switched to the grouped form that reads the pool's step views
    without copies (kv_attention.py); any other attention reads them as they are."""
    from berth_server.engines.kv_attention import use_grouped_sdpa
    from berth_server.engines.kv_forward import probe_shapes

    use_grouped_sdpa(model)
    pool = KVPool(probe_shapes(model, device), num_blocks, block_size, model.dtype, device)
    return BlockTables(pool, prefix_caching)
