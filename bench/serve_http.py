"""Serving over HTTP: Tunery against llama.cpp's ``llama-server`` on the same CPU, model, adapters and prompts.

What a CPU user would run instead of Tunery is llama.cpp's ``llama-server`` (the bundled SmolLM2 already is a GGUF,
and llama.cpp loads LoRA adapters as GGUF). Both servers run side by side, each as its own process, and are driven
through their OpenAI-compatible ``/v1/chat/completions`` with streaming, greedy decoding and the same messages;
each scenario runs on Tunery then on llama.cpp, round after round (``--rounds``), so that other load on a shared
machine hits both alike.

Set-up (cached in ``bench/out/serve_http/``; nothing is downloaded from anywhere but PyPI):

* **llama-server** is built from the llama.cpp sources vendored in the PyPI sdist of ``llama-cpp-python``
  (``LLAMA_CPP_PYTHON`` below; ``cmake``, a C++ compiler and ``ninja``; ~20 min on 2 cores, once), with
  ``GGML_NATIVE`` (this CPU's instruction set) and ``-t`` = the cores here;
* **the model**: the bundled SmolLM2-135M-Instruct as Tunery serves it (de-quantized from its Q4_1 GGUF), written
  back to GGUF by Tunery's own exporter (F16) and converted to BF16 by ``llama-quantize`` when the machine's
  measured precision is bf16, so both servers hold the same weights in the same 16-bit class;
* **adapters**: seeded random LoRA r=16 on q,k,v,o (non-zero B), saved by peft; imported into Tunery through
  ``POST /v1/models/import`` and written as GGUF LoRA by Tunery's exporter for llama.cpp, which loads them all at
  start-up (``--lora ... --lora-init-without-apply``) and applies one per request (``"lora": [{"id", "scale"}]``).

Scenarios (each a load pattern over a set of adapters; ``adapters=0`` is the base model):

* closed loop: ``clients`` threads each send a request as soon as their previous one ended;
* open loop: Poisson arrivals at ``rate`` requests/s for ``--open-seconds``, each request in its own thread;
* ``shared-system``: every request starts with the same ~500-token system prompt (prefix caching);
* ``mixed-lengths``: prompts of 100 to 2,000 tokens.

Reported per scenario and server: output tokens/s (completion tokens over the scenario's wall time), time to first
token, inter-token latency and end-to-end latency at p50/p95/p99, and the "shared answer": the mean share of the
words that both servers' greedy answers start with alike (1.0: identical; both run bf16 with different kernels, so
a near-tie flips an answer somewhere in its 64 tokens; a share near 0 on adapter scenarios would mean one server did
not apply the adapter: the prompts are identical token for token, chat template included); per server: start-up
seconds and resident memory (the process tree's RSS) after warm-up and at its peak. Results:
``bench/out/serve_http/results.json`` and a Markdown table on stdout. On a machine others keep busy, llama.cpp's
threads spin-wait for each other and it slows down far more than Tunery: pass ``--llama-args "--poll 0"`` there,
and trust only quiet runs for the comparison.

    PYTHONPATH=src .venv/bin/python bench/serve_http.py                   # everything, ~1 h on 2 quiet cores
    PYTHONPATH=src .venv/bin/python bench/serve_http.py --quick           # one round of a few scenarios
    PYTHONPATH=src .venv/bin/python bench/serve_http.py --only base-c1 a1-c16 a8-c16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "serve_http"
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"  # its sdist vendors llama.cpp (tools/server included)
MODEL = "SmolLM2-135M-Instruct"
TOPICS = (
    "the history of the Roman Empire", "how rainbows form", "the water cycle", "why cats purr",
    "the invention of paper", "how volcanoes erupt", "the first moon landing", "how honey bees communicate",
    "the causes of the French Revolution", "how airplanes fly", "the life of Marie Curie", "how the internet works",
    "the Great Wall of China", "photosynthesis", "the printing press", "why the sky is blue",
)  # fmt: skip
FILLER = (
    "You are a patient assistant for a museum's education team. Answer in plain English, cite no sources, keep a "
    "friendly tone, explain technical words when you first use them, prefer concrete examples over abstractions, "
    "and never invent dates. "
)


@dataclass(frozen=True)
class Scenario:
    name: str
    adapters: int  # 0: the base model; n: request i uses adapter i % n
    clients: int = 0  # closed loop when > 0
    rate: float = 0.0  # open loop (requests/s) when > 0
    requests: int = 0  # closed loop: requests in all
    prompts: str = "essay"  # essay | shared-system | mixed-lengths


def scenarios(max_tokens: int) -> list[Scenario]:
    del max_tokens
    return [
        Scenario("base-c1", 0, clients=1, requests=6),
        Scenario("base-c4", 0, clients=4, requests=12),
        Scenario("base-c16", 0, clients=16, requests=32),
        Scenario("a1-c1", 1, clients=1, requests=6),
        Scenario("a1-c4", 1, clients=4, requests=12),
        Scenario("a1-c16", 1, clients=16, requests=32),
        Scenario("a2-c16", 2, clients=16, requests=32),
        Scenario("a8-c1", 8, clients=1, requests=8),
        Scenario("a8-c16", 8, clients=16, requests=32),
        Scenario("a64-c16", 64, clients=16, requests=64),
        Scenario("a8-open-1rps", 8, rate=1.0),
        Scenario("a8-open-2rps", 8, rate=2.0),
        Scenario("shared-system-c4", 0, clients=4, requests=12, prompts="shared-system"),
        Scenario("mixed-lengths-c4", 1, clients=4, requests=12, prompts="mixed-lengths"),
    ]


@dataclass
class Sample:
    index: int  # the request's place in the scenario (its prompt and adapter)
    ttft: float
    itl: list[float]
    e2e: float
    tokens: int
    text: str


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0


# ---- set-up ------------------------------------------------------------------------------------------------


def build_llama_server(out: Path) -> Path:
    """``llama-server`` and ``llama-quantize`` built from the PyPI sdist's vendored llama.cpp (cached)."""
    bin_dir = out / "llama.cpp" / "build" / "bin"
    if (bin_dir / "llama-server").is_file() and (bin_dir / "llama-quantize").is_file():
        return bin_dir
    prebuilt = os.environ.get("LLAMA_CPP_DIR")  # a llama.cpp source tree built already (developer shortcut)
    if prebuilt and (Path(prebuilt) / "build" / "bin" / "llama-server").is_file():
        return Path(prebuilt) / "build" / "bin"
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "download", LLAMA_CPP_PYTHON, "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*pip, "-d", tmp], check=True)
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as archive:
            archive.extractall(tmp, filter="data")
        vendored = next(Path(tmp).glob("llama_cpp_python-*/vendor/llama.cpp"))
        shutil.rmtree(out / "llama.cpp", ignore_errors=True)
        shutil.copytree(vendored, out / "llama.cpp", symlinks=True)
    source = out / "llama.cpp"
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF"]
    flags += ["-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON"]
    subprocess.run(["cmake", "-S", str(source), "-B", str(source / "build"), "-G", "Ninja", *flags], check=True)
    targets = ["--target", "llama-server", "llama-quantize"]
    subprocess.run(["cmake", "--build", str(source / "build"), *targets, f"-j{os.cpu_count() or 2}"], check=True)
    print(f"built llama-server in {time.monotonic() - started:.0f} s", flush=True)
    return bin_dir


