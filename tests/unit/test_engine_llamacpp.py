"""The llama.cpp engine's pure parts: request mapping, server sizing, GGUF facts, recovering merged token ids."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from berth_server.canonical import SamplingParams
from berth_server.engines import llamacpp_params
from berth_server.engines.base import EngineRequest
from berth_server.engines.engine_settings import LlamaCppSettings, check_engine_settings
from berth_server.engines.llamacpp_engine import LlamaCppEngine
from berth_server.engines.llamacpp_params import gguf_path
from berth_server.engines.llamacpp_tokens import TokenBytes, piece_bytes
from berth_server.errors import GenerationFailed, InvalidRequest
from berth_server.launch_config import ModelLaunchConfig
from berth_server.settings import Settings, SettingsError

CONFIG = ModelLaunchConfig(uid="m", source="x.gguf", model_name="m")


def _request(**sampling: object) -> EngineRequest:
    return EngineRequest("r", [1, 2, 3], SamplingParams(**sampling), frozenset({2}), 16)  # type: ignore[arg-type]


def test_body_sends_every_knob_explicitly() -> None:
    body = llamacpp_params.completion_body(_request(temperature=0.7, top_k=5, top_p=0.8, min_p=0.1, seed=3,
                                                    repetition_penalty=1.2, logprobs=4), n_vocab=10)
    assert body["prompt"] == [1, 2, 3] and body["stream"] is True and body["max_tokens"] == 16
    assert (body["temperature"], body["top_k"], body["top_p"], body["min_p"]) == (0.7, 5, 0.8, 0.1)
    assert body["seed"] == 3 and body["repeat_penalty"] == 1.2 and body["repeat_last_n"] == 19
    assert body["n_probs"] == 4 and body["post_sampling_probs"] is False and body["verbose"] is True


def test_greedy_turns_off_llamacpp_defaults_and_asks_for_the_cheapest_probabilities() -> None:
    """Each chunk must carry its raw bytes (a probability entry); only logprobs need the raw distribution,
    whose whole-vocabulary sort costs llama.cpp tokens/s; after top_k 1 the entry is free."""
    body = llamacpp_params.completion_body(_request(greedy=True), n_vocab=10)
    assert (body["temperature"], body["top_k"], body["top_p"], body["min_p"]) == (0.0, 1, 1.0, 0.0)
    assert (body["n_probs"], body["post_sampling_probs"]) == (1, True) and body["verbose"] is True
    assert body["seed"] == llamacpp_params.RANDOM_SEED
    logprobs = llamacpp_params.completion_body(_request(greedy=True, logprobs=0), n_vocab=10)
    assert (logprobs["n_probs"], logprobs["post_sampling_probs"]) == (1, False)
    sampled = llamacpp_params.completion_body(_request(temperature=0.7), n_vocab=10)
    assert (sampled["top_k"], sampled["n_probs"], sampled["post_sampling_probs"]) == (0, 1, False)


@pytest.mark.parametrize(("sampling", "param"), [
    ({"prompt_logprobs": True}, "decoder_input_details"), ({"min_new_tokens": 2}, "min_new_tokens"),
    ({"top_p": 0.0}, "top_p"), ({"temperature": float("nan")}, "temperature"), ({"logprobs": 500}, "logprobs"),
])
def test_what_llamacpp_cannot_do_is_a_4xx_naming_the_field(sampling: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        llamacpp_params.completion_body(_request(**sampling), n_vocab=10)
    assert caught.value.param == param


def test_prompt_ids_outside_the_vocabulary_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="token ids must be in"):
        llamacpp_params.completion_body(_request(), n_vocab=3)


FACTS = llamacpp_params.GgufFacts(path=Path("m.gguf"), architecture="llama", context_length=8192, n_layer=30,
                                  n_head_kv=3, head_dim=64, n_vocab=49152)


def test_slots_and_context_come_from_the_limits() -> None:
    settings = Settings(max_concurrent_requests=8, max_total_tokens=1024, kv_cache_gb=4.0)
    own = LlamaCppSettings.from_env({"BERTH_LLAMACPP_THREADS": "3"})
    options = llamacpp_params.server_options(Path("m.gguf"), FACTS, ModelLaunchConfig(
        uid="m", source="x", model_name="m", is_default=True), settings, cpu_count=2, own=own)
    assert (options.n_parallel, options.slot_context, options.n_ctx) == (8, 1024, 8192)
    assert options.threads == 3 and options.n_gpu_layers == 0


def test_a_small_kv_budget_means_fewer_slots_each_with_its_own_cache() -> None:
    """A cache the slots share (kv_unified) makes answers depend on their neighbours, so it is never used."""
    options = llamacpp_params.server_options(Path("m.gguf"), FACTS, CONFIG, Settings(), cpu_count=2)
    per_slot = FACTS.kv_bytes_per_token * llamacpp_params.DEFAULT_SLOT_CONTEXT
    assert options.slot_context == llamacpp_params.DEFAULT_SLOT_CONTEXT
    assert options.n_parallel == (1 << 30) // per_slot == 11 and options.n_ctx == 11 * options.slot_context
    assert options.threads == 2
    huge = llamacpp_params.GgufFacts(path=Path("m.gguf"), architecture="llama", context_length=4096, n_layer=80,
                                     n_head_kv=64, head_dim=128, n_vocab=10)
    assert llamacpp_params.server_options(Path("m.gguf"), huge, CONFIG, Settings(), cpu_count=2).n_parallel == 1


def test_unreadable_gguf_is_a_4xx_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    with pytest.raises(InvalidRequest, match="broken.gguf"):
        llamacpp_params.read_gguf_facts(bad)


def test_truncated_real_gguf_is_a_4xx(smollm2_gguf: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smollm2_gguf.read_bytes()[: 4 << 20])
    with pytest.raises(InvalidRequest, match="cut.gguf"):
        llamacpp_params.read_gguf_facts(cut)
    facts = llamacpp_params.read_gguf_facts(smollm2_gguf)
    assert (facts.architecture, facts.context_length, facts.n_layer, facts.n_vocab) == ("llama", 8192, 30, 49152)


def test_cannot_serve_says_why(tmp_path: Path) -> None:
    assert "GGUF weights only" in (LlamaCppEngine.cannot_serve(CONFIG, tmp_path, Settings()) or "")
    (tmp_path / "m.gguf").write_bytes(b"")
    assert gguf_path(tmp_path) == tmp_path / "m.gguf"
    assert LlamaCppEngine.cannot_serve(CONFIG, tmp_path / "m.gguf", Settings()) is None
    embedding = ModelLaunchConfig(uid="e", source="x", model_name="e", model_type="embedding")
    assert "LLM" in (LlamaCppEngine.cannot_serve(embedding, tmp_path / "m.gguf", Settings()) or "")


def test_engine_name_spellings() -> None:
    from berth_server.launcher import with_engine_checked

    assert with_engine_checked(Settings.from_env({"BERTH_ENGINE": "LlamaCpp"})).engine == "llama.cpp"
    assert LlamaCppSettings.from_env({"BERTH_N_GPU_LAYERS": "-1"}).n_gpu_layers == -1
    with pytest.raises(SettingsError, match="BERTH_LLAMACPP_THREADS"):
        check_engine_settings({"BERTH_LLAMACPP_THREADS": "0"})  # the launcher's check at start
    with pytest.raises(SettingsError, match="llama.cpp"):
        with_engine_checked(Settings.from_env({"BERTH_ENGINE": "ollama"}))


def test_piece_bytes_for_both_vocabulary_styles() -> None:
    assert piece_bytes("Ġcat", "gpt2") == b" cat" and piece_bytes("ðŁİ", "gpt2") == b"\xf0\x9f\x8e"
    assert piece_bytes("\u2581cat", "llama") == b" cat" and piece_bytes("<0xE4>", "llama") == b"\xe4"


def test_merged_bytes_split_into_the_reported_number_of_tokens() -> None:
    vocab = TokenBytes(["a", "ðŁİ", "ð", "Ł", "İ", "ĉ"], "gpt2", [True] * 6)
    assert vocab.segment(b"\xf0\x9f\x8e", 1) == [1]
    assert vocab.segment(b"\xf0\x9f\x8e", 3) == [2, 3, 4]
    assert vocab.segment(b"\xf0\x9f\x8e", 2) is None and vocab.segment(b"", 0) == []


def _chunk(text: str, tokens: list[int], made: int, finish: str | None = None,
           entries: list[dict[str, object]] | None = None) -> dict[str, object]:
    """A streamed /v1/completions chunk as llama.cpp sends it with "verbose" (and logprobs when asked)."""
    logprobs = {"content": entries} if entries is not None else None
    return {"choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}],
            "__verbose": {"content": text, "tokens": tokens, "tokens_predicted": made}}


def _engine() -> LlamaCppEngine:
    engine = LlamaCppEngine(Path("m.gguf"), CONFIG, Settings())
    # "ðŁİ" and "ī" are 🎉's bytes F0 9F 8E and 89 in GPT-2's byte alphabet; "ð", "Ł", "İ" one byte each.
    engine._token_bytes = TokenBytes(["a", "ðŁİ", "ð", "Ł", "İ", "ī", "<eos>"], "gpt2", [True] * 6 + [False])
    return engine


def test_chunks_name_their_token_ids_and_merged_ones_are_recovered() -> None:
    from berth_server.engines.llamacpp_engine import _Running

    engine, request = _engine(), EngineRequest("r", [0], SamplingParams(), frozenset({6}), 5)
    running = _Running(None, None)  # type: ignore[arg-type]
    first = engine._step(_chunk("a", [0], 1), running, request)
    assert first is not None and first.token_ids == [0] and first.finish is None and first.logprobs is None
    merged = engine._step(_chunk("\U0001f389", [5], 3), running, request)  # 🎉 in two tokens, the last named
    assert merged is not None and merged.token_ids == [1, 5] and running.seen == 3
    last = engine._step(_chunk("", [6], 4), running, request)
    assert last is not None and last.token_ids == [6] and last.finish == "eos"
    assert engine._step(_chunk("", [], 5, "stop"), _Running(None, None), request) is not None  # type: ignore[arg-type]
    unnamed = {"choices": [{"text": "a", "index": 0, "logprobs": None, "finish_reason": None}]}
    with pytest.raises(GenerationFailed, match="without naming"):  # never text whose tokens would go uncounted
        engine._step(unnamed, _Running(None, None), request)  # type: ignore[arg-type]


def test_merged_bytes_that_are_not_utf8_come_from_the_probability_entry() -> None:
    """llama.cpp's text holds U+FFFD for bytes that are not UTF-8; the entry's "bytes" are the real ones."""
    from berth_server.engines.llamacpp_engine import _Running

    engine, request = _engine(), EngineRequest("r", [0], SamplingParams(), frozenset({6}), 5)
    chunk = _chunk("\ufffda", [0], 2, entries=[{"id": 0, "logprob": 0.0, "bytes": [0xF0, 0x61]}])
    step = engine._step(chunk, _Running(None, None), request)  # type: ignore[arg-type]
    assert step is not None and step.token_ids == [2, 0]


def test_logprobs_follow_the_reported_tokens() -> None:
    from berth_server.engines.llamacpp_engine import _Running

    engine = _engine()
    request = EngineRequest("r", [0], SamplingParams(logprobs=1), frozenset({6}), 5)
    top = [{"id": 5, "logprob": -0.5}, {"id": 0, "logprob": -2.0}]  # trimmed to the one asked for
    step = engine._step(_chunk("\U0001f389", [5], 4, entries=[{"id": 5, "logprob": -0.5, "top_logprobs": top,
                                                                   "bytes": list("\U0001f389".encode())}]),
                        _Running(None, None), request)  # type: ignore[arg-type]
    assert step is not None and step.token_ids == [2, 3, 4, 5]
    assert step.top_logprobs == [[], [], [], [(5, -0.5)]]
    assert step.logprobs is not None and step.logprobs[3] == -0.5 and all(math.isnan(x) for x in step.logprobs[:3])


def test_other_engines_on_a_gguf_file(smollm2_gguf: Path) -> None:
    """vLLM says it needs a GPU for GGUF here; transformers dequantizes only when asked."""
    import importlib.util

    from berth_server.engines.transformers_engine import TransformersEngine

    if importlib.util.find_spec("vllm") is not None:
        from berth_server.engines.vllm_engine import VllmEngine

        assert "GPUs only" in (VllmEngine.cannot_serve(CONFIG, smollm2_gguf, Settings(device="cpu")) or "")
    assert "when asked" in (TransformersEngine.cannot_serve(CONFIG, smollm2_gguf, Settings()) or "")
    asked = ModelLaunchConfig(uid="m", source="x.gguf", model_name="m", engine="transformers")
    assert TransformersEngine.cannot_serve(asked, smollm2_gguf, Settings()) is None


def test_prefix_counts_add_up_llamacpp_timings() -> None:
    """The last chunk's timings say how much of the prompt the slot's cache held (cache_n) and what was computed."""
    from berth_server.engines.llamacpp_engine import _Running

    engine = _engine()
    running = _Running(None, None, stop=True)  # type: ignore[arg-type]
    running.deliver({"choices": [{"text": "", "finish_reason": "length"}], "timings": {"cache_n": 58, "prompt_n": 1}})
    assert running.timings is not None
    engine._count_prefix(running.timings)
    engine._count_prefix({"cache_n": 0, "prompt_n": 59})
    assert engine.prefix_counts() == (118, 58)
