"""The text side of generation, one implementation for every engine: chat template, tokens, limits.

An engine sees token ids only. This module renders chat messages with the model's template,
tokenizes, applies TGI's truncate and the MAX_INPUT_TOKENS / MAX_TOTAL_TOKENS limits, builds the
EOS set, and hands each request an OutputStream that turns engine steps back into Deltas.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berth_server.canonical import Constraint, GenerateRequest
from berth_server.checkpoint import generation_eos_ids, load_tokenizer, text_config
from berth_server.engines.base import EngineRequest
from berth_server.errors import InputTooLong, InvalidRequest
from berth_server.ipc import Tokenize, TokenSpan
from berth_server.launch_config import ModelLaunchConfig
from berth_server.model_process.output_stream import OutputStream
from berth_server.model_process.reasoning import ReasoningSplitter, thinking_kwargs
from berth_server.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Token limits of one model: context, prompt + generation, prompt alone."""

    context: int
    max_total: int
    max_input: int

    @classmethod
    def resolve(cls, config: ModelLaunchConfig, settings: Settings, max_model_len: int) -> Limits:
        """context = engine max_model_len; max_total = config or context; max_input = config or max_total-1."""
        context = min(max_model_len, config.context_length or max_model_len)
        # The launcher may leave the default model's TGI limits in Settings only.
        total = config.max_total_tokens or (settings.max_total_tokens if config.is_default else None)
        max_total = min(total or context, context)
        given = config.max_input_tokens or (settings.max_input_tokens if config.is_default else None)
        max_input = min(given or max_total - 1, max_total - 1)
        return cls(context=context, max_total=max_total, max_input=max(1, max_input))


@dataclass
class PreparedRequest:
    """A validated request: what the engine gets and what the output side needs."""

    engine_request: EngineRequest
    prompt_text: str
    prompt_ids: list[int]
    in_reasoning: bool