def prepare_model(out: Path) -> Path:
    """The bundled model as Tunery serves it, in the cache layout ``tunery serve`` reads (shared by every run)."""
    cache = out / "models"
    subprocess.run(
        [sys.executable, "-m", "tunery.catalog", "prepare", MODEL, "--cache-dir", str(cache), "--all"],
        check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    from tunery.catalog import BUNDLED_MODELS
    from tunery.catalog.materialize import prepare

    return prepare(BUNDLED_MODELS[0], cache, "all")


def make_adapters(model_dir: Path, root: Path, count: int) -> list[Path]:
    """Seeded random LoRA r=16 (alpha 32) on q,k,v,o with non-zero B, saved by peft; reused if present."""
    dirs = [root / f"adapter-{i}" for i in range(count)]
    if all((d / "adapter_model.safetensors").is_file() for d in dirs):
        return dirs
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    )
    for i, folder in enumerate(dirs):
        generator = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_A" in name:
                    param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) / param.shape[1] ** 0.5)
                elif "lora_B" in name:  # peft starts B at zero: the adapter would be a no-op
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
        peft_model.save_pretrained(folder)
    return dirs


def zero_adapter(model_dir: Path, root: Path) -> Path:
    """A LoRA whose B is zero: merged into the base it leaves every weight as it is (the base GGUF's source)."""
    folder = root / "zero-adapter"
    if (folder / "adapter_model.safetensors").is_file():
        return folder
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=1, lora_alpha=1, target_modules=["q_proj"])).save_pretrained(folder)
    return folder


