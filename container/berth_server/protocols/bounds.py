"""Bounded types for every protocol's schemas: integers in the ranges the engines take, capped lists and strings.

Out-of-range values fail pydantic validation, which protocols/wire.py turns into a 4xx naming the
field (400 on OpenAI and Xinference routes, 422 on TGI routes). Limits that are a protocol's own
contract (TGI's 4 stop sequences, OpenAI's 20 top_logprobs) stay in that protocol's schema; these
are the outer walls every protocol shares. JSON nesting depth is checked once, where the body is
parsed (http/errors.py: request_json), against MAX_JSON_DEPTH.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StringConstraints

from berth_server.canonical import MAX_SEED, MIN_SEED

# Engines seed torch/numpy generators with a signed 64-bit integer.
# Token counts (max_tokens, max_new_tokens, min_tokens, truncate): far above any context window,
# far below what overflows an engine's int32/int64 arithmetic.
MAX_TOKEN_COUNT = 10_000_000
# Token ids are int32 in every engine; the model process checks ids against the real vocabulary.
MAX_TOKEN_ID = 2**31 - 1
MAX_TOP_K = 2**31 - 1
MAX_N = 64
# Caps on list lengths and string sizes (the 6 MiB body limit bounds the rest).
MAX_STOP_STRINGS = 64
MAX_STOP_CHARS = 4096
MAX_STOP_TOKEN_IDS = 1024
MAX_TOOLS = 256
MAX_MESSAGES = 4096
MAX_LOGIT_BIAS = 300  # OpenAI's own limit on logit_bias entries
MAX_PROMPT_TOKEN_IDS = 1_000_000
MAX_NAME_CHARS = 256  # model names, user ids, tool_call ids
MAX_BATCH_TEXTS = 2048  # embedding inputs, rerank documents
MAX_JSON_DEPTH = 64  # nesting of a request body (tool schemas nest; nothing legitimate nests deeper)

Seed = Annotated[int, Field(ge=MIN_SEED, le=MAX_SEED)]
UnsignedSeed = Annotated[int, Field(ge=0, le=MAX_SEED)]
TokenCount = Annotated[int, Field(ge=0, le=MAX_TOKEN_COUNT)]
PositiveTokenCount = Annotated[int, Field(ge=1, le=MAX_TOKEN_COUNT)]
TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]
TopK = Annotated[int, Field(ge=-1, le=MAX_TOP_K)]
ChoiceCount = Annotated[int, Field(ge=1, le=MAX_N)]
StopString = Annotated[str, StringConstraints(max_length=MAX_STOP_CHARS)]
StopList = Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)]
StopTokenIds = Annotated[list[TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)]
PromptTokenIds = Annotated[list[TokenId], Field(min_length=1, max_length=MAX_PROMPT_TOKEN_IDS)]
Name = Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS)]
Tools = Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS)]
LogitBias = Annotated[dict[str, float], Field(max_length=MAX_LOGIT_BIAS)]
TextBatch = Annotated[list[str], Field(min_length=1, max_length=MAX_BATCH_TEXTS)]


def json_problem(value: Any, limit: int = MAX_JSON_DEPTH) -> str | None:
    """What makes a parsed JSON body unsafe to pass on, naming where: nesting deeper than `limit`, or an
    integer no engine or serializer takes (outside 64 bits). None when it is fine. Iterative: no recursion."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, where = stack.pop()
        if isinstance(item, dict):
            children: Any = ((f"{where}.{key}" if where else str(key), child) for key, child in item.items())
        elif isinstance(item, list):
            children = ((f"{where}.{index}" if where else str(index), child) for index, child in enumerate(item))
        else:
            if isinstance(item, int) and not isinstance(item, bool) and not -(2**63) <= item < 2**64:
                return f"{where or 'body'}: the number {item} is out of range (64-bit integers at most)"
            continue
        if depth > limit:
            return f"request body nests deeper than {limit} levels"
        stack.extend((child, depth + 1, path) for path, child in children)
    return None


def json_depth_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when a parsed JSON value nests containers deeper than `limit`."""
    problem = json_problem(value, limit)
    return problem is not None and "nests deeper" in problem
