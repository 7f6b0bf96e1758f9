"""ChatTokenizer renders and tokenizes exactly like transformers, and marks only weighted assistant turns;
tool use is written out as text for templates without tool support; batch counts equal single counts.

Run: .venv/bin/pytest tests/unit/catalog/test_chat_tokenizer.py -q  (builds the tiny model, and prepares
SmolLM2's tokenizer from the bundled GGUF once per session, ~6 s)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tunery.catalog import ChatTokenizer
from tunery.domain.errors import InvalidRequest

SYSTEM = {"role": "system", "content": "You answer in one sentence."}

MULTI_TURN = [
    SYSTEM,
    {"role": "user", "content": "Hi! What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "It is Madrid.", "weight": 0},
    {"role": "user", "content": "That is wrong."},
    {"role": "assistant", "content": "Sorry: the capital of Italy is Rome.", "weight": 1},
]

CONVERSATIONS = {
    "one-turn": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ],
    "multi-turn-weighted": MULTI_TURN,
    "unicode": [
        SYSTEM,
        {"role": "user", "content": "Café, naïve, 東京, emoji 🙂👍🏽?"},
        {"role": "assistant", "content": "Ça va 🙂 — 東京 is Tokyo.\n\n  Indented line\t"},
    ],
    "control-token-text": [
        {"role": "user", "content": "Write <|im_end|> literally."},
        {"role": "assistant", "content": "Here: <|im_end|> and <|im_start|>user done"},
    ],
    "whitespace-edges": [
        {"role": "user", "content": ""},
        {"role": "assistant", "content": " leading and trailing spaces "},
        {"role": "user", "content": "\n"},
        {"role": "assistant", "content": "\nnewline first"},
    ],
    "user-last": [SYSTEM, {"role": "user", "content": "Only a question."}],
}


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}
PARIS_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_current_weather", "arguments": '{"location": "Paris, France"}'},
}
PARIS_CALL_TEXT = (
    '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Paris, France"}}\n</tool_call>'
)
TOOL_USE = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "tool_calls": [PARIS_CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "11.0"},
    {"role": "assistant", "content": "It is 11 degrees celsius in Paris."},
]
LEGACY_FUNCTIONS = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "function_call": PARIS_CALL["function"]},
    {"role": "function", "name": "get_current_weather", "content": "11.0"},
    {"role": "assistant", "content": "It is 11 degrees celsius in Paris."},
]
# (messages, tools): chats SmolLM2's template cannot render as they are.
TOOL_CONVERSATIONS: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = {
    "tool-calls": (TOOL_USE, [WEATHER_TOOL]),
    "tool-calls-with-system-and-empty-content": (
        [SYSTEM, TOOL_USE[0], {**TOOL_USE[1], "content": ""}, *TOOL_USE[2:]],
        [WEATHER_TOOL],
    ),
    "legacy-functions": (LEGACY_FUNCTIONS, [WEATHER_TOOL]),
    "parallel-calls-with-text-and-weight-0": (
        [
            TOOL_USE[0],
            {
                "role": "assistant",
                "content": "Let me look.",
                "weight": 0,
                "tool_calls": [
                    PARIS_CALL,
                    {**PARIS_CALL, "id": "call_2", "function": {"name": "get_current_weather", "arguments": "Rome"}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "11.0"},
            {"role": "tool", "tool_call_id": "call_2", "content": "18.0"},
            {"role": "assistant", "content": "Paris 11, Rome 18."},
        ],
        None,
    ),
    "content-parts": (
        [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Capital of France?"}, {"type": "text", "text": "Go."}],
            },
            {"role": "assistant", "content": "Paris."},
        ],
        None,
    ),
}


def _without_weights(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k != "weight"} for m in messages]


def _trainable_runs(tokenizer: ChatTokenizer, messages: list[dict[str, Any]]) -> list[str]:
    """The text of each maximal run of trainable tokens."""
    encoded = tokenizer.encode_chat(messages)
    runs: list[list[int]] = []
    previous = False
    for token, trainable in zip(encoded.input_ids, encoded.trainable, strict=True):
        if trainable and not previous:
            runs.append([])
        if trainable:
            runs[-1].append(token)
        previous = trainable
    return [tokenizer.decode(run) for run in runs]


@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize("conversation", CONVERSATIONS.values(), ids=CONVERSATIONS.keys())
def test_render_is_byte_identical_to_transformers(
    chat_tokenizer: ChatTokenizer, hf_tokenizer: Any, conversation: list[dict[str, Any]], add_generation_prompt: bool
) -> None:
    expected = hf_tokenizer.apply_chat_template(
        _without_weights(conversation), tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert chat_tokenizer.render(conversation, add_generation_prompt=add_generation_prompt) == expected


@pytest.mark.parametrize("conversation", CONVERSATIONS.values(), ids=CONVERSATIONS.keys())
def test_encode_chat_ids_are_the_tokenized_full_rendering(
    chat_tokenizer: ChatTokenizer, hf_tokenizer: Any, conversation: list[dict[str, Any]]
) -> None:
    encoded = chat_tokenizer.encode_chat(conversation)
    expected = hf_tokenizer.apply_chat_template(_without_weights(conversation), tokenize=True, return_dict=False)
    assert encoded.input_ids == expected
    assert encoded.input_ids == chat_tokenizer.encode(chat_tokenizer.render(conversation))
    assert len(encoded.trainable) == len(encoded.input_ids)


def test_trainable_tokens_are_exactly_the_weighted_assistant_turns(chat_tokenizer: ChatTokenizer) -> None:
    encoded = chat_tokenizer.encode_chat(MULTI_TURN)
    trained = [m["content"] for m in MULTI_TURN if m["role"] == "assistant" and m.get("weight", 1) != 0]
    # Each run is the content's own tokens plus <|im_end|>: no "<|im_start|>assistant\n" header, no "\n" after.
    eos = chat_tokenizer.eos_token_id
    expected_ids = [token for content in trained for token in [*chat_tokenizer.encode(content), eos]]
    assert [t for t, keep in zip(encoded.input_ids, encoded.trainable, strict=True) if keep] == expected_ids
    assert _trainable_runs(chat_tokenizer, MULTI_TURN) == [f"{content}<|im_end|>" for content in trained]


@pytest.mark.parametrize("conversation", CONVERSATIONS.values(), ids=CONVERSATIONS.keys())
def test_every_weighted_assistant_content_is_trained(
    chat_tokenizer: ChatTokenizer, conversation: list[dict[str, Any]]
) -> None:
    expected = [
        f"{m['content']}<|im_end|>" for m in conversation if m["role"] == "assistant" and m.get("weight", 1) != 0
    ]
    assert _trainable_runs(chat_tokenizer, conversation) == expected


def test_count_chat_counts_all_and_trainable_tokens(chat_tokenizer: ChatTokenizer) -> None:
    encoded = chat_tokenizer.encode_chat(MULTI_TURN)
    assert chat_tokenizer.count_chat(MULTI_TURN) == (len(encoded.input_ids), sum(encoded.trainable))
    assert chat_tokenizer.count_chat(CONVERSATIONS["user-last"])[1] == 0
    all_weighted_zero = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in MULTI_TURN]
    assert chat_tokenizer.count_chat(all_weighted_zero) == (len(encoded.input_ids), 0)


def test_weight_is_not_shown_to_the_template(tiny_chat_tokenizer: ChatTokenizer) -> None:
    assert tiny_chat_tokenizer.render(MULTI_TURN) == tiny_chat_tokenizer.render(_without_weights(MULTI_TURN))
    assert "weight" not in tiny_chat_tokenizer.render(MULTI_TURN)


def test_tools_are_passed_to_the_template(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = _copy_with_template(
        tiny_model_dir,
        tmp_path,
        "{% for t in tools %}{{ t['function']['name'] }}: {{ t | tojson }}\n{% endfor %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",
    )
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"city": "Zürich"}}}]
    rendered = ChatTokenizer.from_dir(folder).render(CONVERSATIONS["one-turn"], tools=tools)
    assert rendered.startswith('get_weather: {"type": "function", "function": {"name": "get_weather", ')
    assert '"Zürich"' in rendered  # tojson does not escape non-ASCII, as in transformers


def test_template_that_rewrites_past_turns_falls_back_to_finding_the_content(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Earlier assistant turns render differently from the last one, so prefix renderings are not prefixes of
    # the full chat: the spans are found by content instead (the earlier turn's eot follows " [old]").
    template = (
        "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}"
        "{% if m['role'] == 'assistant' and not loop.last %} [old]{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    folder = _copy_with_template(tiny_model_dir, tmp_path, template)
    tokenizer = ChatTokenizer.from_dir(folder)
    conversation = [*CONVERSATIONS["one-turn"], {"role": "user", "content": "Sure?"}]
    conversation += [{"role": "assistant", "content": "  Yes, Paris.  "}]

    from transformers import AutoTokenizer

    expected = AutoTokenizer.from_pretrained(folder).apply_chat_template(conversation, tokenize=False)
    assert tokenizer.render(conversation) == expected
    assert _trainable_runs(tokenizer, conversation) == ["Paris.", "Yes, Paris.<|im_end|>"]


def test_generation_tags_are_accepted_and_rendered_as_text(tiny_model_dir: Path, tmp_path: Path) -> None:
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}"
        "{% else %}{{ m['content'] }}<|im_end|>{% endif %}\n{% endfor %}"
    )
    folder = _copy_with_template(tiny_model_dir, tmp_path, template)

    from transformers import AutoTokenizer

    expected = AutoTokenizer.from_pretrained(folder).apply_chat_template(MULTI_TURN, tokenize=False)
    tokenizer = ChatTokenizer.from_dir(folder)
    assert tokenizer.render(MULTI_TURN) == expected
    assert len(_trainable_runs(tokenizer, MULTI_TURN)) == 2


@pytest.mark.parametrize(
    ("template", "messages"),
    [
        ("{{ raise_exception('Only user and assistant roles are supported') }}", CONVERSATIONS["one-turn"]),
        ("{% set x = messages.append(1) %}", CONVERSATIONS["one-turn"]),  # the sandbox is immutable
        ("{{ messages[0]['content'] + messages[0]['missing'] }}", CONVERSATIONS["one-turn"]),
    ],
    ids=["raise_exception", "mutation", "undefined-field"],
)
def test_template_errors_are_invalid_requests(
    tiny_model_dir: Path, tmp_path: Path, template: str, messages: list[dict[str, Any]]
) -> None:
    tokenizer = ChatTokenizer.from_dir(_copy_with_template(tiny_model_dir, tmp_path, template))
    with pytest.raises(InvalidRequest) as caught:
        tokenizer.render(messages)
    assert caught.value.param == "messages"
    assert "tiny" in caught.value.message or tokenizer.name in caught.value.message


def test_assistant_message_without_content_is_an_invalid_request(tiny_chat_tokenizer: ChatTokenizer) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None, "tool_calls": []}]
    with pytest.raises(InvalidRequest, match="cannot render"):
        tiny_chat_tokenizer.encode_chat(messages)


# ------------------------------------------------------------------------------------------ tool use
def test_tool_use_is_written_out_in_the_hermes_convention(chat_tokenizer: ChatTokenizer) -> None:
    tools_json = json.dumps([WEATHER_TOOL], ensure_ascii=False)
    assert chat_tokenizer.render(TOOL_USE, tools=[WEATHER_TOOL]) == (
        "<|im_start|>system\n# Tools\n\nYou may call one or more functions to assist with the user query. "
        "The functions you can call are described within <tools></tools> XML tags:\n"
        f"<tools>\n{tools_json}\n</tools>\n\n"
        "To call a function, return a JSON object with the function name and arguments within "
        "<tool_call></tool_call> XML tags:\n"
        '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n"
        f"<|im_start|>assistant\n{PARIS_CALL_TEXT}<|im_end|>\n"
        "<|im_start|>tool\n<tool_response>\n11.0\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nIt is 11 degrees celsius in Paris.<|im_end|>\n"
    )


def test_legacy_function_calls_render_like_tool_calls(tiny_chat_tokenizer: ChatTokenizer) -> None:
    rendered = tiny_chat_tokenizer.render(TOOL_USE, tools=[WEATHER_TOOL])
    assert tiny_chat_tokenizer.render(LEGACY_FUNCTIONS, tools=[WEATHER_TOOL]) == rendered


def test_the_tool_call_is_trained_and_the_tool_response_is_not(chat_tokenizer: ChatTokenizer) -> None:
    assert _trainable_runs(chat_tokenizer, TOOL_USE) == [
        f"{PARIS_CALL_TEXT}<|im_end|>",
        "It is 11 degrees celsius in Paris.<|im_end|>",
    ]
    messages, tools = TOOL_CONVERSATIONS["parallel-calls-with-text-and-weight-0"]
    runs = _trainable_runs(chat_tokenizer, messages)
    assert runs == ["Paris 11, Rome 18.<|im_end|>"]  # weight 0 on the calls: context only
    assert "<tool_response>" in chat_tokenizer.render(messages, tools)


def test_tool_call_text_keeps_arguments_that_are_not_json_and_joins_calls_with_newlines(
    tiny_chat_tokenizer: ChatTokenizer,
) -> None:
    messages, _ = TOOL_CONVERSATIONS["parallel-calls-with-text-and-weight-0"]
    prepared, tools = tiny_chat_tokenizer.template_input(messages)
    assert tools is None
    assert prepared[1] == {
        "role": "assistant",
        "content": "Let me look.\n"
        + PARIS_CALL_TEXT
        + '\n<tool_call>\n{"name": "get_current_weather", "arguments": "Rome"}\n</tool_call>',
    }
    assert [m["role"] for m in prepared] == ["user", "assistant", "tool", "tool", "assistant"]


@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize(("messages", "tools"), TOOL_CONVERSATIONS.values(), ids=TOOL_CONVERSATIONS.keys())
def test_prepared_messages_render_like_transformers(
    chat_tokenizer: ChatTokenizer,
    hf_tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    add_generation_prompt: bool,
) -> None:
    # transformers cannot render these chats itself; given the prepared messages it renders what we do.
    prepared, prepared_tools = chat_tokenizer.template_input(messages, tools)
    expected = hf_tokenizer.apply_chat_template(
        prepared, tools=prepared_tools, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert chat_tokenizer.render(messages, tools, add_generation_prompt=add_generation_prompt) == expected
    if not add_generation_prompt:
        ids = hf_tokenizer.apply_chat_template(prepared, tools=prepared_tools, tokenize=True, return_dict=False)
        assert chat_tokenizer.encode_chat(messages, tools).input_ids == ids


def test_templates_that_read_tools_get_the_messages_unchanged(tiny_model_dir: Path, tmp_path: Path) -> None:
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] or '' }}"
        "{% for c in m['tool_calls'] or [] %}{{ c['function'] | tojson }}{% endfor %}<|im_end|>\n{% endfor %}"
    )
    tokenizer = ChatTokenizer.from_dir(_copy_with_template(tiny_model_dir, tmp_path, template))
    assert tokenizer.template_input(TOOL_USE, [WEATHER_TOOL]) == (TOOL_USE, [WEATHER_TOOL])
    assert '{"name": "get_current_weather", "arguments": "{\\"location\\"' in tokenizer.render(TOOL_USE)


def test_templates_without_a_tool_role_get_tool_results_as_one_user_message(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    template = (
        "{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
        "{{ raise_exception('Unknown role') }}{% endif %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    )
    tokenizer = ChatTokenizer.from_dir(_copy_with_template(tiny_model_dir, tmp_path, template))
    messages, _ = TOOL_CONVERSATIONS["parallel-calls-with-text-and-weight-0"]
    prepared, _ = tokenizer.template_input(messages)
    assert [m["role"] for m in prepared] == ["user", "assistant", "user", "assistant"]
    assert prepared[2]["content"] == "<tool_response>\n11.0\n</tool_response>\n<tool_response>\n18.0\n</tool_response>"
    # This template has no generation prompt, so the role header is part of the trained turn.
    assert _trainable_runs(tokenizer, messages) == ["[assistant] Paris 11, Rome 18."]


def test_content_parts_are_joined_with_newlines(tiny_chat_tokenizer: ChatTokenizer) -> None:
    messages, _ = TOOL_CONVERSATIONS["content-parts"]
    assert tiny_chat_tokenizer.render(messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCapital of France?\nGo.<|im_end|>\n"
        "<|im_start|>assistant\nParis.<|im_end|>\n"
    )


def test_an_empty_tool_list_adds_no_tools_prompt(tiny_chat_tokenizer: ChatTokenizer) -> None:
    conversation = CONVERSATIONS["one-turn"]
    assert tiny_chat_tokenizer.render(conversation, tools=[]) == tiny_chat_tokenizer.render(conversation)


# ---------------------------------------------------------------------------------------- counting
EDGE_CASES = [
    # Leading newlines: the first content token starts inside the header's "\n" token (offsets fallback).
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\n\nLeading newlines."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\n"}],
    [{"role": "assistant", "content": "Assistant first."}, {"role": "user", "content": "Ok"}],
]


def test_count_chat_batch_counts_like_count_chat_and_encode_chat(chat_tokenizer: ChatTokenizer) -> None:
    chats: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = [
        *((conversation, None) for conversation in CONVERSATIONS.values()),
        *TOOL_CONVERSATIONS.values(),
        *((conversation, None) for conversation in EDGE_CASES),
        (MULTI_TURN, None),
    ]
    expected = []
    for messages, tools in chats:
        encoded = chat_tokenizer.encode_chat(messages, tools)
        expected.append((len(encoded.input_ids), encoded.trainable_count))
        assert chat_tokenizer.count_chat(messages, tools) == expected[-1]
    assert chat_tokenizer.count_chat_batch(chats * 3) == expected * 3  # more than one chunk of chats
    assert chat_tokenizer.count_chat_batch([]) == []


def test_counts_agree_when_a_trained_span_ends_inside_a_token(tokenizer_dir: Path, tmp_path: Path) -> None:
    # No end-of-turn token after the content: "sleep" + "ing" tokenizes as " sleeping", across the span's end.
    folder = _copy_with_template(tokenizer_dir, tmp_path, "{% for m in messages %}{{ m['content'] }}ing{% endfor %}")
    tokenizer = ChatTokenizer.from_dir(folder, context_length=64)
    messages = [{"role": "assistant", "content": "The cat is sleep"}, {"role": "user", "content": "ok"}]
    encoded = tokenizer.encode_chat(messages)
    assert tokenizer.count_chat_batch([(messages, None)]) == [(len(encoded.input_ids), encoded.trainable_count)]
    assert encoded.trainable_count > 0


def test_count_chat_batch_raises_when_an_example_cannot_be_rendered(tiny_chat_tokenizer: ChatTokenizer) -> None:
    broken = [{"role": "user", "content": "Hi"}, {"role": "assistant"}]
    with pytest.raises(InvalidRequest, match="cannot render"):
        tiny_chat_tokenizer.count_chat_batch([(MULTI_TURN, None)] * 40 + [(broken, None)])


def test_from_dir_reads_the_transformers_4_layout(tiny_model_dir: Path, tmp_path: Path) -> None:
    # transformers 4 kept the template inside tokenizer_config.json (transformers 5 writes chat_template.jinja),
    # and older folders keep the special tokens in special_tokens_map.json.
    folder = tmp_path / "legacy"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "tokenizer.json", folder)
    config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    special = {key: config.pop(key) for key in ("bos_token", "eos_token", "unk_token", "pad_token")}
    config["chat_template"] = "{{ bos_token }}" + (tiny_model_dir / "chat_template.jinja").read_text()
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps(special))

    from transformers import AutoTokenizer

    expected = AutoTokenizer.from_pretrained(folder).apply_chat_template(MULTI_TURN, tokenize=False)
    legacy = ChatTokenizer.from_dir(folder, context_length=64)
    assert legacy.render(MULTI_TURN) == expected
    assert expected.startswith("<|im_start|><|im_start|>system")
    assert (legacy.eos_token_id, legacy.context_length, legacy.name) == (2, 64, "legacy")


def test_model_facts_come_from_the_folder(tiny_chat_tokenizer: ChatTokenizer, tiny_model_dir: Path) -> None:
    assert tiny_chat_tokenizer.context_length == 1024  # config.json max_position_embeddings
    assert tiny_chat_tokenizer.eos_token_id == 2
    assert tiny_chat_tokenizer.stop_token_ids == (2,)
    assert tiny_chat_tokenizer.vocab_size == 512
    assert tiny_chat_tokenizer.name == tiny_model_dir.name
    text = "The capital of France is Paris."
    assert tiny_chat_tokenizer.decode(tiny_chat_tokenizer.encode(text)) == text


def test_from_dir_without_a_chat_template_fails(tiny_model_dir: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_model_dir / "tokenizer.json", tmp_path)
    with pytest.raises(ValueError, match="no chat template"):
        ChatTokenizer.from_dir(tmp_path)


def _copy_with_template(source: Path, tmp_path: Path, template: str) -> Path:
    folder = tmp_path / "tiny"
    shutil.copytree(source, folder, dirs_exist_ok=True)
    (folder / "chat_template.jinja").write_text(template)
    return folder