def llama_files(model_dir: Path, adapters: list[Path], out: Path, bin_dir: Path, dtype: str) -> tuple[Path, list[Path]]:
    """The base model (F16 from Tunery's exporter, then BF16 by ``llama-quantize`` for a bf16 machine) and each
    adapter as a GGUF LoRA; cached."""
    from tunery.catalog.gguf_export import write_adapter_gguf, write_merged_gguf
    from tunery.catalog.peft_adapter import PeftAdapter

    gguf_dir = out / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    f16 = gguf_dir / f"{MODEL}-F16.gguf"
    if not f16.is_file():
        with PeftAdapter(zero_adapter(model_dir, out)) as zero:
            write_merged_gguf(zero, model_dir, f16, name=MODEL, base_id=MODEL)
    base = f16
    if dtype == "bf16":
        base = gguf_dir / f"{MODEL}-BF16.gguf"
        if not base.is_file():
            subprocess.run([str(bin_dir / "llama-quantize"), str(f16), str(base), "BF16"], check=True)
    loras = []
    for folder in adapters:
        target = gguf_dir / f"{folder.name}-lora.gguf"
        if not target.is_file():
            with PeftAdapter(folder) as adapter:
                write_adapter_gguf(adapter, model_dir, target, name=folder.name, base_id=MODEL)
        loras.append(target)
    return base, loras


# ---- servers -------------------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str  # this server process ("llama.cpp, 64 LoRA loaded")
    label: str  # the contender it stands for in the tables ("llama.cpp")
    proc: subprocess.Popen[bytes]
    url: str
    headers: dict[str, str]
    startup_s: float
    models: list[str]  # per adapter index: the "model" field (Tunery) ...
    lora_ids: bool  # ... or llama.cpp's per-request "lora" list
    peak_rss_mb: float = 0.0

    def body(self, messages: list[dict[str, str]], adapter: int | None, max_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True},
        }  # fmt: skip
        if self.lora_ids:
            body["model"] = MODEL
            body["lora"] = [] if adapter is None else [{"id": adapter, "scale": 1.0}]
        else:
            body["model"] = MODEL if adapter is None else self.models[adapter]
        return body

    def rss_mb(self) -> float:
        try:
            root = psutil.Process(self.proc.pid)
            rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            return 0.0
        self.peak_rss_mb = max(self.peak_rss_mb, rss / 2**20)
        return rss / 2**20


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server not healthy after {timeout:.0f} s; see {log}")


def start_tunery(
    out: Path, adapters: list[Path], name: str = "tunery", extra_env: dict[str, str] | None = None
) -> Server:
    data_dir = out / f"tunery-data-{int(time.time())}-{name.replace('+', '-')}"
    data_dir.mkdir(parents=True)
    (data_dir / "models").symlink_to(out / "models", target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_") or k == "TUNERY_WORKER__DTYPE"}
    env |= {"TUNERY_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT / "src"), **(extra_env or {})}
    key = subprocess.run([sys.executable, "-m", "tunery", "keys", "create", "--project", "bench"], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    port = free_port()
    log = data_dir / "server.log"
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "tunery", "serve", "--port", str(port)], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, url, log)
    headers = {"Authorization": f"Bearer {key}"}
    # Up means answering: the first request loads the engine and the model (llama-server does so before /health).
    hello = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    first = httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=600, json=hello)
    first.raise_for_status()
    startup = time.monotonic() - started
    models = []
    for folder in adapters:
        buffer = _tar(folder)
        response = httpx.post(f"{url}/v1/models/import", headers=headers, timeout=600,
                              files={"file": (f"{folder.name}.tar", buffer)},
                              data={"base_model": MODEL, "suffix": folder.name})  # fmt: skip
        response.raise_for_status()
        models.append(response.json()["id"])
    return Server(name, name, proc, url, headers, startup, models, lora_ids=False)


