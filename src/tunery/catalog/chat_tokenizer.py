"""A model's tokenizer and chat template, without transformers: render chats, tokenize them, mark the loss.

Reads a Hugging Face tokenizer folder (``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``)
with ``tokenizers`` and ``jinja2`` only, so the web process can count tokens and the trainer can build loss
masks without importing torch. Rendering follows ``transformers``' ``apply_chat_template`` (same sandbox, same
template globals, same message clean-up) so prompts are byte-identical; the tests hold it to that. It does not
pad, truncate or batch: callers decide what to do with examples that are too long.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from tokenizers import Tokenizer

from tunery.catalog.chat_template import compile_chat_template
from tunery.domain.errors import InvalidRequest

Message = Mapping[str, Any]
Span = tuple[int, int]

# The named special tokens transformers passes to every chat template (``tokenizer.special_tokens_map``).
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Message fields a template may read a reasoning trace from; transformers fills the first two from any of them.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
# tokenizer_config.json says "no limit" with numbers like 1e30; anything above this is not a context length.
_NO_LIMIT = 10**9


@dataclass(frozen=True, slots=True)
class EncodedChat:
    """One tokenized chat: ``trainable[i]`` says whether the loss is taken on ``input_ids[i]``."""

    input_ids: list[int]
    trainable: list[bool]

    @property
    def trainable_count(self) -> int:
        return sum(self.trainable)


class ChatTokenizer:
    """Renders chats with the model's template and tokenizes them; implements ``ExampleTokenizer``.

    Thread-safe: the ``tokenizers`` object and the compiled templates are only read.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        name: str,
        context_length: int,
        chat_template: str | Mapping[str, str],
        special_tokens: Mapping[str, str] | None = None,
        stop_token_ids: Sequence[int] = (),
    ) -> None:
        """Wrap a loaded ``tokenizers.Tokenizer``; most callers want ``from_dir``.

        Args:
            tokenizer: the fast tokenizer; its padding and truncation settings are switched off.
            name: the base model's name (shown in file statistics and error messages).
            context_length: the most tokens one example may have.
            chat_template: the Jinja template, or named templates (``default``, ``tool_use``, ...).
            special_tokens: ``bos_token``, ``eos_token``, ... as passed to the template.
            stop_token_ids: extra ids that end an assistant turn, besides ``eos_token``.
        """
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        self._name = name
        self._context_length = context_length
        templates = {"default": chat_template} if isinstance(chat_template, str) else dict(chat_template)
        self._templates = {key: compile_chat_template(text) for key, text in templates.items()}
        self._special_tokens = {k: v for k, v in (special_tokens or {}).items() if k in SPECIAL_TOKEN_KEYS}
        eos = self._special_tokens.get("eos_token")
        eos_id = tokenizer.token_to_id(eos) if eos is not None else None
        self._eos_token_id = eos_id
        stops = set(stop_token_ids) | ({eos_id} if eos_id is not None else set())
        self._stop_token_ids = tuple(sorted(stops))
        self._stop_strings = tuple(text for text in (tokenizer.id_to_token(i) for i in self._stop_token_ids) if text)

    @classmethod
    def from_dir(cls, path: Path, *, name: str | None = None, context_length: int | None = None) -> ChatTokenizer:
        """Load a tokenizer folder written by ``save_pretrained`` (transformers 4 or 5 layout).

        The chat template comes from ``chat_template.jinja`` (transformers 5), else ``tokenizer_config.json``;
        named templates from ``additional_chat_templates/*.jinja``. The stop tokens are the eos token plus
        the ``eos_token_id`` of ``generation_config.json`` / ``config.json`` when present.

        Args:
            path: the folder.
            name: defaults to the folder name.
            context_length: defaults to ``max_position_embeddings`` in ``config.json``, else
                ``model_max_length`` in ``tokenizer_config.json``.

        Raises:
            FileNotFoundError: no ``tokenizer.json`` in the folder.
            ValueError: no chat template, or no context length could be found.
        """
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        # Older folders keep the special tokens in special_tokens_map.json; tokenizer_config.json wins.
        config = _read_json(path / "special_tokens_map.json") | _read_json(path / "tokenizer_config.json")
        model_config = _read_json(path / "config.json")
        generation_config = _read_json(path / "generation_config.json")

        templates = _read_templates(path, config)
        if not templates:
            raise ValueError(f"The tokenizer in {path} has no chat template.")
        special_tokens = {
            key: token for key in SPECIAL_TOKEN_KEYS if (token := _token_text(config.get(key))) is not None
        }
        stop_ids: set[int] = set()
        for source in (generation_config, model_config):
            eos = source.get("eos_token_id")
            stop_ids.update(eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else [])

        if context_length is None:
            context_length = model_config.get("max_position_embeddings")
        if context_length is None and config.get("model_max_length", _NO_LIMIT) < _NO_LIMIT:
            context_length = int(config["model_max_length"])
        if context_length is None:
            raise ValueError(f"No context length for the tokenizer in {path}: pass context_length.")
        return cls(
            tokenizer,
            name=name or path.name,
            context_length=int(context_length),
            chat_template=templates["default"] if list(templates) == ["default"] else templates,
            special_tokens=special_tokens,
            stop_token_ids=sorted(stop_ids),
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def eos_token_id(self) -> int | None:
        return self._eos_token_id

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Ids that end an assistant turn: generation stops at any of them."""
        return self._stop_token_ids

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def render(
        self,
        messages: Sequence[Message],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = False,
    ) -> str:
        """The chat as the model sees it, as text. ``weight`` and ``None`` fields are dropped first.

        Raises:
            InvalidRequest: the template rejects the messages (``param="messages"``).
        """
        return self._render(_clean_messages(messages), tools, add_generation_prompt)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special-token strings in it become special tokens, none are added."""
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def encode_chat(self, messages: Sequence[Message], tools: list[dict[str, Any]] | None = None) -> EncodedChat:
        """Tokenize the rendered chat and mark what the loss is taken on.

        Trainable tokens are those of assistant messages whose ``weight`` is not 0: the message as the
        template renders it (content, tool calls) through its end-of-turn token, never the role header that
        the generation prompt already contains. The ids are exactly the tokenization of ``render(messages)``:
        the whole text is tokenized once, and token offsets are matched against the assistant spans.

        Raises:
            InvalidRequest: the template rejects the messages, or an assistant message cannot be found in
                the rendering.
        """
        ids, ranges = self._encode_with_ranges(messages, tools)
        trainable = [False] * len(ids)
        for lo, hi in ranges:
            trainable[lo:hi] = [True] * (hi - lo)
        return EncodedChat(input_ids=ids, trainable=trainable)

    def count_chat(self, messages: Sequence[Message], tools: list[dict[str, Any]] | None = None) -> tuple[int, int]:
        """Return (total tokens, trainable tokens) of one example, as ``encode_chat`` counts them."""
        ids, ranges = self._encode_with_ranges(messages, tools)
        return len(ids), sum(hi - lo for lo, hi in ranges)

    def _encode_with_ranges(
        self, messages: Sequence[Message], tools: list[dict[str, Any]] | None
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """The ids of the rendered chat, and the ``[lo, hi)`` index ranges of its trainable tokens."""
        clean = _clean_messages(messages)
        text = self._render(clean, tools, False)
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        spans = self._trainable_spans(messages, clean, tools, text)
        if not spans:
            return list(encoding.ids), []
        starts, ends = (list(column) for column in zip(*encoding.offsets, strict=True))
        return list(encoding.ids), _token_ranges(starts, ends, spans)

    def _render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, gen: bool) -> str:
        template = self._template_for(tools)
        try:
            return template.render(
                messages=messages,
                tools=tools,
                documents=None,
                add_generation_prompt=gen,
                **self._special_tokens,
            )
        except (jinja2.TemplateError, TypeError) as exc:
            raise InvalidRequest(
                f"The chat template of model '{self._name}' cannot render these messages: {exc}",
                param="messages",
            ) from exc

    def _template_for(self, tools: list[dict[str, Any]] | None) -> jinja2.Template:
        if tools is not None and "tool_use" in self._templates:
            return self._templates["tool_use"]
        if "default" in self._templates:
            return self._templates["default"]
        return next(iter(self._templates.values()))

    def _trainable_spans(
        self,
        messages: Sequence[Message],
        clean: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        text: str,
    ) -> list[Span]:
        """Character spans of ``text`` that are trained on, in order.

        For assistant message ``i`` the span starts where ``render(messages[:i], add_generation_prompt=True)``
        ends and stops where ``render(messages[:i+1])`` ends, cut after the last end-of-turn token in it
        (the separator a template writes after that token is not the model's to predict). Templates whose
        prefixes are not prefixes of the full rendering (e.g. ones that drop reasoning from earlier turns)
        fall back to finding the message content in the text.
        """
        spans: list[Span] = []
        cursor = 0
        last = len(clean) - 1
        for i, (original, message) in enumerate(zip(messages, clean, strict=True)):
            if message.get("role") != "assistant" or original.get("weight", 1) == 0:
                continue
            span = self._prefix_span(clean, i, tools, text, last) if i > 0 else None
            if span is not None and span[0] >= cursor:
                start, end = span[0], self._cut_after_end_of_turn(text, *span)
            else:
                start, end = _content_span(text, message, cursor, i)
                end = self._extend_onto_end_of_turn(text, end)
            spans.append((start, end))
            cursor = end
        return spans

    def _prefix_span(
        self, clean: list[dict[str, Any]], i: int, tools: list[dict[str, Any]] | None, text: str, last: int
    ) -> Span | None:
        try:
            before = self._render(clean[:i], tools, True)
            through = text if i == last else self._render(clean[: i + 1], tools, False)
        except InvalidRequest:
            return None
        if text.startswith(through) and through.startswith(before):
            return len(before), len(through)
        return None

    def _cut_after_end_of_turn(self, text: str, start: int, end: int) -> int:
        """End a rendered turn after its last end-of-turn token; what a template writes after it is a separator."""
        segment = text[start:end]
        cut = max((segment.rfind(stop) + len(stop) for stop in self._stop_strings if stop in segment), default=-1)
        return start + cut if cut >= 0 else start + len(segment.rstrip())

    def _extend_onto_end_of_turn(self, text: str, end: int) -> int:
        """Take in the end-of-turn token that follows a message's content directly, if there is one."""
        for stop in self._stop_strings:
            if text.startswith(stop, end):
                return end + len(stop)
        return end


def _clean_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages as transformers hands them to templates: no ``None`` values, reasoning aliased; no ``weight``."""
    cleaned = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise InvalidRequest(f"Each message must be an object, got {message!r}.", param="messages")
        clean = {key: value for key, value in message.items() if value is not None and key != "weight"}
        reasoning = next((clean[key] for key in _REASONING_FIELDS if key in clean), None)
        if reasoning is not None:
            clean = {"thinking": reasoning, **clean, "reasoning_content": reasoning}
        cleaned.append(clean)
    return cleaned


def _content_span(text: str, message: Mapping[str, Any], cursor: int, index: int) -> Span:
    content = message.get("content")
    if isinstance(content, str) and content.strip():
        for needle in (content, content.strip()):
            found = text.find(needle, cursor)
            if found >= 0:
                return found, found + len(needle)
    raise InvalidRequest(
        f"Message {index}: cannot find this assistant message in the rendered chat, so its tokens cannot be "
        "marked for training (the chat template drops or rewrites it).",
        param="messages",
    )


def _token_ranges(starts: list[int], ends: list[int], spans: list[Span]) -> list[tuple[int, int]]:
    """Token index ranges ``[lo, hi)`` whose character offsets overlap each span (offsets are in order)."""
    ranges = []
    for span_start, span_end in spans:
        lo = bisect.bisect_left(starts, span_start)
        if lo > 0 and ends[lo - 1] > span_start:
            lo -= 1  # a token that begins before the span but reaches into it is needed to produce it
        hi = bisect.bisect_left(starts, span_end)
        ranges.append((lo, hi))
    return ranges


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def _read_templates(path: Path, config: Mapping[str, Any]) -> dict[str, str]:
    """Chat templates by name, as transformers picks them: template files, if any, replace the config's."""
    templates: dict[str, str] = {}
    jinja_file = path / "chat_template.jinja"
    if jinja_file.is_file():
        templates["default"] = jinja_file.read_text(encoding="utf-8")
    extra_dir = path / "additional_chat_templates"
    if extra_dir.is_dir():
        for template_file in sorted(extra_dir.glob("*.jinja")):
            templates[template_file.stem] = template_file.read_text(encoding="utf-8")
    if templates:
        return templates
    inline = config.get("chat_template")
    if isinstance(inline, str):
        return {"default": inline}
    if isinstance(inline, list):
        return {entry["name"]: entry["template"] for entry in inline}
    return {}


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json stores it: a string, or an AddedToken dict (older files)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None
