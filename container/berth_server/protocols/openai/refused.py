"""OpenAI and vLLM-extension fields Berth knows but cannot honour: a 400 naming the field, never ignored.

Each entry lists the values that ask for nothing (so clients that send the default still work).
Fields that do not change the output by their owner's own definition (user, store, metadata,
service_tier, cache_salt) are accepted; every other known field is honoured by the schemas.
"""

from __future__ import annotations

from typing import Any

_NOTHING: dict[str, tuple[Any, ...]] = {
    "use_beam_search": (False,),
    "length_penalty": (1, 1.0),
    "include_stop_str_in_output": (False,),
    "spaces_between_special_tokens": (True,),
    "prompt_logprobs": (),
    "guided_whitespace_pattern": (),
    "logits_processors": (),
    "vllm_xargs": (),
    "kv_transfer_params": (),
    "mm_processor_kwargs": (),
    "documents": (),
    "priority": (0,),
    "functions": (),
    "function_call": (),
    "prediction": (),
    "audio": (),
    "modalities": (["text"],),
    "reasoning_effort": (),
    "web_search_options": (),
}
# Chat only: vLLM's echo (prefix the last message); completions honour their own echo.
CHAT_ONLY: dict[str, tuple[Any, ...]] = {"echo": (False,)}


def unsupported_field(body: Any, extra: dict[str, tuple[Any, ...]] | None = None) -> str | None:
    """The first known field in a raw body that asks for something Berth cannot do, or None."""
    if not isinstance(body, dict):
        return None
    for name, harmless in {**_NOTHING, **(extra or {})}.items():
        value = body.get(name)
        if value is not None and value not in harmless and value != [] and value != {}:
            return name
    return None