def _tar(folder: Path) -> bytes:
    import io

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(folder, arcname=folder.name)
    return buffer.getvalue()


def start_llama(
    bin_dir: Path, base: Path, loras: list[Path], out: Path, slots: int, context: int, extra: list[str]
) -> Server:
    """A llama-server with ``loras`` loaded (none applied unless a request names one), or none at all: base-model
    scenarios go to a server without adapters, as a user serving the base would run it, because a request with
    an empty ``lora`` list on a server holding adapters was seen answering with adapters applied (slowly, and
    not as the base model does)."""
    port = free_port()
    log = out / f"llama-server-{len(loras)}-lora.log"
    args = [str(bin_dir / "llama-server"), "-m", str(base), "--host", "127.0.0.1", "--port", str(port),
            "-t", str(os.cpu_count() or 2), "-np", str(slots), "-c", str(context), "--kv-unified",
            "--no-webui", "--jinja", *extra]  # fmt: skip
    for lora in loras:
        args += ["--lora", str(lora)]
    if loras:
        args.append("--lora-init-without-apply")
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, url, log)
    name = f"llama.cpp, {len(loras)} LoRA loaded"
    return Server(name, "llama.cpp", proc, url, {}, time.monotonic() - started, [], lora_ids=True)


# ---- load ----------------------------------------------------------------------------------------------------


def prompts(kind: str, count: int, tokens_per_word: float = 1.3) -> list[list[dict[str, str]]]:
    rng = random.Random(0)
    if kind == "shared-system":
        system = FILLER * 8  # ~500 tokens
        return [[{"role": "system", "content": system}, {"role": "user", "content": f"Tell me about {TOPICS[i % 16]}."}]
                for i in range(count)]  # fmt: skip
    if kind == "mixed-lengths":
        out = []
        for _i in range(count):
            words = int(rng.uniform(100, 2000) / tokens_per_word)
            text = " ".join(rng.choice(FILLER.split()) for _ in range(words))
            out.append([{"role": "user", "content": f"Summarise this, then continue it at length: {text}"}])
        return out
    return [
        [{"role": "user", "content": f"Write a long, detailed essay about {TOPICS[i % 16]}."}] for i in range(count)
    ]


def one_request(client: httpx.Client, server: Server, index: int, messages: list[dict[str, str]],
                adapter: int | None, max_tokens: int) -> Sample:  # fmt: skip
    start = time.perf_counter()
    first: float | None = None
    last = start
    itl: list[float] = []
    text: list[str] = []
    usage_tokens: int | None = None
    chunks = 0
    body = server.body(messages, adapter, max_tokens)
    # One connection per request for both servers: llama-server closes a finished stream's connection, and a
    # client reusing it would fail the next request ("Server disconnected").
    headers = {**server.headers, "Connection": "close"}
    with client.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{server.name} {response.status_code}: {response.read()[:300]!r}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage_tokens = int(event["usage"].get("completion_tokens") or 0)
            for choice in event.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    now = time.perf_counter()
                    if first is None:
                        first = now - start
                    else:
                        itl.append(now - last)
                    last = now
                    chunks += 1
                    text.append(content)
    end = time.perf_counter()
    tokens = usage_tokens if usage_tokens is not None else chunks
    return Sample(index, first or end - start, itl, end - start, tokens, "".join(text))


