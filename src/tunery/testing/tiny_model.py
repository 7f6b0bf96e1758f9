"""Build a tiny random Llama with a real chat tokenizer, for tests and demos that cannot download a model.

The model is shaped like SmolLM2 (Llama, grouped-query attention, tied embeddings, ChatML special tokens
and SmolLM2's exact chat template) but has 2 layers and a 512-token BPE vocabulary trained on the spot from
``tiny_corpus.txt``, so it builds in about a second on a laptop CPU. Its weights are random: it generates
nonsense, which is all a test of the plumbing needs. Uses torch and transformers: never import it from the
web process.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# SmolLM2-135M-Instruct's chat template, as its GGUF carries it (a test checks they still match).
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Same ids as SmolLM2: 0 <|endoftext|>, 1 <|im_start|>, 2 <|im_end|>.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TINY_VOCAB_SIZE = 512
TINY_CONTEXT_LENGTH = 1024


def build_tiny_model(path: Path, *, seed: int = 0) -> Path:
    """Write a 2-layer random ``LlamaForCausalLM`` and its tokenizer into ``path`` with ``save_pretrained``.

    The folder loads with ``AutoModelForCausalLM`` / ``AutoTokenizer`` and with ``ChatTokenizer.from_dir``.
    The same ``seed`` gives the same files; the global torch random state is left as it was.

    Returns:
        ``path``, created if needed.
    """
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_CONTEXT_LENGTH,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def train_tiny_tokenizer(vocab_size: int = TINY_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the bundled corpus, with SmolLM2's special tokens and template."""
    corpus = resources.files("tunery.testing").joinpath("tiny_corpus.txt").read_text(encoding="utf-8")
    backend = Tokenizer(models.BPE())
    # Byte-level like SmolLM2's tokenizer: every string is encodable, offsets map back to characters.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus.splitlines(keepends=True), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
        model_max_length=TINY_CONTEXT_LENGTH,
    )
    tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    return tokenizer
