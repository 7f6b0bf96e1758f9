"""Time to a better model: the whole product path on SmolLM2, timed phase by phase, graded on held-out data.

What a new user does, through the official ``openai`` client against a real ``tunery serve``: upload a training
and a validation file and wait until they are processed; create a supervised job with every hyperparameter
``auto``; wait for ``succeeded``; deploy the fine-tuned model (data-plane ``PUT /deployments/{name}``) and wait
for ``Succeeded``; ask it one question. Reported: each phase's seconds, upload → first answer in total, the
trained tokens/s of the job as a whole (its running time, trainer start and checkpoints included) and of the
trainer's step loop alone (from its progress records), and held-out exact match of the base model and of the
fine-tune (greedy, asked concurrently so the engine batches them).

The task is generated here (deterministic, not the end-to-end tests' data): support tickets to route. The answer
is ``<team>:<product>`` — the team follows from what the ticket complains about (money back, damage, delay,
sign-in), the product is named in the ticket. The base model cannot guess the format; held-out tickets are new
combinations of customer, product and phrasing.

    PYTHONPATH=src .venv/bin/python bench/time_to_model.py                 # ~3-6 min on 2 vCPUs
    PYTHONPATH=src .venv/bin/python bench/time_to_model.py --cold          # model preparation counted too

The base model is prepared into ``bench/out/ttm-models`` before the clock starts unless ``--cold``; each run uses
a fresh data directory under ``bench/out/``. Results go to ``bench/out/time_to_model.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai

from tunery.training.progress import Started, Step, parse_record

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
MODEL = "SmolLM2-135M-Instruct"
SYSTEM = "Route the support ticket. Answer team:product."
TEAMS = {
    "billing": ["I want my money back for the {p}", "Please refund the {p} I returned",
                "I was charged twice for the {p}", "Cancel my {p} order and return the payment",
                "The {p} invoice is wrong, refund the difference"],
    "repairs": ["My {p} arrived broken", "The {p} stopped working after a day", "The screen of my {p} is cracked",
                "My {p} makes a grinding noise", "The {p} will not turn on anymore"],
    "shipping": ["My {p} has not arrived yet", "The {p} delivery is two weeks late", "Where is my {p} parcel",
                 "The courier lost my {p}", "Tracking for the {p} has not moved in days"],
    "accounts": ["I cannot log in to manage my {p}", "Reset my password for the {p} app", "My {p} account is locked",
                 "The {p} login code never arrives", "I forgot the username for my {p} account"],
}  # fmt: skip
PRODUCTS = ["kettle", "laptop", "bicycle", "camera", "headphones", "blender", "tablet", "printer", "speaker",
            "watch", "drone", "heater"]  # fmt: skip
NAMES = ["Ana", "Ben", "Chen", "Dora", "Emil", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea", "Mo", "Nia", "Oto"]


def task(seed: int = 7) -> dict[str, list[dict[str, Any]]]:
    """200 training, 40 validation and 60 held-out examples; no (name, product, phrasing) repeats across them."""
    rng = random.Random(seed)
    combos = [(n, p, t, i) for n in NAMES for p in PRODUCTS for t in TEAMS for i in range(5)]
    rng.shuffle(combos)

    def example(name: str, product: str, team: str, phrasing: int) -> dict[str, Any]:
        ticket = f"From {name}: {TEAMS[team][phrasing].format(p=product)}."
        return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ticket},
                             {"role": "assistant", "content": f"{team}:{product}"}]}  # fmt: skip

    rows = [example(*c) for c in combos[:300]]
    return {"train": rows[:200], "valid": rows[200:240], "test": rows[240:300]}


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def start_server(data_dir: Path, models_dir: Path | None) -> tuple[subprocess.Popen[bytes], str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_") or k == "TUNERY_WORKER__DTYPE"}
    env |= {"TUNERY_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT / "src")}
    if models_dir is not None:  # the model cache lives in the data directory: share the prepared one
        (data_dir / "models").symlink_to(models_dir, target_is_directory=True)
    key = subprocess.run(
        [sys.executable, "-m", "tunery", "keys", "create", "--project", "bench"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    port = _free_port()
    log = (data_dir / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "tunery", "serve", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url, key
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"tunery serve did not start; see {data_dir / 'server.log'}")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def exact_match(client: openai.OpenAI, model: str, rows: list[dict[str, Any]]) -> float:
    def ask(row: dict[str, Any]) -> bool:
        reply = client.chat.completions.create(model=model, messages=row["messages"][:-1], temperature=0, max_tokens=12)
        return (reply.choices[0].message.content or "").strip() == row["messages"][-1]["content"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        return sum(pool.map(ask, rows)) / len(rows)


def loop_tokens_per_s(data_dir: Path, job_id: str) -> float | None:
    """Trained tokens over the trainer's step loop: first STARTED record to the last STEP record."""
    progress = next(data_dir.rglob(f"{job_id}/progress.jsonl"), None)
    if progress is None:
        return None
    records = [parse_record(line) for line in progress.read_text().splitlines() if line.strip()]
    started = next(r for r in records if isinstance(r, Started))
    steps = [r for r in records if isinstance(r, Step)]
    return steps[-1].trained_tokens / (steps[-1].time - started.time) if steps else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = task()
    data_dir = OUT / f"ttm-data-{int(time.time())}"
    data_dir.mkdir(parents=True)
    models_dir = None if args.cold else OUT / "ttm-models"
    if models_dir is not None:  # prepared once, outside the clock, as a server that has served before
        subprocess.run([sys.executable, "-m", "tunery.catalog", "prepare", MODEL, "--cache-dir", str(models_dir),
                        "--all"], check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})  # fmt: skip
    proc, url, key = start_server(data_dir, models_dir)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600)
    phases: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        train = client.files.create(file=("tickets-train.jsonl", jsonl(data["train"])), purpose="fine-tune")
        valid = client.files.create(file=("tickets-valid.jsonl", jsonl(data["valid"])), purpose="fine-tune")
        for f in (train, valid):
            assert client.files.wait_for_processing(f.id, poll_interval=0.2).status == "processed"
        phases["upload and checks"] = time.monotonic() - t0

        mark = time.monotonic()
        job = client.fine_tuning.jobs.create(model=MODEL, training_file=train.id, validation_file=valid.id, seed=1)
        while job.status not in ("running", "succeeded", "failed", "cancelled"):
            time.sleep(0.2)
            job = client.fine_tuning.jobs.retrieve(job.id)
        phases["queued (checks again, model ready)"] = time.monotonic() - mark
        mark = time.monotonic()
        while job.status not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.5)
            job = client.fine_tuning.jobs.retrieve(job.id)
        assert job.status == "succeeded", job.error
        phases["running (trainer start, training, checkpoints)"] = running = time.monotonic() - mark

        mark = time.monotonic()
        model = {"format": "OpenAI", "name": job.fine_tuned_model, "version": "1"}
        body = {"sku": {"name": "standard", "capacity": 1}, "properties": {"model": model}}
        client.put("/deployments/tickets", body=body, cast_to=object)
        while (state := deployment_state(client, "tickets")) not in ("succeeded", "failed"):
            time.sleep(0.2)
        assert state == "succeeded", state
        phases["deploy (warm-up)"] = time.monotonic() - mark
        mark = time.monotonic()
        question = data["test"][0]["messages"][:-1]
        first = client.chat.completions.create(model="tickets", messages=question, max_tokens=12)
        phases["first answer"] = time.monotonic() - mark
        total = time.monotonic() - t0

        events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
        hyper = job.method.supervised.hyperparameters  # type: ignore[union-attr]
        result = {
            "cpu": _cpu(),
            "dtype": os.environ.get("TUNERY_WORKER__DTYPE", "auto"),
            "cold": args.cold,
            "phases_s": {k: round(v, 1) for k, v in phases.items()},
            "upload_to_first_answer_s": round(total, 1),
            "hyperparameters": hyper.model_dump() if hyper else None,
            "steps": (job.model_extra or {}).get("progress", {}).get("step"),
            "trained_tokens": job.trained_tokens,
            "job_tokens_per_s": round((job.trained_tokens or 0) / running, 1),
            "loop_tokens_per_s": _round(loop_tokens_per_s(data_dir, job.id)),
            "events": [m for m in events if re.match(r"(Trainer ready|Stopped early)", m)],
            "first_answer": first.choices[0].message.content,
            "held_out_exact_match": {
                "base": exact_match(client, MODEL, data["test"]),
                "fine_tune": exact_match(client, "tickets", data["test"]),
            },
        }
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    return result


def deployment_state(client: openai.OpenAI, name: str) -> str:
    body: Any = client.get(f"/deployments/{name}", cast_to=object)
    return str(body.get("properties", {}).get("provisioningState") or body.get("status")).lower()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", action="store_true", help="count the base model's preparation too")
    parser.add_argument("--keep", action="store_true", help="keep the run's data directory")
    args = parser.parse_args()
    result = run(args)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "time_to_model.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
