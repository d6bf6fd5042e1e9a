"""The run-time adapter store: what a restarted model process, or a restarted server, registers again."""

from __future__ import annotations

from pathlib import Path

import pytest
from berth_server.adapter_specs import AdapterSource
from berth_server.errors import InsufficientStorage
from berth_server.model_process.adapter_store import AdapterStore


def _store(tmp_path: Path, run: str = "run") -> AdapterStore:
    return AdapterStore.for_model("demo://smollm2", tmp_path / run, tmp_path / "home")


def test_a_restart_gets_every_adapter_and_a_new_run_only_the_persisted(tmp_path: Path) -> None:
    store = _store(tmp_path)
    alpha = AdapterSource(name="alpha", src="/a")
    bravo = AdapterSource(name="bravo", src="/b", persist=True)
    store.record(alpha)
    store.record(bravo)
    assert _store(tmp_path).load() == [bravo, alpha]  # the same run: a crashed model process comes back
    assert _store(tmp_path, run="next-run").load() == [bravo]  # a new server run: the persisted only
    assert store.persist_file.parent == tmp_path / "home" / "adapters"
    assert store.persist_file.name == "demo%3A%2F%2Fsmollm2.json"  # one file name, whatever the uid holds


def test_re_adding_without_persist_and_removing_forget_it(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.record(AdapterSource(name="bravo", src="/b", persist=True))
    store.record(AdapterSource(name="bravo", src="/b2"))
    assert _store(tmp_path, run="next-run").load() == []
    assert _store(tmp_path).load() == [AdapterSource(name="bravo", src="/b2")]
    store.forget("bravo")
    assert _store(tmp_path).load() == []
    store.forget("never-added")  # nothing to drop: no error, no file written
    assert not (tmp_path / "home" / "adapters").exists() or store.persist_file.read_bytes() == b"[]"


def test_an_unreadable_list_is_ignored_not_fatal(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.run_file.parent.mkdir(parents=True)
    store.run_file.write_text("{not json")
    assert store.load() == []
    store.record(AdapterSource(name="alpha", src="/a"))  # and it is rewritten whole
    assert store.load() == [AdapterSource(name="alpha", src="/a")]


def test_a_full_disk_is_a_507_and_leaves_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    store = _store(tmp_path)
    store.record(AdapterSource(name="alpha", src="/a"))
    before = store.run_file.read_bytes()

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(InsufficientStorage, match="No space left"):
        store.record(AdapterSource(name="bravo", src="/b"))
    assert store.run_file.read_bytes() == before
    assert [p.name for p in store.run_file.parent.iterdir()] == [store.run_file.name]  # no temp file left
