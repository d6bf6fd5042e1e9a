"""Every catalog architecture, on every engine: Berth's greedy tokens equal transformers' generate, or the
engine refuses the architecture at launch with the reason (and `auto` serves it on the other engine).

A tiny random model per family (arch_models.py) is launched through POST /v1/models as its catalog
family, on a server whose MAX_TOTAL_TOKENS (2048) is past every such model's context (512): the
launch must cap it, not fail. Prompts of different lengths (some past the sliding windows) are sent
at once and staggered, so requests join a running batch; each one's token ids (TGI details) must equal
transformers' generate run on that prompt alone, in float32.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import building

from .arch_models import FAMILIES, ArchFamily, build_family
from .conftest import MODEL_CACHE, RunningServer, checkpoint_engines, launch_serve

CATALOG = Path(__file__).resolve().parents[2] / "container" / "berth_server" / "models" / "catalog"
# Model loads and reference generation on a shared 2-core machine outlast the default 300 s.
pytestmark = pytest.mark.timeout(1200)
NEW_TOKENS = 16
PROMPTS = (
    "Hi",
    "Hello there, how are you doing today?",
    "The quick brown fox jumps over the lazy dog, and then it runs far away into the deep green forest.",
    "Write a long story: " + " ".join(str(i) for i in range(40)),
)
# (engine, family) -> words the launch refusal must contain: each of these launches is refused by the
# engine's cannot_serve before loading (a 4xx with the reason), and `auto` picks the other engine.
REFUSED: dict[tuple[str, str], str] = {("vllm", "phi3-longrope"): "long factors for every sequence"}
# (engine, family) -> words the 4xx launch error must carry when the engine fails while loading (not refused
# up front): vLLM's own root cause, which used to reach the user as "See root cause above".
LOAD_FAILS: dict[tuple[str, str], str] = {("vllm", "deepseek-v3"): "is not supported by MLA"}
# The catalog's DeepSeek-V3 specs are FP8 checkpoints, so a float32 tiny model is registered as a custom
# model with the catalog family's stops (its chat template is the tokenizer's).
CUSTOM = {"deepseek-v3"}


@pytest.fixture(scope="module", params=checkpoint_engines())
def arch_server(request: pytest.FixtureRequest, tiny_model: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server per engine; families are launched next to its tiny default model."""
    engine = request.param
    server = launch_serve(tiny_model, tmp_path_factory.mktemp(f"arch-{engine}"), engine=engine,
                          env={"BERTH_MODEL_UID": "tiny", "MAX_TOTAL_TOKENS": "2048", "DTYPE": "float32"})
    yield server
    server.stop()


class LaunchAhead:
    """Launches each family's model while the previous family's test runs: a vLLM load is most of a test.

    One launch at a time, at most one family ahead, in FAMILIES order (pytest's order), so at most two
    family models are up at once. Each test still deletes its own model; close() deletes any left.
    """

    def __init__(self, server: RunningServer):
        self.server = server
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="launch-ahead")
        self._launches: dict[str, Future[tuple[Path, httpx.Response]]] = {}

    def launched(self, family: ArchFamily) -> tuple[Path, httpx.Response]:
        """(model folder, launch response) of `family`, after starting the next family's launch."""
        self._submit(family)
        following = FAMILIES.index(family) + 1
        if following < len(FAMILIES):
            self._submit(FAMILIES[following])
        return self._launches[family.name].result()

    def _submit(self, family: ArchFamily) -> None:
        if family.name not in self._launches:
            self._launches[family.name] = self._pool.submit(self._launch, family)

    def _launch(self, family: ArchFamily) -> tuple[Path, httpx.Response]:
        with building(MODEL_CACHE / f"arch-{family.name}"):
            model_dir = build_family(family, MODEL_CACHE / f"arch-{family.name}")
        return model_dir, _launch(self.server, family, model_dir, self.server.engine)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for name, launch in self._launches.items():
            if not launch.cancelled() and launch.exception() is None:
                httpx.delete(self.server.url(f"/v1/models/arch-{name}-{self.server.engine}"), timeout=120)


@pytest.fixture(scope="module")
def launch_ahead(arch_server: RunningServer) -> Iterator[LaunchAhead]:
    ahead = LaunchAhead(arch_server)
    yield ahead
    ahead.close()


def _catalog(family: ArchFamily) -> dict[str, Any]:
    return next(json.loads(p.read_text()) for p in CATALOG.glob("llm-*.json")
                if json.loads(p.read_text())["model_name"] == family.catalog)


def _catalog_stops(family: ArchFamily, tokenizer: Any) -> list[int]:
    """Token ids Berth stops on for this family: the model's EOS plus the catalog's stops inside this vocabulary."""
    spec = _catalog(family)
    ids = {tokenizer.convert_tokens_to_ids(family.eos)}
    ids.update(i for i in spec.get("stop_token_ids") or [] if i < len(tokenizer))
    vocab = tokenizer.get_vocab()
    ids.update(vocab[s] for s in spec.get("stop") or [] if s in vocab)
    return sorted(ids)


_REFERENCES: dict[tuple[str, str, tuple[tuple[int, ...], ...]], list[list[int]]] = {}


def _reference(model_dir: Path, family: ArchFamily, prompts: list[list[int]]) -> list[list[int]]:
    """transformers' greedy generate, one prompt at a time, float32, eager attention (computed once per family
    and prompts: every engine is held to the same reference)."""
    key = (str(model_dir), family.name, tuple(tuple(ids) for ids in prompts))
    if key not in _REFERENCES:
        _REFERENCES[key] = _generate_reference(model_dir, family, prompts)
    return _REFERENCES[key]


