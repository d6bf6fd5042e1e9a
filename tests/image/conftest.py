"""Fixtures for the image's own tests: skipped unless `make test-image` names an image (BERTH_TEST_IMAGE)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.image import container
from tests.integration.conftest import MODEL_CACHE, free_port


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Without an image to test, every test here is skipped with the reason."""
    if container.IMAGE:
        return
    skip = pytest.mark.skip(reason="needs the built image: `make test-image` (BERTH_TEST_IMAGE) runs these")
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The integration suite's tiny Llama (same cache), to mount at /opt/ml/model."""
    from berth_server.demo_model import RECIPES, build

    return build(RECIPES["tiny"], MODEL_CACHE / "tiny")


@pytest.fixture
def start_container() -> Iterator[Callable[..., container.Container]]:
    """Factory: container.run(...) on a free port; every container is removed after the test."""
    started: list[container.Container] = []

    def start(port: int | None = None, **options: object) -> container.Container:
        running = container.run(port or free_port(), **options)  # type: ignore[arg-type]
        started.append(running)
        return running

    yield start
    for running in started:
        running.remove()
