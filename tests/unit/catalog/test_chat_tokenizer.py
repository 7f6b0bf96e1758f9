"""ChatTokenizer renders and tokenizes exactly like transformers, and marks only weighted assistant turns.

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