def run_scenario(server: Server, scenario: Scenario, max_tokens: int, open_seconds: float) -> Run:
    run = Run()
    lock = threading.Lock()
    count = scenario.requests or max(1, int(scenario.rate * open_seconds))
    messages = prompts(scenario.prompts, count)

    def adapter_of(i: int) -> int | None:
        return None if scenario.adapters == 0 else i % scenario.adapters

    def do(client: httpx.Client, i: int) -> None:
        try:
            sample = one_request(client, server, i, messages[i], adapter_of(i), max_tokens)
        except Exception as error:
            with lock:
                run.errors.append(f"request {i}: {error}")
            return
        with lock:
            run.samples.append(sample)

    started = time.perf_counter()
    with httpx.Client(timeout=900, limits=httpx.Limits(max_connections=64)) as client:
        if scenario.clients:
            counter = iter(range(count))

            def worker() -> None:
                while True:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    do(client, i)

            threads = [threading.Thread(target=worker) for _ in range(scenario.clients)]
        else:
            rng = random.Random(1)  # the same arrival times for every server and round
            arrivals, at = [], 0.0
            for _ in range(count):
                at += rng.expovariate(scenario.rate)
                arrivals.append(at)
            threads = [
                threading.Thread(target=_after, args=(started, arrivals[i], do, client, i)) for i in range(count)
            ]
        sampler = threading.Event()
        threading.Thread(target=_sample_rss, args=(server, sampler), daemon=True).start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sampler.set()
    run.wall = time.perf_counter() - started
    return run


def _after(origin: float, delay: float, fn: Any, *args: Any) -> None:
    wait = origin + delay - time.perf_counter()
    if wait > 0:
        time.sleep(wait)  # an open-loop arrival time, not a wait for a condition
    fn(*args)


