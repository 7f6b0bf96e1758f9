"""A model's tokenizer and chat template, without transformers: render chats, tokenize them, mark the loss.

Reads a Hugging Face tokenizer folder (``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``)
with ``tokenizers`` and ``jinja2`` only, so the web process can count tokens and the trainer can build loss
masks without importing torch. Rendering follows ``transformers``' ``apply_chat_template`` (same sandbox, same
template globals, same message clean-up) so prompts are byte-identical; the tests hold it to that. Before
rendering, every chat goes through ``chat_messages.prepare_messages``: for templates that know nothing about
tools (SmolLM2's), tool calls, tool results and tool definitions are written out as text in the Hermes /
Qwen2.5 ``<tool_call>`` convention described there, so training, file checks and inference agree. It does
not pad, truncate or batch for a model: callers decide what to do with examples that are too long
(``count_chat_batch`` only batches the counting).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from tokenizers import Encoding, Tokenizer

from tunery.catalog.chat_counts import CountPlan, PieceCounter
from tunery.catalog.chat_messages import Message, TemplateInput, TemplateSupport, mentions_tools, prepare_messages
from tunery.catalog.chat_template import compile_chat_template
from tunery.domain.errors import InvalidRequest

Span = tuple[int, int]
Tools = list[dict[str, Any]] | None

# The named special tokens transformers passes to every chat template (``tokenizer.special_tokens_map``).
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# How many chats count_chat_batch renders while the previous ones are being tokenized.
_COUNT_CHUNK = 32
# Renders a tool result after a user turn, to see whether a template writes roles it does not know.
_ROLE_PROBE = ({"role": "user", "content": "TUNERY-PROBE-1"}, {"role": "tool", "content": "TUNERY-PROBE-2"})
# tokenizer_config.json says "no limit" with numbers like 1e30; anything above this is not a context length.
_NO_LIMIT = 10**9


@dataclass(frozen=True, slots=True)
class _Counting:
    """Chats handed to the tokenizing thread: their renderings, piece plan (if any) and pending encodings."""

    rendered: list[tuple[str, list[Span]]]
    plan: CountPlan | None
    encodings: Future[list[Encoding]]


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
        self._piece_counter = PieceCounter.for_tokenizer(tokenizer)
        self._support = {
            key: self._template_support(template, templates[key]) for key, template in self._templates.items()
        }

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
        tools: Tools = None,
        add_generation_prompt: bool = False,
    ) -> str:
        """The chat as the model sees it, as text: prepared by ``template_input``, then rendered.

        Raises:
            InvalidRequest: the template rejects the messages (``param="messages"``).
        """
        template, prepared = self._prepare(messages, tools)
        return self._render(template, prepared.messages, prepared.tools, add_generation_prompt)

    def template_input(self, messages: Sequence[Message], tools: Tools = None) -> tuple[list[dict[str, Any]], Tools]:
        """The messages and tools exactly as the chat template receives them (see ``chat_messages``).

        ``weight`` and ``None`` fields are dropped; for templates without tool support, tool calls, results
        and definitions are written out as text (the tools then come back as ``None``).

        Raises:
            InvalidRequest: a message is not an object, or a tool call cannot be written out.
        """
        _, prepared = self._prepare(messages, tools)
        return prepared.messages, prepared.tools

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special-token strings in it become special tokens, none are added."""
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def tokenizer_json(self) -> str:
        """The ``tokenizers`` definition as ``tokenizer.json`` holds it (for libraries that read it, such as
        llguidance's constrained decoding)."""
        return str(self._tokenizer.to_str())

    def encode_chat(self, messages: Sequence[Message], tools: Tools = None) -> EncodedChat:
        """Tokenize the rendered chat and mark what the loss is taken on.

        Trainable tokens are those of assistant messages whose ``weight`` is not 0: the message as the
        template renders it (content, tool calls) through its end-of-turn token, never the role header that
        the generation prompt already contains. The ids are exactly the tokenization of ``render(messages)``:
        the whole text is tokenized once, and token offsets are matched against the assistant spans.

        Raises:
            InvalidRequest: the template rejects the messages, or an assistant message cannot be found in
                the rendering.
        """
        text, spans = self._render_with_spans(messages, tools)
        encoding = self._encoding(text)
        ids = list(encoding.ids)
        trainable = [False] * len(ids)
        if spans:
            starts, ends = (list(column) for column in zip(*encoding.offsets, strict=True))
            for lo, hi in _token_ranges(starts, ends, spans):
                trainable[lo:hi] = [True] * (hi - lo)
        return EncodedChat(input_ids=ids, trainable=trainable)

    def count_chat(self, messages: Sequence[Message], tools: Tools = None) -> tuple[int, int]:
        """Return (total tokens, trainable tokens) of one example, as ``encode_chat`` counts them."""
        text, spans = self._render_with_spans(messages, tools)
        return _count(self._encoding(text), len(text), spans)

    def count_chat_batch(self, examples: Sequence[tuple[Sequence[Message], Tools]]) -> list[tuple[int, int]]:
        """``count_chat`` for many ``(messages, tools)`` examples at once, in order; same counts, faster.

        The chats are rendered in chunks, and each chunk is tokenized on a helper thread while the next one
        renders: ``tokenizers`` releases the GIL and spreads a batch over the CPU cores, so the Python
        rendering and the Rust tokenizing overlap. The tokens are counted without copying per-token offsets
        into Python: piece by piece (``chat_counts.PieceCounter``) where the tokenizer allows it, else from
        the tokens at the span boundaries.

        Raises:
            InvalidRequest: some example cannot be rendered (the batch is not counted; ``count_chat`` each
                example to find which).
        """
        counts: list[tuple[int, int]] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunery-tokenize") as worker:
            previous: _Counting | None = None
            for first in range(0, len(examples), _COUNT_CHUNK):
                rendered = [self._render_with_spans(m, tools) for m, tools in examples[first : first + _COUNT_CHUNK]]
                counting = self._start_counting(rendered, worker)
                if previous is not None:
                    counts.extend(self._finish_counting(previous))
                previous = counting
            if previous is not None:
                counts.extend(self._finish_counting(previous))
        return counts

    def _start_counting(self, rendered: list[tuple[str, list[Span]]], worker: ThreadPoolExecutor) -> _Counting:
        """Hand the tokenizing of rendered chats to the worker thread (only Rust runs there, not Python)."""
        if self._piece_counter is None:
            texts = [text for text, _ in rendered]
            return _Counting(
                rendered, None, worker.submit(self._tokenizer.encode_batch, texts, add_special_tokens=False)
            )
        plan = self._piece_counter.plan(rendered)
        return _Counting(rendered, plan, worker.submit(self._piece_counter.encode, plan))

    def _finish_counting(self, counting: _Counting) -> list[tuple[int, int]]:
        encodings = counting.encodings.result()
        if counting.plan is None or self._piece_counter is None:
            return [_count(e, len(text), spans) for e, (text, spans) in zip(encodings, counting.rendered, strict=True)]
        counted = self._piece_counter.counts(counting.plan, encodings)
        return [
            count if count is not None else _count(self._encoding(text), len(text), spans)
            for count, (text, spans) in zip(counted, counting.rendered, strict=True)
        ]

    def _encoding(self, text: str) -> Encoding:
        return self._tokenizer.encode(text, add_special_tokens=False)

    # ----------------------------------------------------------------------------------- rendering
    def _template_support(self, template: jinja2.Template, source: str) -> TemplateSupport:
        """Whether a template renders tool use itself, and if not, whether it writes a ``tool`` role."""
        if mentions_tools(source):
            return TemplateSupport(tools=True)
        try:
            text = self._render(template, [dict(m) for m in _ROLE_PROBE], None, False)
        except InvalidRequest:
            return TemplateSupport(tools=False, tool_role="user")
        user, tool = (text.find(str(m["content"])) for m in _ROLE_PROBE)
        writes_role = 0 <= user < tool and "tool" in text[user:tool]
        return TemplateSupport(tools=False, tool_role="tool" if writes_role else "user")

    def _prepare(self, messages: Sequence[Message], tools: Tools) -> tuple[jinja2.Template, TemplateInput]:
        key = self._template_key(tools)
        return self._templates[key], prepare_messages(messages, tools, self._support[key])

    def _render_with_spans(self, messages: Sequence[Message], tools: Tools) -> tuple[str, list[Span]]:
        """The rendered chat and the character spans of it that are trained on."""
        template, prepared = self._prepare(messages, tools)
        text = self._render(template, prepared.messages, prepared.tools, False)
        return text, self._trainable_spans(template, prepared, text)

    def _render(self, template: jinja2.Template, messages: list[dict[str, Any]], tools: Tools, gen: bool) -> str:
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

    def _template_key(self, tools: Tools) -> str:
        if tools is not None and "tool_use" in self._templates:
            return "tool_use"
        if "default" in self._templates:
            return "default"
        return next(iter(self._templates))

    def _trainable_spans(self, template: jinja2.Template, prepared: TemplateInput, text: str) -> list[Span]:
        """Character spans of ``text`` that are trained on, in order.

        For assistant message ``i`` the span starts where ``render(messages[:i], add_generation_prompt=True)``
        ends and stops where ``render(messages[:i+1])`` ends, cut after the last end-of-turn token in it
        (the separator a template writes after that token is not the model's to predict). Templates whose
        prefixes are not prefixes of the full rendering (e.g. ones that drop reasoning from earlier turns)
        fall back to finding the message content in the text.
        """
        spans: list[Span] = []
        cursor = 0
        messages = prepared.messages
        for i, message in enumerate(messages):
            if not prepared.trained[i]:
                continue
            span = self._prefix_span(template, prepared, i, text) if i > 0 else None
            if span is not None and span[0] >= cursor:
                start, end = span[0], self._cut_after_end_of_turn(text, *span)
            else:
                start, end = _content_span(text, message, cursor, i)
                end = self._extend_onto_end_of_turn(text, end)
            spans.append((start, end))
            cursor = end
        return spans

    def _prefix_span(self, template: jinja2.Template, prepared: TemplateInput, i: int, text: str) -> Span | None:
        messages, tools = prepared.messages, prepared.tools
        try:
            before = self._render(template, messages[:i], tools, True)
            through = text if i == len(messages) - 1 else self._render(template, messages[: i + 1], tools, False)
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


def _count(encoding: Encoding, text_length: int, spans: list[Span]) -> tuple[int, int]:
    """(all tokens, trainable tokens) of an encoded chat, as ``_token_ranges`` over its offsets would count them.

    Looks up only the tokens at the span boundaries (``char_to_token``, in Rust) instead of copying every
    offset into Python; a boundary inside a token or outside every token falls back to the offsets.
    """
    total = len(encoding)
    trainable = 0
    for start, end in spans:
        lo = encoding.char_to_token(start)
        hi = total if end >= text_length else encoding.char_to_token(end)
        if lo is None or hi is None or (hi < total and _token_start(encoding, hi) != end):
            starts, ends = (list(column) for column in zip(*encoding.offsets, strict=True))
            return total, sum(hi - lo for lo, hi in _token_ranges(starts, ends, spans))
        trainable += hi - lo
    return total, trainable


def _token_start(encoding: Encoding, token: int) -> int | None:
    chars = encoding.token_to_chars(token)
    return None if chars is None else int(chars[0])


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
