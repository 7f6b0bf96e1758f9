"""Training throughput: Tunery's trainer against TRL ``SFTTrainer``/``DPOTrainer`` + PEFT, side by side in one run.

Same base model, LoRA r=16/alpha=32/dropout 0 on q,k,v,o, batch 8, one epoch, sequence length 512, learning
rate 5e-4 (linear decay, no warm-up), seed 0, fp32 weights. Each trainer runs in its own subprocess (so its peak
RSS is its own). ``--trainers`` picks among (default: all five):

SFT - generated chats (mixed lengths, 50-500 tokens, loss on assistant turns only, the same token ids for every
trainer):

* ``trl_default``  - ``SFTConfig`` defaults (no packing, gradient checkpointing, bf16 where the CPU is fast at it),
* ``trl_tuned``    - what a capable user picks instead: no gradient checkpointing (memory is not the limit here),
                     ``train_sampling_strategy="group_by_length"`` (batches of similar lengths pad little), bf16
                     where the CPU is measured fast at it (``tunery.hardware.precision``, as for every trainer),
* ``trl_packed``   - TRL packing ``packing_strategy="wrapped"``, no gradient checkpointing, with the batch size
                     chosen so it takes as many optimizer steps as the unpacked trainers (packing 512-token rows
                     at batch 8 would take a fraction of the steps: fewer, bigger updates are not the same run),
* ``trl_packed_bfd`` - the same with TRL's default packing strategy ``"bfd"`` (padding-free best-fit),
* ``tunery``       - ``tunery.training.loop.run`` (per-step packing without cross-contamination, LM head on
                     trained positions only, bf16 autocast where the CPU has it).

DPO (sigmoid loss, beta 0.1, 8 pairs a step) - generated preference pairs (``generate_pairs``: a prompt and two
replies, each side about 90-280 tokens; the preferred reply has a learnable style - its opening phrase and the half of
the vocabulary it draws from - and lengths carry no signal). Both trainers read the same JSONL records (TRL as
conversational ``prompt``/``chosen``/``rejected`` columns); both score the reply tokens (TRL also scores the
newline after ``<|im_end|>``: one token more per side). The reference is the base model for both:

* ``trl_dpo``      - ``DPOTrainer`` with ``DPOConfig`` defaults (gradient checkpointing; the reference forward,
                     the model with its adapter disabled, inside every step), bf16 only where the CPU has it,
* ``tunery_dpo``   - ``loop.run`` with ``method="dpo"`` (reference log-probs computed once before the first
                     step, pairs packed flat, LM head on reply tokens only).

Reported for SFT: real (non-padding) tokens/s over the training steps, the ratio against each TRL setup, peak
RSS, validation loss after training (one evaluator for all: ``loop.evaluate`` in fp32). For DPO: training pairs
per second and real tokens/s (both sides, prompt included) of the training time - for Tunery from the start of
its reference pass to the end of its last step (the reference seconds shown apart), for TRL from the start of
training to the end of its last step (its reference forwards are in the steps); tokenizing and model loading are
left out of both - the ratio Tunery/TRL in pairs/s, peak RSS, and on held-out pairs (one evaluator for both:
Tunery's ``dpo_evaluate`` in fp32, each trained adapter reloaded onto a fresh base model, reference = that model
with the adapter disabled) the reward accuracy (share of pairs whose chosen reward beats the rejected one's),
the mean reward margin and the DPO loss.

MFU is against a GEMM peak timed in the same run. FLOP convention: 4·N per real token for SFT (forward 2N +
activation-gradient backward 2N; no weight gradients for frozen weights) and 6·N for DPO (plus one reference
forward, whether computed up front or in each step; TRL's gradient-checkpointing recompute is not counted),
N = non-embedding parameters + the LM head's where it is computed (every position for TRL's SFT, trained
positions only for Tunery and for both DPO trainers). Attention's L² term is left out (as in PaLM's MFU, which
counts it; here it would add ~3-5 % at 512 tokens). The machine may be shared: each run first waits (up to
``--quiet-wait`` seconds) for other processes to calm down, and every row reports the cores others kept busy.

Each configuration runs ``--repeat`` times (default 3, interleaved: trainer A, B, ..., A, B, ...); the tables
give the median tokens/s and the spread (min-max). MFU is given against the measured GEMM peak of the dtype the
trainer used and against the CPU's nominal peak (cores x clock x FLOP/cycle of its vector units, an estimate:
``nominal_peak``).

Run (all of it takes hours on 2 cores; results in ``bench/out/train_throughput/results.json``)::

    PYTHONPATH=src .venv/bin/python bench/train_throughput.py --models smollm2 --trainers trl_tuned tunery
    PYTHONPATH=src .venv/bin/python bench/train_throughput.py --models tiny --train-examples 32   # a quick look
    PYTHONPATH=src .venv/bin/python bench/train_throughput.py --models tiny --trainers tunery_dpo trl_dpo  # DPO
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out" / "train_throughput"
MODEL_CACHE = ROOT / "out" / "models"
SEQ_LEN = 512
BATCH = 8
LEARNING_RATE = 5e-4
SEED = 0
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
SFT_TRAINERS = ("trl_default", "trl_tuned", "trl_packed", "trl_packed_bfd", "tunery")
DPO_TRAINERS = ("trl_dpo", "tunery_dpo")
TRAINERS = SFT_TRAINERS + DPO_TRAINERS
# Examples (SFT) and preference pairs (DPO) per model: the same for every trainer of a method. 32 optimizer steps
# for SFT (batch 8): with 3, one batch's padding and the first step's warm-up swung the ratios by 20-30 %, and 8
# still let a few long batches decide. With 3 repeats the whole default run takes hours on 2 cores: for a quick
# look pass --train-examples 64 --repeat 1.
DEFAULT_EXAMPLES = {"smollm2": 256, "tiny": 256}
DEFAULT_PAIRS = {"smollm2": 16, "tiny": 32}
VALID_EXAMPLES = 16
VALID_PAIRS = 16
DPO_BETA = 0.1
# The learnable style of the generated preference pairs: the preferred reply opens with one phrase, the rejected
# reply with another; lengths are drawn independently, so length says nothing about which reply is preferred.
PREFERRED_OPENING = "Sure thing."
REJECTED_OPENING = "Well, maybe so."


# --------------------------------------------------------------------------------------------- data
def vocabulary_words(tokenizer_json: Path) -> list[str]:
    """Lower-case whole-word tokens of a byte-level BPE vocabulary, most frequent merges first (a Zipf source)."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_json)).get_vocab()
    words = [(i, t[1:]) for t, i in vocab.items() if t.startswith("Ġ") and t[1:].isalpha() and t[1:].islower()]
    return [w for _, w in sorted(words) if len(w) > 1 or w in ("a", "i")]