def _sample_rss(server: Server, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        server.rss_mb()


def shared_prefix(a: list[str], b: list[str]) -> float:
    """The share of the longer answer's words that both answers start with (1.0: the same answer)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n / max(1, len(a), len(b))


# ---- report --------------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summarize(runs: list[Run]) -> dict[str, Any]:
    samples = [s for r in runs for s in r.samples]
    per_round = [sum(s.tokens for s in r.samples) / r.wall for r in runs if r.wall > 0]
    itl = [x for s in samples for x in s.itl]
    return {
        "tokens_per_s": round(statistics.median(per_round), 1) if per_round else None,
        "tokens_per_s_spread": [round(min(per_round), 1), round(max(per_round), 1)] if per_round else None,
        **{f"ttft_p{q}_s": round(pct([s.ttft for s in samples], q), 3) for q in (50, 95, 99)},
        **{f"itl_p{q}_ms": round(1000 * pct(itl, q), 1) for q in (50, 95, 99)},
        **{f"e2e_p{q}_s": round(pct([s.e2e for s in samples], q), 2) for q in (50, 95, 99)},
        "requests": len(samples),
        "errors": [e for r in runs for e in r.errors][:5],
    }


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())  # fmt: skip
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])  # fmt: skip
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")
    return {"cpu": model, "cores": os.cpu_count(), "flags": [f for f in flags if f in wanted],
            "load_before": os.getloadavg()}  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| scenario | server | tok/s (median, spread) | TTFT p50/p95/p99 s | ITL p50/p95/p99 ms | E2E p50/p95 s | "
        "shared answer | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, by_server in report["scenarios"].items():
        for server, row in by_server["servers"].items():
            spread = row["tokens_per_s_spread"] or ["-", "-"]
            lines.append(
                f"| {name} | {server} | {row['tokens_per_s']} ({spread[0]}-{spread[1]}) | "
                f"{row['ttft_p50_s']}/{row['ttft_p95_s']}/{row['ttft_p99_s']} | "
                f"{row['itl_p50_ms']}/{row['itl_p95_ms']}/{row['itl_p99_ms']} | "
                f"{row['e2e_p50_s']}/{row['e2e_p95_s']} | "
                f"{by_server['same_answer']:.0%} | {len(row['errors'])} |"
            )
    lines.append("")
    for server, info in report["servers"].items():
        lines.append(
            f"- {server}: start-up {info['startup_s']:.1f} s, RSS after warm-up {info['rss_warm_mb']:.0f} MiB, "
            f"peak {info['peak_rss_mb']:.0f} MiB"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--open-seconds", type=float, default=20.0)
    parser.add_argument("--only", nargs="+", help="scenario names")
    parser.add_argument("--llama-args", default="", help="more llama-server flags, e.g. '--poll 0' on a busy machine")
    parser.add_argument(
        "--with-llama-backend",
        action="store_true",
        help="also run Tunery with its llama.cpp backend (inference.llama_cpp=auto, 16 slots)",
    )
    parser.add_argument(
        "--routed-llama-args",
        default=None,
        help="llama-server flags for Tunery's llama.cpp backend (default: --llama-args)",
    )
    parser.add_argument("--quick", action="store_true", help="1 round of base-c1, a1-c16 and a8-c16")
    args = parser.parse_args()
    chosen = scenarios(args.max_tokens)
    if args.quick:
        args.rounds, args.only = 1, args.only or ["base-c1", "a1-c16", "a8-c16"]
    if args.only:
        chosen = [s for s in chosen if s.name in args.only]
    OUT.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": machine(), "max_tokens": args.max_tokens, "rounds": args.rounds}

    from tunery.hardware.precision import fastest_format

    dtype = os.environ.get("TUNERY_WORKER__DTYPE") or fastest_format("weights")  # what Tunery serves in here
    report["dtype"] = dtype
    bin_dir = build_llama_server(OUT)
    model_dir = prepare_model(OUT)
    adapters = make_adapters(model_dir, OUT / "adapters", max(s.adapters for s in chosen) or 1)
    base_gguf, loras = llama_files(model_dir, adapters, OUT, bin_dir, dtype)
    context, extra = 16 * (2048 + args.max_tokens + 64), args.llama_args.split()
    tunery = start_tunery(OUT, adapters)
    servers = [tunery]
    routed = None
    if args.with_llama_backend:  # the same llama-server binary, behind Tunery's API, slots as llama-server's here
        routed = start_tunery(OUT, adapters, "tunery+llama.cpp", {
            "TUNERY_INFERENCE__LLAMA_CPP": "auto", "TUNERY_INFERENCE__LLAMA_CPP_SERVER": str(bin_dir / "llama-server"),
            "TUNERY_INFERENCE__LLAMA_CPP_SLOTS": "16", "TUNERY_INFERENCE__LLAMA_CPP_SLOT_CONTEXT": str(2048 + 128),
            "TUNERY_INFERENCE__LLAMA_CPP_ARGS": json.dumps(
                extra if args.routed_llama_args is None else args.routed_llama_args.split()),
        })  # fmt: skip
        servers.append(routed)
    llama_lora = llama_base = None
    if any(s.adapters for s in chosen):
        llama_lora = start_llama(bin_dir, base_gguf, loras, OUT, 16, context, extra)
        servers.append(llama_lora)
    if any(not s.adapters for s in chosen):
        llama_base = start_llama(bin_dir, base_gguf, [], OUT, 16, context, extra)
        servers.append(llama_base)
    try:
        for server in servers:  # warm-up: one request per server (on an adapter where it has them), then memory
            adapters_here = 0 if server is llama_base else 1
            run_scenario(server, Scenario("warm", adapters_here, clients=1, requests=1), args.max_tokens, 0)
        report["servers"] = {s.name: {"startup_s": round(s.startup_s, 1), "rss_warm_mb": round(s.rss_mb(), 0)}
                             for s in servers}  # fmt: skip
        report["scenarios"] = {}
        for scenario in chosen:
            pair = [tunery, llama_lora if scenario.adapters else llama_base, routed]
            contenders = [s for s in pair if s is not None]
            runs: dict[str, list[Run]] = {s.label: [] for s in contenders}
            for _ in range(args.rounds):
                for server in contenders:
                    runs[server.label].append(run_scenario(server, scenario, args.max_tokens, args.open_seconds))
            answers = [{s.index: s.text.split() for s in runs[server.label][0].samples} for server in contenders]
            both = sorted(set(answers[0]) & set(answers[1]))
            same = statistics.mean(shared_prefix(answers[0][i], answers[1][i]) for i in both) if both else 0.0
            report["scenarios"][scenario.name] = {
                "scenario": scenario.__dict__,
                "servers": {name: summarize(r) for name, r in runs.items()},
                "same_answer": same,
            }
            print(scenario.name, json.dumps(report["scenarios"][scenario.name]["servers"]), flush=True)
        for server in servers:
            report["servers"][server.name]["peak_rss_mb"] = round(server.peak_rss_mb, 0)
    finally:
        for server in servers:
            server.proc.terminate()
            try:
                server.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.proc.kill()
    report["machine"]["load_after"] = os.getloadavg()
    (OUT / "results.json").write_text(json.dumps(report, indent=2))
    print(markdown(report))


if __name__ == "__main__":
    main()
