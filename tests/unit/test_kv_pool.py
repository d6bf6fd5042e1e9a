"""The KV block pool's bookkeeping: allocation, reference counts, prefix reuse, LRU eviction and pins."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from berth_server.engines.kv_pool import KVPool, LayerShape, block_bytes, pool_blocks
from berth_server.engines.kv_tables import BlockTables

SHAPES = [LayerShape(key=(2, 8), value=(2, 4))]  # MLA-like: values narrower than keys


@dataclass
class Seq:
    tokens: list[int]
    blocks: list[int] = field(default_factory=list)
    computed: int = 0
    hashes: list[bytes] = field(default_factory=list)
    salt: str = ""


def _tables(blocks: int = 5) -> BlockTables:
    return BlockTables(KVPool(SHAPES, blocks, 4, torch.float32, torch.device("cpu")))


def _run(tables: BlockTables, seq: Seq) -> None:
    """Admit a sequence and compute all its tokens, as the scheduler would."""
    tables.start(seq, reuse=True)
    assert tables.reserve(seq, len(seq.tokens))
    tables.commit(seq, len(seq.tokens) - seq.computed)


def test_the_pool_is_allocated_once_at_its_size() -> None:
    pool = KVPool(SHAPES, 5, 4, torch.float32, torch.device("cpu"))
    assert pool.nbytes == block_bytes(SHAPES, 4, torch.float32) * 5 == 5 * 4 * (16 + 8) * 4
    assert pool.available() == 4  # block 0 is the null block
    assert pool_blocks(100, None, None, torch.device("cpu"), most_useful=7) == 7
    assert pool_blocks(100, 450, None, torch.device("cpu"), most_useful=1000) == 4
    assert pool_blocks(100, None, 1e-12, torch.device("cpu"), most_useful=1000) == 2  # never below two


def test_a_shared_prefix_is_reused_and_counted() -> None:
    tables = _tables()
    first = Seq(list(range(10)))  # two full blocks and a partial one
    _run(tables, first)
    second = Seq(list(range(8)) + [99, 98, 97])
    tables.start(second, reuse=True)
    assert second.blocks == first.blocks[:2] and second.computed == 8
    assert (tables.pool.queries, tables.pool.hits) == (10 + 11, 8)
    other_adapter = Seq(list(range(10)), salt="adapter-a")  # its keys differ: nothing shared
    tables.start(other_adapter, reuse=True)
    assert other_adapter.blocks == []


def test_a_fully_cached_prompt_still_computes_its_last_token() -> None:
    tables = _tables()
    _run(tables, Seq(list(range(8))))
    again = Seq(list(range(8)))
    tables.start(again, reuse=True)
    assert again.computed == 4 and again.tokens[again.computed:] == [4, 5, 6, 7]


def test_released_blocks_stay_cached_until_the_room_is_needed() -> None:
    tables = _tables()
    first = Seq(list(range(8)))
    _run(tables, first)
    tables.free(first)
    assert tables.pool.available() == 4  # cached but unheld blocks count as available
    big = Seq(list(range(100, 116)))  # needs every block: the cached ones are evicted, oldest first
    tables.start(big, reuse=True)
    assert tables.reserve(big, 16)
    assert not tables.reserve(big, 17)  # the pool is full: the scheduler preempts
    later = Seq(list(range(8)))
    tables.start(later, reuse=True)
    assert later.blocks == []


def test_pinned_blocks_survive_eviction_until_unpinned() -> None:
    tables = _tables()
    conversation = Seq(list(range(9)))
    _run(tables, conversation)
    tables.free(conversation)
    assert tables.pin("session-1", list(range(9))) == 8
    assert tables.pool.available() == 2  # the two pinned blocks are held
    hog = Seq(list(range(100, 108)))
    tables.start(hog, reuse=True)
    assert tables.reserve(hog, 8) and not tables.reserve(hog, 9)
    tables.free(hog)
    turn = Seq(list(range(9)) + [50])
    tables.start(turn, reuse=True)
    assert turn.computed == 8  # the pinned turn is still there
    tables.free(turn)
    tables.unpin("session-1")
    assert tables.pool.available() == 4
    tables.unpin("session-1")  # unknown keys are a no-op


@pytest.mark.parametrize("fraction", ["0", "1.5"])
def test_a_bad_pool_fraction_fails_at_start(fraction: str) -> None:
    from berth_server.engines.engine_settings import TransformersSettings, check_engine_settings
    from berth_server.settings_values import SettingsError

    with pytest.raises(SettingsError):
        check_engine_settings({"BERTH_KV_CACHE_FRACTION": fraction})
    assert TransformersSettings.from_env({"BERTH_KV_CACHE_FRACTION": "0.25"}).kv_cache_fraction == 0.25