def _generate_reference(model_dir: Path, family: ArchFamily, prompts: list[list[int]]) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # Eager attention is transformers' reference implementation (its SDPA path drops Gemma 2's soft-capping).
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    stops = _catalog_stops(family, tokenizer)
    outputs = []
    for ids in prompts:
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=stops,
                                 pad_token_id=tokenizer.pad_token_id)
        outputs.append(out[0, len(ids):].tolist())
    return outputs


def _register(server: RunningServer, family: ArchFamily, model_dir: Path) -> str:
    """Register `family`'s tiny model as a custom LLM with the catalog family's stops; returns its name."""
    catalog = _catalog(family)
    name = f"tiny-{family.name}"
    registration = {
        "version": 2, "model_name": name, "model_family": name, "context_length": 512, "model_lang": ["en"],
        "model_ability": ["chat"], "chat_template": (model_dir / "chat_template.jinja").read_text()
        if (model_dir / "chat_template.jinja").is_file()
        else json.loads((model_dir / "tokenizer_config.json").read_text())["chat_template"],
        "stop": catalog.get("stop"), "stop_token_ids": catalog.get("stop_token_ids"),
        "model_specs": [{"model_format": "pytorch", "model_size_in_billions": 1, "quantization": "none",
                         "model_uri": f"file://{model_dir}", "model_id": None, "model_hub": "huggingface"}],
    }
    response = httpx.post(server.url("/v1/model_registrations/LLM"), timeout=30,
                          json={"model": json.dumps(registration), "persist": False})
    assert response.status_code == 200 or "already" in response.text, response.text
    return name


def _launch(server: RunningServer, family: ArchFamily, model_dir: Path, engine: str) -> httpx.Response:
    body: dict[str, Any] = {"model_name": family.catalog, "model_type": "LLM", "model_engine": engine,
                            "model_uid": f"arch-{family.name}-{engine}", "model_path": str(model_dir)}
    if family.name in CUSTOM:
        body["model_name"] = _register(server, family, model_dir)
        del body["model_path"]
    return httpx.post(server.url("/v1/models"), json=body, timeout=600)


def _generate_all(server: RunningServer, uid: str, texts: list[str]) -> list[dict[str, Any]]:
    """TGI bodies on /invocations (which honours `model`) for every text: half at once, the rest after the first ones are decoding."""
    results: list[dict[str, Any]] = [{} for _ in texts]

    def one(i: int) -> None:
        body = {"model": uid, "inputs": texts[i], "parameters": {
            "max_new_tokens": NEW_TOKENS, "details": True, "decoder_input_details": True}}
        response = httpx.post(server.url("/invocations"), json=body, timeout=300)  # /generate is the default model
        payload = response.json()
        results[i] = {"status": response.status_code, **(payload[0] if isinstance(payload, list) else payload)}

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
    for i, thread in enumerate(threads):
        thread.start()
        if i == len(texts) // 2 - 1:
            time.sleep(0.3)  # the later ones join a running batch (when they are late enough; correct either way)
    for thread in threads:
        thread.join()
    return results


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_greedy_tokens_equal_transformers(arch_server: RunningServer, launch_ahead: LaunchAhead,
                                          family: ArchFamily) -> None:
    from transformers import AutoTokenizer

    engine = arch_server.engine
    model_dir, launched = launch_ahead.launched(family)
    load_failure = LOAD_FAILS.get((engine, family.name))
    if load_failure is not None:
        assert 400 <= launched.status_code < 500, launched.text
        assert load_failure in launched.json()["detail"]
        return
    refusal = REFUSED.get((engine, family.name))
    if refusal is not None:
        assert 400 <= launched.status_code < 500, launched.text
        assert refusal in launched.json()["detail"]
        # BERTH_ENGINE=auto takes the other engine (this server pins its engine, so ask the selector itself).
        from berth_server.engines.select import choose_engine
        from berth_server.launch_config import ModelLaunchConfig
        from berth_server.settings import Settings

        config = ModelLaunchConfig(uid="auto", source=str(model_dir), model_name=family.catalog, engine="auto")
        assert choose_engine(config, model_dir, Settings(engine="auto")) != engine
        return
    assert launched.status_code == 200, launched.text
    uid = launched.json()["model_uid"]
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in PROMPTS]
        results = _generate_all(arch_server, uid, texts)
        assert all(r["status"] == 200 for r in results), results
        prompts = [[t["id"] for t in r["details"]["prefill"]] for r in results]
        expected = _reference(model_dir, family, prompts)
        got = [[t["id"] for t in r["details"]["tokens"]] for r in results]
        assert got == expected
        chat = httpx.post(arch_server.url("/v1/chat/completions"), timeout=120, json={
            "model": uid, "messages": [{"role": "user", "content": PROMPTS[2]}], "max_tokens": 4, "temperature": 0})
        assert chat.status_code == 200, chat.text
        template_ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[2]}], tokenize=True,
                                                     add_generation_prompt=True, return_dict=True)["input_ids"]
        assert chat.json()["usage"]["prompt_tokens"] == len(template_ids)
        described = httpx.get(arch_server.url(f"/v1/models/{uid}"), timeout=30).json()
        assert described["context_length"] == 512  # MAX_TOTAL_TOKENS=2048 capped by the model's own context
    finally:
        httpx.delete(arch_server.url(f"/v1/models/{uid}"), timeout=120)