def sentence_text(rng: random.Random, words: list[str], n_words: int) -> str:
    """Sentences of Zipf-distributed words (rank r drawn with probability ~1/r), capitalised and punctuated."""
    out: list[str] = []
    while len(out) < n_words:
        length = min(rng.randint(5, 18), n_words - len(out))
        sentence = [words[min(int(rng.paretovariate(1.0)) - 1, len(words) - 1)] for _ in range(length)]
        sentence[0] = sentence[0].capitalize()
        sentence[-1] += rng.choice(".....?!")
        out.extend(sentence)
    return " ".join(out)


def generate_chats(seed: int, words: list[str], tokenizer: Any, n: int, lo: int = 50, hi: int = 500) -> list[dict]:
    """``n`` chats of lo..hi tokens (uniform), half with a system prompt, ~40 % prompt and ~60 % answer."""
    rng = random.Random(seed)
    chats = []
    while len(chats) < n:
        target = rng.randint(lo, hi)
        messages = []
        if rng.random() < 0.5:
            messages.append({"role": "system", "content": sentence_text(rng, words, rng.randint(5, 25))})
        user_words = max(3, int(target * 0.4 * 0.75))
        messages.append({"role": "user", "content": sentence_text(rng, words, user_words)})
        answer = sentence_text(rng, words, max(3, int(target * 0.6 * 0.75)))
        messages.append({"role": "assistant", "content": answer})
        total, _ = tokenizer.count_chat(messages)
        while total > target and len(answer.split()) > 3:  # trim the answer down to the drawn length
            answer = " ".join(answer.split()[: max(3, len(answer.split()) - max(1, (total - target) // 2))])
            messages[-1]["content"] = answer
            total, _ = tokenizer.count_chat(messages)
        if lo <= total <= hi:
            chats.append({"messages": messages})
    return chats


def generate_pairs(
    seed: int,
    words: list[str],
    tokenizer: Any,
    n: int,
    prompt_tokens: tuple[int, int] = (20, 150),
    reply_tokens: tuple[int, int] = (20, 150),
) -> list[dict]:
    """``n`` preference records (Tunery's JSONL format): a prompt (half with a system message, words from the whole
    list) and two replies of independently drawn lengths. The learnable style: the preferred reply opens with
    ``PREFERRED_OPENING`` and draws its words from the even Zipf ranks, the rejected one opens with
    ``REJECTED_OPENING`` and draws from the odd ranks; length says nothing about which is preferred. Every side
    (prompt + reply) fits in ``SEQ_LEN`` tokens, so neither trainer truncates."""
    rng = random.Random(seed)
    styles = ((PREFERRED_OPENING, words[0::2]), (REJECTED_OPENING, words[1::2]))
    records: list[dict] = []
    while len(records) < n:
        messages = []
        if rng.random() < 0.5:
            messages.append({"role": "system", "content": sentence_text(rng, words, rng.randint(5, 25))})
        user_words = max(3, int(rng.randint(*prompt_tokens) * 0.75))
        messages.append({"role": "user", "content": sentence_text(rng, words, user_words)})
        replies = [
            {
                "role": "assistant",
                "content": f"{opening} {sentence_text(rng, vocabulary, int(rng.randint(*reply_tokens) * 0.75))}",
            }
            for opening, vocabulary in styles
        ]
        if max(tokenizer.count_chat([*messages, reply])[0] for reply in replies) <= SEQ_LEN:
            records.append(
                {
                    "input": {"messages": messages},
                    "preferred_output": [replies[0]],
                    "non_preferred_output": [replies[1]],
                }
            )
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------- models
def prepare_smollm2() -> Path:
    from tunery.catalog import BUNDLED_MODELS
    from tunery.catalog.materialize import prepare

    return prepare(BUNDLED_MODELS[0], MODEL_CACHE, "all")


def build_tiny_llama(folder: Path, corpus: list[str]) -> Path:
    """A random ~34 M-parameter Llama (8 layers, hidden 512, vocab 16 384) with a BPE tokenizer trained on
    ``corpus`` and SmolLM2's chat template and special tokens."""
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from tunery.testing.tiny_model import SMOLLM2_CHAT_TEMPLATE, SPECIAL_TOKENS

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=16384,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
        model_max_length=2048,
    )
    tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=16384,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def parameter_counts(model_dir: Path) -> dict[str, int]:
    """Non-embedding parameters of the decoder and the LM head's size, from ``config.json``."""
    config = json.loads((model_dir / "config.json").read_text())
    h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or h // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    per_layer = h * h + 2 * h * kv + h * h + 3 * h * inter + 2 * h  # q, k+v, o, MLP, two norms
    return {"body": layers * per_layer + h, "head": config["vocab_size"] * h}


# --------------------------------------------------------------------------------------------- machine
def gemm_peak(dtype_name: str, threads: int, seconds: float = 3.0) -> float:
    """Best GFLOP/s of a square matmul (2048 for fp32; smaller when the dtype is slow) over ~``seconds``."""
    import torch

    torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    size = 2048
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    start = time.perf_counter()
    a[:256, :256] @ b[:256, :256]  # warm up, and find out whether this dtype is usable at all
    if time.perf_counter() - start > 0.05:
        size = 256
        a, b = a[:size, :size].contiguous(), b[:size, :size].contiguous()
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - t) / 1e9)
    return best


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, in clock ticks, from ``/proc/stat``."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def machine_busy_cores(seconds: float = 2.0) -> float:
    """How many cores the machine keeps busy over the next ``seconds`` (everyone's processes)."""
    busy0, _ = busy_jiffies()
    time.sleep(seconds)
    busy1, _ = busy_jiffies()
    return (busy1 - busy0) / os.sysconf("SC_CLK_TCK") / seconds


def wait_for_quiet(max_seconds: float, threshold: float = 0.3) -> float:
    """Wait (up to ``max_seconds``) until other processes use less than ``threshold`` cores; returns the last level.

    This machine is shared: other jobs can take most of its 2 cores for minutes, which would measure them, not us.
    """
    deadline = time.perf_counter() + max_seconds
    level = machine_busy_cores()
    while level > threshold and time.perf_counter() < deadline:
        time.sleep(5)
        level = machine_busy_cores()
    return level


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# FLOP per cycle per core of the vector units (an FMA counts 2): (fp32, bf16). AMX tiles do 1024 bf16 FLOP a cycle;
# AVX-512 BF16 on Zen 4 runs 512-bit ops as two 256-bit halves; without AVX-512 BF16 there is no native bf16.
FLOP_PER_CYCLE = {
    "amx_bf16": (64, 1024),
    "avx512_bf16 intel": (64, 128),
    "avx512_bf16 amd": (32, 64),
    "avx512f": (64, 0),
    "avx2": (32, 0),
}


def cpu_flags() -> list[str]:
    text = Path("/proc/cpuinfo").read_text()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")
    return [flag for flag in wanted if f" {flag} " in f"{line} "]


def nominal_peak(dtype: str, threads: int) -> float:
    """Cores x clock x FLOP/cycle (``FLOP_PER_CYCLE``), GFLOP/s; 0 for bf16 where it is not native. The clock is
    the one ``/proc/cpuinfo`` reports (a VM's nominal clock; boost can exceed it, so a measured GEMM peak can
    beat this nominal one)."""
    text = Path("/proc/cpuinfo").read_text()
    flags = cpu_flags()
    mhz = max((float(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu MHz")), default=0.0)
    vendor = "amd" if "AMD" in cpu_name() else "intel"
    if "amx_bf16" in flags:
        per_cycle = FLOP_PER_CYCLE["amx_bf16"]
    elif "avx512_bf16" in flags:
        per_cycle = FLOP_PER_CYCLE[f"avx512_bf16 {vendor}"]
    elif "avx512f" in flags:
        per_cycle = FLOP_PER_CYCLE["avx512f"]
    else:
        per_cycle = FLOP_PER_CYCLE["avx2"]
    return threads * mhz / 1000 * per_cycle[0 if dtype == "fp32" else 1]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


# --------------------------------------------------------------------------------------------- workers
def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Train one configuration in this (fresh) process and measure it."""
    import torch

    from tunery.hardware.precision import fastest_format

    torch.set_num_threads(job["threads"])
    bf16 = fastest_format("autocast") == "bf16"  # measured here, as Tunery's dtype "auto" decides
    if job["trainer"] == "tunery":
        result = train_tunery(job)
    elif job["trainer"] == "tunery_dpo":
        result = train_tunery_dpo(job)
    elif job["trainer"] == "trl_dpo":
        result = train_trl_dpo(job, bf16=bf16)
    else:
        result = train_trl(job, variant=job["trainer"], bf16=bf16)
    result["dtype"] = "bf16" if bf16 else "fp32"
    return result


def train_tunery(job: dict[str, Any]) -> dict[str, Any]:
    from tunery.training.loop import run
    from tunery.training.progress import ProgressKind, ProgressReader, ProgressWriter
    from tunery.training.spec import LoraSpec, TrainingSpec

    run_dir = Path(job["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = TrainingSpec(
        job_id="bench",
        run_dir=str(run_dir),
        base_model_dir=job["model_dir"],
        train_file=job["train_file"],
        validation_file=None,
        method="supervised",
        n_epochs=1,
        batch_size=BATCH,
        learning_rate=LEARNING_RATE,
        seed=SEED,
        lora=LoraSpec(r=16, alpha=32, target_modules=LORA_TARGETS),
        max_seq_len=SEQ_LEN,
        metrics_every=10**9,
        keep_checkpoints=1,
        num_threads=job["threads"],
    )
    run(spec, ProgressWriter(run_dir))
    rss = peak_rss_mb()
    records = ProgressReader(run_dir).read_new()
    started = next(r for r in records if r.kind is ProgressKind.STARTED)
    steps = [r for r in records if r.kind is ProgressKind.STEP]
    model = load_with_adapter(job["model_dir"], run_dir / "adapter")
    return {
        "steps": len(steps),
        "real_tokens": steps[-1].data["trained_tokens"],
        "train_seconds": steps[-1].time - started.time,
        "head_fraction": started.data["trainable_tokens_per_epoch"] / started.data["tokens_per_epoch"],
        "peak_rss_mb": rss,
        "valid_loss": validation_loss(model, job),
        "startup": started.data["timings"],  # where the trainer's start-up went (compiling attention included)
    }


def train_trl(job: dict[str, Any], *, variant: str, bf16: bool) -> dict[str, Any]:
    import warnings

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tunery.catalog.chat_tokenizer import ChatTokenizer
    from tunery.training.examples import read_examples

    warnings.filterwarnings("ignore")  # TRL/transformers advice about CPU training: not what is measured
    examples = read_examples(Path(job["train_file"]), ChatTokenizer.from_dir(Path(job["model_dir"])), SEQ_LEN)
    dataset = Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])
    batch = BATCH
    options: dict[str, Any] = {}
    if variant == "trl_tuned":
        options = {"gradient_checkpointing": False, "train_sampling_strategy": "group_by_length"}
    elif variant in ("trl_packed", "trl_packed_bfd"):
        # as many optimizer steps as unpacked batches of 8: rows of SEQ_LEN tokens, spread over that many steps
        steps = math.ceil(len(examples) / BATCH)
        rows = math.ceil(sum(len(e.input_ids) for e in examples) / SEQ_LEN)
        batch = max(1, math.ceil(rows / steps))
        strategy = "wrapped" if variant == "trl_packed" else "bfd"
        options = {"packing": True, "packing_strategy": strategy, "gradient_checkpointing": False}
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32, attn_implementation="sdpa")
    config = SFTConfig(
        output_dir=job["run_dir"],
        max_length=SEQ_LEN,
        per_device_train_batch_size=batch,
        num_train_epochs=1,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="linear",
        seed=SEED,
        bf16=bf16,  # TRL's default is True; on CPUs without native bf16 it is ~100x slower, so off there
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        **options,
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM")
    tokenizer = AutoTokenizer.from_pretrained(job["model_dir"])
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)

    marks: dict[str, Any] = {"steps": 0, "tokens": 0}
    collate = trainer.data_collator

    def counting_collator(batch: list[dict[str, Any]]) -> dict[str, Any]:
        out = collate(batch)
        marks["tokens"] += int(out["attention_mask"].sum()) if "attention_mask" in out else out["input_ids"].numel()
        return out

    class Clock(TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            marks["begin"] = time.perf_counter()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            marks["end"] = time.perf_counter()
            marks["steps"] += 1

    trainer.data_collator = counting_collator
    trainer.add_callback(Clock())
    trainer.train()
    rss = peak_rss_mb()
    return {
        "steps": marks["steps"],
        "real_tokens": marks["tokens"],
        "train_seconds": marks["end"] - marks["begin"],
        "head_fraction": 1.0,
        "peak_rss_mb": rss,
        "valid_loss": validation_loss(trainer.model, job),
    }


def train_tunery_dpo(job: dict[str, Any]) -> dict[str, Any]:
    """Tunery's DPO (``method="dpo"``). Timed from the start of its reference pass (the reference log-probs of
    every training pair, computed once before the first step) to the end of the last step: the same span as
    TRL's, whose reference forward runs inside each step. Tokenizing and model loading are left out of both."""
    from tunery.training import loop
    from tunery.training.progress import ProgressKind, ProgressReader, ProgressWriter
    from tunery.training.spec import LoraSpec, TrainingSpec

    run_dir = Path(job["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = TrainingSpec(
        job_id="bench",
        run_dir=str(run_dir),
        base_model_dir=job["model_dir"],
        train_file=job["train_file"],
        validation_file=None,  # validated afterwards by the shared evaluator (dpo_validation)
        method="dpo",
        n_epochs=1,
        batch_size=BATCH,
        learning_rate=LEARNING_RATE,
        seed=SEED,
        lora=LoraSpec(r=16, alpha=32, target_modules=LORA_TARGETS),
        max_seq_len=SEQ_LEN,
        metrics_every=10**9,
        keep_checkpoints=1,
        dpo_beta=DPO_BETA,
        num_threads=job["threads"],
    )
    marks: dict[str, float] = {"reference_seconds": 0.0}
    compute_reference = loop.with_reference

    def timed_reference(*args: Any, **kwargs: Any) -> Any:  # a clock around the reference pass; nothing else changes
        marks.setdefault("reference_began", time.time())  # progress records carry time.time()
        began = time.perf_counter()
        try:
            return compute_reference(*args, **kwargs)
        finally:
            marks["reference_seconds"] += time.perf_counter() - began

    loop.with_reference = timed_reference
    try:
        loop.run(spec, ProgressWriter(run_dir))
    finally:
        loop.with_reference = compute_reference
    rss = peak_rss_mb()
    steps = [r for r in ProgressReader(run_dir).read_new() if r.kind is ProgressKind.STEP]
    model = load_with_adapter(job["model_dir"], run_dir / "adapter")
    return {
        "steps": len(steps),
        "pairs": pair_count(job["train_file"]),
        "real_tokens": steps[-1].data["trained_tokens"],
        "train_seconds": steps[-1].time - marks["reference_began"],
        "reference_seconds": marks["reference_seconds"],
        "head_fraction": pair_head_fraction(job),
        "peak_rss_mb": rss,
        "last_train_reward_accuracy": steps[-1].data["train_reward_accuracy"],
        **dpo_validation(model, job),
    }


def train_trl_dpo(job: dict[str, Any], *, bf16: bool) -> dict[str, Any]:
    """TRL's ``DPOTrainer`` with ``DPOConfig`` defaults (gradient checkpointing on, the reference forward inside
    each step: the base model with the adapter disabled), bf16 only where the CPU has it. Timed from the start of
    training to the end of the last step."""
    import warnings

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    warnings.filterwarnings("ignore")  # TRL/transformers advice about CPU training: not what is measured
    records = [json.loads(line) for line in Path(job["train_file"]).read_text().splitlines() if line.strip()]
    dataset = Dataset.from_list(
        [
            {"prompt": r["input"]["messages"], "chosen": r["preferred_output"], "rejected": r["non_preferred_output"]}
            for r in records
        ]
    )
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32, attn_implementation="sdpa")
    config = DPOConfig(
        output_dir=job["run_dir"],
        max_length=SEQ_LEN,
        per_device_train_batch_size=BATCH,
        num_train_epochs=1,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="linear",
        seed=SEED,
        beta=DPO_BETA,
        bf16=bf16,  # TRL's default is True; on CPUs without native bf16 it is ~100x slower, so off there
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM")
    tokenizer = AutoTokenizer.from_pretrained(job["model_dir"])
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)

    marks: dict[str, Any] = {"steps": 0, "tokens": 0}
    collate = trainer.data_collator

    def counting_collator(batch: list[dict[str, Any]]) -> dict[str, Any]:
        out = collate(batch)
        marks["tokens"] += int(out["attention_mask"].sum())  # both sides, prompt and reply, no padding
        return out

    class Clock(TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            marks["begin"] = time.perf_counter()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            marks["end"] = time.perf_counter()
            marks["steps"] += 1

    trainer.data_collator = counting_collator
    trainer.add_callback(Clock())
    trainer.train()
    rss = peak_rss_mb()
    accuracies = [log["rewards/accuracies"] for log in trainer.state.log_history if "rewards/accuracies" in log]
    adapter_dir = Path(job["run_dir"]) / "adapter"
    trainer.model.save_pretrained(str(adapter_dir))  # evaluated like Tunery's: reloaded onto a fresh base model
    return {
        "steps": marks["steps"],
        "pairs": len(dataset),
        "real_tokens": marks["tokens"],
        "train_seconds": marks["end"] - marks["begin"],
        "reference_seconds": None,  # inside the steps
        "head_fraction": pair_head_fraction(job),
        "peak_rss_mb": rss,
        "last_train_reward_accuracy": accuracies[-1] if accuracies else None,
        **dpo_validation(load_with_adapter(job["model_dir"], adapter_dir), job),
    }


def pair_count(path: str) -> int:
    return sum(1 for line in Path(path).read_text().splitlines() if line.strip())


def pair_head_fraction(job: dict[str, Any]) -> float:
    """Share of positions that are scored (reply tokens): both trainers run the LM head on those only."""
    from tunery.catalog.chat_tokenizer import ChatTokenizer
    from tunery.training.loop import target_count
    from tunery.training.preferences import read_pairs

    pairs = read_pairs(Path(job["train_file"]), ChatTokenizer.from_dir(Path(job["model_dir"])), SEQ_LEN)
    return sum(target_count(p) for p in pairs) / sum(len(p) for p in pairs)


def dpo_validation(model: Any, job: dict[str, Any]) -> dict[str, float]:
    """The shared DPO evaluator: Tunery's ``dpo_evaluate`` in fp32 on the validation pairs, the reference being
    the base model (``model`` with its adapter disabled), which is where both trainers start."""
    import torch

    from tunery.catalog.chat_tokenizer import ChatTokenizer
    from tunery.training.dpo import dpo_evaluate, with_reference
    from tunery.training.loop import DEFAULT_MICRO_BATCH_TOKENS, Setup
    from tunery.training.preferences import read_pairs

    pairs = read_pairs(Path(job["valid_file"]), ChatTokenizer.from_dir(Path(job["model_dir"])), SEQ_LEN)
    model.to(torch.float32)
    setup = Setup(torch.device("cpu"), None, SEQ_LEN, DEFAULT_MICRO_BATCH_TOKENS, layout="mask")
    with model.disable_adapter():
        pairs = with_reference(model, pairs, setup)
    metrics = {"dpo_loss" if k == "loss" else k: v for k, v in dpo_evaluate(model, pairs, setup, DPO_BETA).items()}
    return {f"valid_{name}": float(value if value is not None else math.nan) for name, value in metrics.items()}


def load_with_adapter(model_dir: str, adapter_dir: Path) -> Any:
    import warnings

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(base, str(adapter_dir))


def validation_loss(model: Any, job: dict[str, Any]) -> float:
    """Mean cross-entropy per assistant token over the validation file, fp32, packed without contamination."""
    import torch

    from tunery.catalog.chat_tokenizer import ChatTokenizer
    from tunery.training.examples import read_examples
    from tunery.training.loop import Setup, evaluate

    examples = read_examples(Path(job["valid_file"]), ChatTokenizer.from_dir(Path(job["model_dir"])), SEQ_LEN)
    model.to(torch.float32)
    loss, _ = evaluate(model, examples, Setup(torch.device("cpu"), None, SEQ_LEN, 4096, layout="mask"))
    return float(loss or math.nan)


# --------------------------------------------------------------------------------------------- driver
def run_worker(job: dict[str, Any]) -> dict[str, Any]:
    """Run one trainer in a fresh subprocess; also measure how busy OTHER processes kept the machine meanwhile."""
    shutil.rmtree(job["run_dir"], ignore_errors=True)  # a fresh run folder: progress.jsonl is appended to
    job_file = Path(job["run_dir"]) / "job.json"
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(json.dumps(job))
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent / "src"), "TOKENIZERS_PARALLELISM": "false"}
    busy_before, _ = busy_jiffies()
    own_before = os.times()
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--worker", str(job_file)], env=env, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    own_after = os.times()
    busy_after, _ = busy_jiffies()
    result_file = Path(job["run_dir"]) / "result.json"
    if done.returncode != 0 or not result_file.exists():
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-6000:])
        raise SystemExit(f"{job['trainer']} on {job['model']} failed (exit {done.returncode})")
    result = json.loads(result_file.read_text())
    own = (own_after.children_user + own_after.children_system) - (
        own_before.children_user + own_before.children_system
    )
    machine = (busy_after - busy_before) / os.sysconf("SC_CLK_TCK")
    result["others_cores"] = max(0.0, (machine - own) / wall)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "tiny"], choices=["smollm2", "tiny"])
    parser.add_argument("--trainers", nargs="+", default=list(TRAINERS), choices=TRAINERS)
    parser.add_argument("--train-examples", type=int, default=None, help="SFT, per model (default: 64 / 64)")
    parser.add_argument("--train-pairs", type=int, default=None, help="DPO, per model (default: 16 / 32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs per trainer: median and spread are reported")
    parser.add_argument("--quiet-wait", type=float, default=120, help="seconds to wait for other jobs to calm down")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        job = json.loads(args.worker.read_text())
        result = worker(job)
        (Path(job["run_dir"]) / "result.json").write_text(json.dumps(result))
        return

    from tunery.catalog.chat_tokenizer import ChatTokenizer

    OUT.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    wait_for_quiet(args.quiet_wait)
    peaks = {name: gemm_peak(name, args.threads) for name in ("fp32", "bf16")}
    print(f"GEMM peak, {args.threads} threads: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s")
    smollm2 = prepare_smollm2()
    words = vocabulary_words(smollm2 / "tokenizer.json")
    rows: list[dict[str, Any]] = []
    dpo_rows: list[dict[str, Any]] = []
    for model_name in args.models:
        if model_name == "smollm2":
            model_dir = smollm2
        else:
            corpus_rng = random.Random(99)
            corpus = [sentence_text(corpus_rng, words, 200) for _ in range(3000)]
            model_dir = build_tiny_llama(OUT / "tiny-llama-34m", corpus)
        tokenizer = ChatTokenizer.from_dir(model_dir)
        data_dir = OUT / model_name
        data_dir.mkdir(parents=True, exist_ok=True)
        files: dict[str, tuple[Path, Path]] = {}
        if any(t in SFT_TRAINERS for t in args.trainers):
            n_train = args.train_examples or DEFAULT_EXAMPLES[model_name]
            files["sft"] = (
                write_jsonl(data_dir / "train.jsonl", generate_chats(1, words, tokenizer, n_train)),
                write_jsonl(data_dir / "valid.jsonl", generate_chats(2, words, tokenizer, VALID_EXAMPLES)),
            )
        if any(t in DPO_TRAINERS for t in args.trainers):
            n_pairs = args.train_pairs or DEFAULT_PAIRS[model_name]
            files["dpo"] = (
                write_jsonl(data_dir / "train_pairs.jsonl", generate_pairs(3, words, tokenizer, n_pairs)),
                write_jsonl(data_dir / "valid_pairs.jsonl", generate_pairs(4, words, tokenizer, VALID_PAIRS)),
            )
        counts = parameter_counts(model_dir)
        jobs: dict[str, dict[str, Any]] = {}
        for trainer in args.trainers:
            method = "dpo" if trainer in DPO_TRAINERS else "sft"
            train_file, valid_file = files[method]
            jobs[trainer] = {
                "trainer": trainer,
                "model": model_name,
                "model_dir": str(model_dir),
                "train_file": str(train_file),
                "valid_file": str(valid_file),
                "run_dir": str(data_dir / trainer),
                "threads": args.threads,
            }
        runs: dict[str, list[dict[str, Any]]] = {trainer: [] for trainer in args.trainers}
        for _ in range(args.repeat):  # interleaved, so a neighbour's burst of load hits every trainer alike
            for trainer, job in jobs.items():
                wait_for_quiet(args.quiet_wait)
                for name in peaks:  # the best seen during the whole run
                    peaks[name] = max(peaks[name], gemm_peak(name, args.threads, seconds=1.0))
                runs[trainer].append(run_worker(job))
        for trainer in args.trainers:
            method = "dpo" if trainer in DPO_TRAINERS else "sft"
            speeds = sorted(r["real_tokens"] / r["train_seconds"] for r in runs[trainer])
            result = sorted(runs[trainer], key=lambda r: r["real_tokens"] / r["train_seconds"])[len(speeds) // 2]
            n_flop = counts["body"] + counts["head"] * result["head_fraction"]
            tokens_per_s = statistics.median(speeds)
            # SFT: forward + activation backward = 4N per token; DPO adds the reference forward: 6N per token.
            gflops = (6 if method == "dpo" else 4) * n_flop * tokens_per_s / 1e9
            row = {
                "model": model_name,
                "trainer": trainer,
                **result,
                "tokens_per_s": tokens_per_s,
                "tokens_per_s_runs": speeds,
                "spread": f"{speeds[0]:.0f}-{speeds[-1]:.0f}",
                "gflops": gflops,
            }
            if method == "dpo":
                row["pairs_per_s"] = statistics.median(r["pairs"] / r["train_seconds"] for r in runs[trainer])
                dpo_rows.append(row)
                print(
                    f"{model_name:8} {trainer:12} steps {row['steps']:3}  {row['pairs_per_s']:6.2f} pairs/s  "
                    f"{tokens_per_s:7.0f} tok/s ({row['spread']})  RSS {row['peak_rss_mb']:6.0f} MB  "
                    f"valid reward acc {row['valid_reward_accuracy']:.2f}  margin {row['valid_reward_margin']:.3f}  "
                    f"others {row['others_cores']:.1f} cores ({row['dtype']})",
                    flush=True,
                )
                continue
            rows.append(row)
            print(
                f"{model_name:8} {trainer:14} steps {row['steps']:3}  {tokens_per_s:7.0f} tok/s ({row['spread']})  "
                f"RSS {row['peak_rss_mb']:6.0f} MB  valid loss {row['valid_loss']:.4f}  "
                f"{gflops:5.0f} GFLOP/s  others {row['others_cores']:.1f} cores ({row['dtype']})",
                flush=True,
            )
            compiling = [
                r["startup"]["attention_kernel"] for r in runs[trainer] if "attention_kernel" in r.get("startup", {})
            ]
            if compiling:  # a start-up cost, outside the timed steps like every trainer's model load
                print(
                    f"{'':8} {trainer:14} compiling attention at start-up: "
                    + ", ".join(f"{c:.1f} s" for c in compiling)
                )
    nominal = {name: nominal_peak(name, args.threads) for name in ("fp32", "bf16")}
    for row in rows + dpo_rows:  # against the best GEMM rate seen during the whole run, and the nominal one
        row["mfu"] = row["gflops"] / peaks[row["dtype"]]
        row["mfu_nominal"] = row["gflops"] / nominal[row["dtype"]] if nominal[row["dtype"]] else None
    tables = {"sft": markdown_table(rows) if rows else "", "dpo": dpo_markdown_table(dpo_rows) if dpo_rows else ""}
    summary = {
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs, {args.threads} threads",
        "gemm_peak_gflops": peaks,
        "nominal_peak_gflops": nominal,
        "flags": cpu_flags(),
        "rows": rows,
        "dpo_rows": dpo_rows,
        "tables": tables,
        "seconds": time.perf_counter() - began,
    }
    (OUT / "results.json").write_text(json.dumps(summary, indent=2))
    for table in tables.values():
        if table:
            print(table)
    print(f"total {summary['seconds']:.0f} s")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | trainer | dtype | steps | real tokens | tokens/s (median, spread) | vs TRL tuned | vs TRL default "
        "| peak RSS MB | valid loss | GFLOP/s | MFU measured peak | MFU nominal | others' load |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        same = {r["trainer"]: r for r in rows if r["model"] == row["model"]}
        ratios = [
            f"{row['tokens_per_s'] / same[t]['tokens_per_s']:.2f}x" if t in same else "-"
            for t in ("trl_tuned", "trl_default")
        ]
        nominal = f"{row['mfu_nominal']:.0%}" if row.get("mfu_nominal") else "-"
        lines.append(
            f"| {row['model']} | {row['trainer']} | {row['dtype']} | {row['steps']} | {row['real_tokens']:,} "
            f"| {row['tokens_per_s']:.0f} ({row['spread']}) | {ratios[0]} | {ratios[1]} | {row['peak_rss_mb']:,.0f} "
            f"| {row['valid_loss']:.4f} | {row['gflops']:.0f} | {row['mfu']:.0%} | {nominal} "
            f"| {row['others_cores']:.1f} cores |"
        )
    return "\n".join(lines)


def dpo_markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | trainer | dtype | steps | pairs | real tokens | train s (reference) | pairs/s | vs TRL DPO "
        "| tokens/s | peak RSS MB | valid reward acc | valid margin | valid DPO loss | MFU | others' load |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        same = {r["trainer"]: r for r in rows if r["model"] == row["model"]}
        ratio = f"{row['pairs_per_s'] / same['trl_dpo']['pairs_per_s']:.2f}x" if "trl_dpo" in same else "-"
        reference = f" ({row['reference_seconds']:.1f})" if row["reference_seconds"] is not None else " (in steps)"
        lines.append(
            f"| {row['model']} | {row['trainer']} | {row['dtype']} | {row['steps']} | {row['pairs']} "
            f"| {row['real_tokens']:,} | {row['train_seconds']:.1f}{reference} | {row['pairs_per_s']:.2f} | {ratio} "
            f"| {row['tokens_per_s']:.0f} | {row['peak_rss_mb']:,.0f} | {row['valid_reward_accuracy']:.2f} "
            f"| {row['valid_reward_margin']:.3f} | {row['valid_dpo_loss']:.4f} | {row['mfu']:.0%} "
            f"| {row['others_cores']:.1f} cores |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