class TextPipeline:
    """Tokenizer + chat template + limits for one model."""

    def __init__(self, tokenizer: Any, config: ModelLaunchConfig, limits: Limits, model_eos: set[int]):
        self.tokenizer = tokenizer
        self.config = config
        self.limits = limits
        self.model_eos = frozenset(model_eos)
        self.special_ids = frozenset(int(i) for i in tokenizer.all_special_ids)
        self.tag_ids = frozenset(
            i for i in (self._single_token_id(config.reasoning_start_tag),
                        self._single_token_id(config.reasoning_end_tag)) if i is not None)
        self._token_text: dict[int, str] = {}
        self.logits_width = len(tokenizer)  # the model's vocab (logits) size; load() reads config.json
        self._constraints: Any = None  # engines.constraints.ConstraintCompiler, built on first use
        # Templating and tokenizing run here, off the event loop that streams every request's tokens: a
        # long prompt must not stall the others. Two threads, so a huge prompt does not hold up a small one.
        self._threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="berth-prepare")

    @classmethod
    def load(cls, model_dir: Path, config: ModelLaunchConfig, settings: Settings,
             max_model_len: int) -> TextPipeline:
        """Load the checkpoint's tokenizer (config.chat_template overrides its template)."""
        tokenizer = load_tokenizer(model_dir, config.trust_remote_code)
        if config.chat_template:
            tokenizer.chat_template = config.chat_template
        eos = _model_eos_ids(model_dir, tokenizer)
        pipeline = cls(tokenizer, config, Limits.resolve(config, settings, max_model_len), eos)
        # Spec stop strings that are single special tokens stop by id too (they are skipped from text).
        extra = {pipeline._single_token_id(s) for s in config.stop} - {None}
        pipeline.model_eos = pipeline.model_eos | {i for i in extra if i in pipeline.special_ids}
        pipeline.logits_width = _model_vocab_size(model_dir) or pipeline.logits_width
        return pipeline

    def _single_token_id(self, text: str | None) -> int | None:
        if not text:
            return None
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return int(ids[0]) if len(ids) == 1 else None

    @property
    def reasoning(self) -> bool:
        """Whether the model has reasoning tags to split on."""
        return bool(self.config.reasoning_start_tag and self.config.reasoning_end_tag)

    def thinking_close_ids(self) -> list[int]:
        """The tokens that end a reasoning block as the chat templates write it (end tag, blank line)."""
        return list(self.tokenizer.encode(f"{self.config.reasoning_end_tag}\n\n", add_special_tokens=False))

    def render_chat(self, request: GenerateRequest) -> str:
        """Render messages with the chat template (to text; tokenization is separate)."""
        kwargs = thinking_kwargs(request.enable_thinking, request.chat_template_kwargs, self.config,
                                 self.tokenizer.chat_template)
        if request.continue_final_message:
            kwargs["continue_final_message"] = True
        # An assistant turn that only calls tools comes with content null (the OpenAI client replays it
        # so): it renders as "", as vLLM renders it, since templates that concatenate content (SmolLM2's)
        # cannot add None to a string.
        messages = [m if m.get("content") is not None else {**m, "content": ""} for m in request.messages or []]
        try:
            return str(self.tokenizer.apply_chat_template(
                messages, tools=request.tools, tokenize=False,
                add_generation_prompt=request.add_generation_prompt and not request.continue_final_message,
                **kwargs))
        except InvalidRequest:
            raise
        except Exception as exc:  # noqa: BLE001 - jinja raise_exception, bad roles/content, no template
            raise InvalidRequest(f"cannot render the chat template: {_one_line(exc)}", param="messages") from None

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        """Text to ids."""
        return [int(i) for i in self.tokenizer.encode(text, add_special_tokens=add_special_tokens)]

    async def prepare_async(self, request: GenerateRequest) -> PreparedRequest:
        """prepare() on the pipeline's threads."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, self.prepare, request)

    async def tokenize_async(self, message: Tokenize) -> list[TokenSpan]:
        """tokenize() on the pipeline's threads."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, self.tokenize, message)

    def prepare(self, request: GenerateRequest) -> PreparedRequest:
        """Render, tokenize, truncate and check limits; InvalidRequest/InputTooLong otherwise."""
        if request.messages is not None:
            prompt_text = self.render_chat(request)
            ids = self.encode(prompt_text, bool(request.add_special_tokens))
        elif request.prompt is not None:
            prompt_text = request.prompt
            ids = self.encode(prompt_text, request.add_special_tokens is not False)
        elif request.prompt_token_ids is not None:
            ids = [int(i) for i in request.prompt_token_ids]
            self._check_ids(ids, "prompt")
            prompt_text = str(self.tokenizer.decode(ids, skip_special_tokens=False))
        else:
            raise InvalidRequest("a request needs messages, prompt or prompt_token_ids", param="prompt")
        if request.truncate is not None and 0 < request.truncate < len(ids):
            ids = ids[-request.truncate:]
        self._check_ids(request.sampling.stop_token_ids, "stop_token_ids")
        self._check_ids([token for token, _ in request.sampling.logit_bias], "logit_bias")
        self._check_ids(request.sampling.allowed_token_ids or (), "allowed_token_ids")
        max_new = self._check_limits(len(ids), request.sampling.max_new_tokens)
        in_reasoning = bool(request.split_reasoning and self.reasoning and ReasoningSplitter.opened_in_prompt(
            prompt_text, self.config.reasoning_start_tag or "", self.config.reasoning_end_tag or ""))
        engine_request = EngineRequest(
            request_id=request.request_id, prompt_token_ids=ids, sampling=request.sampling,
            stop_token_ids=self.stop_ids(request), max_new_tokens=max_new, adapter=request.adapter,
            bad_words_ids=self.bad_words_ids(request.sampling.bad_words), session_id=request.session_id)
        return PreparedRequest(engine_request, prompt_text, ids, in_reasoning)

    @property
    def vocab_size(self) -> int:
        """How many token ids the tokenizer knows (added tokens included)."""
        return max(len(self.tokenizer), int(getattr(self.tokenizer, "vocab_size", 0) or 0))

    def _check_ids(self, ids: Any, param: str) -> None:
        """Token ids from a request must lie in [0, vocab size): refused here, before the engine sees them."""
        vocab = self.vocab_size
        bad = next((i for i in ids if not 0 <= i < vocab), None)
        if bad is not None:
            raise InvalidRequest(f"{param}: token id {bad} is out of range: ids must be in [0, {vocab})", param=param)

    async def constrain(self, prepared: PreparedRequest, constraint: Constraint) -> PreparedRequest:
        """Compile the request's constraint (off the event loop, cached) and attach it for the engine."""
        if self._constraints is None:
            from berth_server.engines.constraints import ConstraintCompiler

            self._constraints = ConstraintCompiler(self.tokenizer, self.logits_width, self.model_eos)
        grammar = await self._constraints.compile_async(constraint)
        return dataclasses.replace(prepared, engine_request=dataclasses.replace(prepared.engine_request,
                                                                                grammar=grammar))

    def bad_words_ids(self, words: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
        """Each bad word as ids, alone and after a space when that is a different word token (vLLM's rule)."""
        out: list[tuple[int, ...]] = []
        for word in words:
            plain = tuple(self.encode(word.lstrip(), False))
            if not plain:
                raise InvalidRequest(f"bad_words: {word!r} has no tokens", param="bad_words")
            out.append(plain)
            spaced = tuple(self.encode(" " + word.lstrip(), False))
            if spaced and spaced[0] != plain[0] and len(spaced) == len(plain):
                out.append(spaced)
        return tuple(out)

    def _check_limits(self, prompt_len: int, max_new_tokens: int | None) -> int:
        limits = self.limits
        if prompt_len == 0:
            raise InvalidRequest("the prompt is empty", param="prompt")
        if prompt_len > limits.max_input:
            raise InputTooLong(f"the prompt has {prompt_len} tokens, more than the maximum of"
                               f" {limits.max_input} input tokens", param="prompt")
        if max_new_tokens is None:
            return max(1, limits.max_total - prompt_len)
        if max_new_tokens < 1:
            raise InvalidRequest(f"max_new_tokens must be at least 1, got {max_new_tokens}",
                                 param="max_new_tokens")
        if prompt_len + max_new_tokens > limits.max_total:
            raise InputTooLong(f"prompt tokens ({prompt_len}) + max_new_tokens ({max_new_tokens}) ="
                               f" {prompt_len + max_new_tokens} exceeds the maximum of {limits.max_total}"
                               " total tokens", param="max_new_tokens")
        return max_new_tokens

    def stop_ids(self, request: GenerateRequest) -> frozenset[int]:
        """EOS ids of the model and spec, plus the request's stop_token_ids (model EOS dropped by ignore_eos)."""
        requested = frozenset(int(i) for i in request.sampling.stop_token_ids)
        if request.sampling.ignore_eos:
            return requested
        # A family's stop ids may lie past this checkpoint's vocabulary (a smaller tokenizer): such an id is
        # never generated, and vLLM refuses every request that names one.
        spec = frozenset(i for i in self.config.stop_token_ids if 0 <= i < self.vocab_size)
        return self.model_eos | spec | requested

    def output_stream(self, request: GenerateRequest, prepared: PreparedRequest) -> OutputStream:
        """The per-request detokenizer / stop / reasoning state."""
        splitter = None
        if request.split_reasoning and self.reasoning:
            splitter = ReasoningSplitter(self.config.reasoning_start_tag or "", self.config.reasoning_end_tag or "",
                                         prepared.in_reasoning)
        skip = self.special_ids - (self.tag_ids if splitter else frozenset())
        return OutputStream(
            pipeline=self, request_id=request.request_id,
            skip_ids=skip if request.sampling.skip_special_tokens else frozenset(),
            prompt_ids=prepared.prompt_ids, stops=(*request.sampling.stop, *self.config.stop),
            splitter=splitter, details=request.token_details or request.sampling.logprobs is not None)

    def token_text(self, token_id: int) -> str:
        """One token's own text (cached; specials included)."""
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = str(self.tokenizer.decode([token_id], skip_special_tokens=False))
        return text

    def tokenize(self, message: Tokenize) -> list[TokenSpan]:
        """TGI /tokenize: ids with their text and character offsets (messages are rendered first)."""
        if message.chat is not None and message.chat.messages is not None:
            text, add_special = self.render_chat(message.chat), bool(message.chat.add_special_tokens)
        elif message.messages is not None:
            request = GenerateRequest(request_id=message.request_id, model="", messages=message.messages)
            text, add_special = self.render_chat(request), False
        elif message.text is not None:
            text, add_special = message.text, message.add_special_tokens
        else:
            raise InvalidRequest("tokenize needs text or messages", param="inputs")
        encoded = self.tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
        return [TokenSpan(id=int(i), text=text[start:stop], start=int(start), stop=int(stop))
                for i, (start, stop) in zip(encoded["input_ids"], encoded["offset_mapping"])]


def _model_eos_ids(model_dir: Path, tokenizer: Any) -> set[int]:
    """Tokenizer eos + generation_config.json eos ids."""
    ids = generation_eos_ids(model_dir)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def _model_vocab_size(model_dir: Path) -> int | None:
    """The logits width from config.json (its text model's), when it says."""
    size = text_config(model_dir).get("vocab_size")
    return size if isinstance(size, int) else None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
