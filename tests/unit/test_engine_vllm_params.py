"""The vLLM mapping without an engine: SamplingParams fields, TGI-named settings, BERTH_VLLM_ pass-through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from berth_server.canonical import SamplingParams
from berth_server.engines import vllm_params
from berth_server.engines.base import EngineRequest
from berth_server.engines.engine_settings import VllmSettings
from berth_server.engines.vllm_engine import VllmEngine
from berth_server.errors import InvalidRequest
from berth_server.launch_config import ModelLaunchConfig
from berth_server.settings import Settings

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm
CONFIG = ModelLaunchConfig(uid="m", source="/m", model_name="m")


def _params(sampling: SamplingParams, stop_ids: frozenset[int] = frozenset({2, 9}), max_new: int = 8):  # type: ignore[no-untyped-def]
    return vllm_params.sampling_params(EngineRequest("r", [1, 2, 3], sampling, stop_ids, max_new))


def test_every_sampling_field_maps() -> None:
    sampling = SamplingParams(
        temperature=0.7, top_p=0.9, top_k=5, min_p=0.05, repetition_penalty=1.1, frequency_penalty=0.2,
        presence_penalty=0.3, seed=7, min_new_tokens=3, logprobs=2, prompt_logprobs=True,
    )
    p = _params(sampling)
    assert (p.temperature, p.top_p, p.top_k, p.min_p) == (0.7, 0.9, 5, 0.05)
    assert (p.repetition_penalty, p.frequency_penalty, p.presence_penalty, p.seed) == (1.1, 0.2, 0.3, 7)
    assert (p.max_tokens, p.min_tokens, p.logprobs, p.prompt_logprobs) == (8, 3, 2, 0)
    assert sorted(p.stop_token_ids) == [2, 9] and not p.ignore_eos
    assert p.detokenize is False and p.output_kind.name == "DELTA"


def test_greedy_disables_sampling_knobs_and_defaults_are_off() -> None:
    p = _params(SamplingParams(greedy=True, temperature=0.9, top_k=3, top_p=0.5))
    assert (p.temperature, p.top_k, p.top_p) == (0.0, 0, 1.0)
    plain = _params(SamplingParams())
    assert plain.logprobs is None and plain.prompt_logprobs is None and plain.seed is None


def test_ignore_eos_passes_through_with_the_given_stop_ids() -> None:
    # The model process leaves the model's EOS ids out of stop_token_ids under ignore_eos.
    p = _params(SamplingParams(ignore_eos=True, stop_token_ids=(9,)), stop_ids=frozenset({9}))
    assert p.ignore_eos and list(p.stop_token_ids) == [9]


def test_typical_p_is_a_validation_error() -> None:
    with pytest.raises(InvalidRequest, match="typical_p") as info:
        _params(SamplingParams(typical_p=0.5))
    assert info.value.param == "typical_p"


def test_settings_map_to_engine_args(tmp_path: Path) -> None:
    settings = Settings(
        sm_num_gpus=2, quantize="awq", max_total_tokens=1024, max_batch_prefill_tokens=512,
        max_concurrent_requests=64, kv_cache_gb=4, dtype="float16", trust_remote_code=True,
    )
    own = VllmSettings.from_env({"BERTH_GPU_MEMORY_UTILIZATION": "0.8", "SM_VLLM_ENFORCE_EAGER": "false"})
    kwargs = vllm_params.engine_kwargs(tmp_path, CONFIG, settings, cpu=False, vllm=own)
    assert kwargs["tensor_parallel_size"] == 2 and kwargs["quantization"] == "awq"
    assert kwargs["max_model_len"] == 1024 and kwargs["max_num_batched_tokens"] == 512
    assert kwargs["max_num_seqs"] == 64 and kwargs["gpu_memory_utilization"] == 0.8
    assert kwargs["kv_cache_memory_bytes"] == 4 << 30 and kwargs["dtype"] == "float16"
    assert kwargs["trust_remote_code"] and not kwargs["skip_tokenizer_init"] and kwargs["enforce_eager"] is False
    cpu = vllm_params.engine_kwargs(tmp_path, CONFIG.__class__(uid="m", source="/m", model_name="m",
                                                               context_length=256), Settings(), cpu=True,
                                vllm=VllmSettings())
    assert cpu["enforce_eager"] and cpu["max_model_len"] == 256 and "kv_cache_memory_bytes" not in cpu
    env = vllm_params.cpu_environment(Settings(kv_cache_gb=2), cpus=[0, 1])
    assert env == {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "0-1",
                   "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def test_server_wide_limit_is_capped_by_the_model_context(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"max_position_embeddings": 512, "text_config": null}')
    big = vllm_params.engine_kwargs(tmp_path, CONFIG, Settings(max_total_tokens=2048), cpu=True)
    assert big["max_model_len"] == 512  # vLLM would refuse 2048 with a ValidationError
    small = vllm_params.engine_kwargs(tmp_path, CONFIG, Settings(max_total_tokens=300), cpu=True)
    assert small["max_model_len"] == 300
    assert "max_model_len" not in vllm_params.engine_kwargs(tmp_path, CONFIG, Settings(), cpu=True)
    (tmp_path / "tokenizer_config.json").write_text('{"model_max_length": 256}')
    assert vllm_params.engine_kwargs(tmp_path, CONFIG, Settings(max_total_tokens=2048), cpu=True)["max_model_len"] == 256


def test_passthrough_coerces_types_from_the_dataclass() -> None:
    args = vllm_params.passthrough_args({
        "enable_prefix_caching": "false", "max_num_seqs": "8", "block_size": "16",
        "hf_overrides": '{"rope_theta": 10000}', "kv_cache_dtype": "auto",
    })
    assert args["enable_prefix_caching"] is False and args["max_num_seqs"] == 8 and args["block_size"] == 16
    assert args["hf_overrides"] == {"rope_theta": 10000} and args["kv_cache_dtype"] == "auto"
    assert vllm_params.passthrough_args({"max_num_seqs": "none"})["max_num_seqs"] is None


def test_mistyped_passthrough_names_the_closest_arguments() -> None:
    with pytest.raises(vllm_params.VllmArgError, match="BERTH_VLLM_MAX_NUM_SEQ .*max_num_seqs"):
        vllm_params.passthrough_args({"max_num_seq": "4"})
    # vLLM HTTP-server options (as the AWS vLLM container passes) are ignored, not fatal.
    assert vllm_params.passthrough_args({"tool_call_parser": "hermes", "max_num_seqs": "2"}) == {"max_num_seqs": 2}
    with pytest.raises(vllm_params.VllmArgError, match="not an integer"):
        vllm_params.passthrough_args({"max_num_seqs": "four"})
    with pytest.raises(vllm_params.VllmArgError, match="boolean"):
        vllm_params.passthrough_args({"enforce_eager": "maybe"})


def test_cannot_serve_explains(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        '{"architectures": ["LlamaForCausalLM"], "hidden_size": 32, "num_attention_heads": 2}'
    )
    cpu = Settings(device="cpu")
    assert "head size 16" in (VllmEngine.cannot_serve(CONFIG, tmp_path, cpu) or "")
    embedding = ModelLaunchConfig(uid="e", source="/e", model_name="e", model_type="embedding")
    assert "LLM" in (VllmEngine.cannot_serve(embedding, tmp_path, cpu) or "")
    (tmp_path / "config.json").write_text(
        '{"architectures": ["NoSuchForCausalLM"], "hidden_size": 64, "num_attention_heads": 2}'
    )
    assert "architecture NoSuchForCausalLM" in (VllmEngine.cannot_serve(CONFIG, tmp_path, cpu) or "")
    (tmp_path / "config.json").write_text(
        '{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 2}'
    )
    assert VllmEngine.cannot_serve(CONFIG, tmp_path, cpu) is None


def test_cannot_serve_a_deepseek_v3_config_without_its_router_keys(tmp_path: Path) -> None:
    config = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 128,
              "num_attention_heads": 4, "head_dim": 32}
    (tmp_path / "config.json").write_text(json.dumps(config))
    reason = VllmEngine.cannot_serve(CONFIG, tmp_path, Settings(device="cpu")) or ""
    assert "topk_method='noaux_tc'" in reason  # transformers 5 saves DeepSeek-V3 without it
    (tmp_path / "config.json").write_text(json.dumps({**config, "topk_method": "noaux_tc", "scoring_func": "sigmoid"}))
    assert VllmEngine.cannot_serve(CONFIG, tmp_path, Settings(device="cpu")) is None


def test_engine_core_failure_names_its_root_cause() -> None:
    from berth_server.engines.stderr_tail import StderrTail

    tail = StderrTail()
    tail.lines.extend([
        "(Worker pid=1) ERROR 11-29 09:57:16 [multiproc_executor.py:953] KeyError: 'layers.1.mlp.gate.bias'",
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
    ])
    assert tail.root_cause(settle_s=0) == "KeyError: 'layers.1.mlp.gate.bias'"
    tail.lines.extend([
        ("(EngineCore pid=2) ERROR [core.py:1512] RuntimeError: Worker failed with error 'Head dimension 96 is "
        "not supported by MLA.', please check the stack trace above for the root cause"),
        ("vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) for "
        "the root cause."),
    ])
    assert "Head dimension 96 is not supported by MLA" in (tail.root_cause(settle_s=0) or "")


def test_a_worker_killed_by_a_signal_is_named_with_what_it_means() -> None:
    from berth_server.engines.stderr_tail import StderrTail

    tail = StderrTail()
    tail.lines.extend([  # what vLLM 0.32's executor monitor logs when its worker dies of SIGILL, then its error
        ("(EngineCore pid=7) ERROR 12-02 10:01:02 [multiproc_executor.py:316] Worker proc VllmWorker-0 died "
         "unexpectedly (exit code: -4), shutting down executor."),
        "RuntimeError: cancelled",
    ])
    assert tail.process_death(settle_s=0) == (
        "its process VllmWorker-0 was killed by SIGILL (illegal instruction: this CPU lacks or blocks an "
        "instruction vLLM's kernels use for this dtype and shape)")
    tail.lines.append("RuntimeError: Process EngineCore_DP0 (PID: 12) died with exit code -9")
    assert "EngineCore_DP0 was killed by SIGKILL" in (tail.process_death(settle_s=0) or "")
    assert StderrTail().process_death(settle_s=0) is None


@pytest.mark.parametrize(("declared", "expected"), [
    ({"torch_dtype": "float32"}, "float32"),
    ({"dtype": "float32"}, "float32"),
    ({"text_config": {"dtype": "float32"}}, "float32"),
    ({"torch_dtype": "bfloat16"}, None),  # vLLM's own choice
    ({}, None),
])
def test_a_float32_checkpoint_stays_float32_on_the_cpu(tmp_path: Path, declared: dict[str, object],
                                                        expected: str | None) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 256, **declared}))
    cpu = vllm_params.engine_kwargs(tmp_path, CONFIG, Settings(), cpu=True)
    assert cpu.get("dtype") == expected
    gpu = vllm_params.engine_kwargs(tmp_path, CONFIG, Settings(), cpu=False)
    assert "dtype" not in gpu  # on a GPU vLLM's auto (float32 -> float16/bfloat16) stays
    chosen = vllm_params.engine_kwargs(tmp_path, CONFIG, Settings(dtype="bfloat16"), cpu=True)
    assert chosen["dtype"] == "bfloat16"  # DTYPE opts in
