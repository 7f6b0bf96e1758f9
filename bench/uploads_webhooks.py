"""Benchmark the Uploads API (a large file through ``client.uploads.upload_file_chunked``) and webhook latency.

Starts a real ``tunery serve`` (SQLite, local blobs, no training worker, bundled SmolLM2 catalog entry) in a
subprocess with its own data directory under ``bench/out/uploads_webhooks/``, then:

1. Uploads throughput: writes a valid chat JSONL file of ``--mb`` MB, sends it with the official client's
   ``upload_file_chunked`` (64 MB parts, the SDK's default) and reports MB/s for the parts, for ``complete``
   (concatenating the parts into one file, md5 checked) and end to end, plus the server's peak RSS
   (``VmHWM``) before and after — flat means the parts are streamed, never held in memory. Side by side:
   the same client sending a ``--single-mb`` MB file in one ``/files`` request (the best a user can do
   without the Uploads API, up to the single-upload limit).
2. Webhook latency: ``--events`` jobs end (created, then cancelled: the terminal move is what is timed, not
   training) while a local HTTP receiver listens; latency is the receipt time minus the moment the cancel
   call was sent (so it includes the cancel request itself, reported apart as ``cancel_call_p50``), p50/p95.
   The alternative a user would otherwise write, polling ``jobs.retrieve`` every second, averages 0.5 s
   (p95 0.95 s) by construction and costs one request per job per second.

    PYTHONPATH=src .venv/bin/python bench/uploads_webhooks.py                 # 2 GB, 50 events
    PYTHONPATH=src .venv/bin/python bench/uploads_webhooks.py --mb 256 --single-mb 128 --events 20   # short
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai

OUT = Path(__file__).resolve().parent / "out" / "uploads_webhooks"
MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_jsonl(path: Path, size_mb: int) -> None:
    """Chat examples, repeated until the file holds ``size_mb`` MB."""
    lines = []
    for i in range(2000):
        example = {"messages": [
            {"role": "system", "content": "You name colour codes."},
            {"role": "user", "content": f"What is the code for colour number {i}? " + "Please answer. " * (i % 20)},
            {"role": "assistant", "content": f"The code for colour {i} is C-{i:05d}. " + "Thanks. " * (i % 15)},
        ]}  # fmt: skip
        lines.append(json.dumps(example))
    block = ("\n".join(lines) + "\n").encode()
    target = size_mb * MB
    with path.open("wb") as out:
        written = 0
        while written + len(block) <= target:
            out.write(block)
            written += len(block)
        rest = target - written  # pad to the exact size with whole short lines
        filler = json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]})
        line = (filler + "\n").encode()
        while rest >= len(line):
            out.write(line)
            rest -= len(line)
        out.write(b"\n" * rest)


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        while chunk := stream.read(8 * MB):
            digest.update(chunk)
    return digest.hexdigest()


class Receiver:
    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        this = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                this.arrivals.setdefault(body["data"]["id"], time.perf_counter())
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=2048, help="size of the file sent through the Uploads API")
    parser.add_argument("--single-mb", type=int, default=256, help="size of the one-request /files baseline")
    parser.add_argument("--events", type=int, default=50)
    args = parser.parse_args()

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    data_dir = OUT / "data"
    port = free_port()
    env = {**os.environ, "TUNERY_DATA_DIR": str(data_dir), "TUNERY_WORKER__ENABLED": "false",
           "TUNERY_FILES__MAX_UPLOAD_BYTES": str(max(args.single_mb, 1) * MB + MB),
           "TUNERY_FILES__MAX_MULTIPART_BYTES": str(max(args.mb, 1) * MB + MB),
           "TUNERY_JOBS__MAX_JOBS_PER_PROJECT": str(args.events + 10), "PYTHONUNBUFFERED": "1"}  # fmt: skip
    env["TUNERY_WEBHOOKS__ALLOW_PRIVATE_URLS"] = "true"  # the receiver listens on 127.0.0.1
    env.pop("TUNERY_STORAGE__DATABASE_URL", None)
    tunery = [sys.executable, "-m", "tunery"]
    key = subprocess.run([*tunery, "keys", "create", "--project", "bench"], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()  # fmt: skip
    log = (OUT / "server.log").open("w")
    server = subprocess.Popen([*tunery, "serve", "--no-prepare", "--port", str(port)], env=env, stdout=log,
                              stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    results: dict[str, object] = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=3600)

        # 1. uploads
        big = OUT / "big.jsonl"
        write_jsonl(big, args.mb)
        checksum = md5_of(big)
        rss_before = vm_hwm_mb(server.pid)
        t0 = time.perf_counter()
        upload = client.uploads.upload_file_chunked(file=big, mime_type="application/jsonl", purpose="fine-tune",
                                                    md5=checksum)  # fmt: skip
        total_s = time.perf_counter() - t0
        rss_after = vm_hwm_mb(server.pid)
        if upload.status != "completed" or upload.file is None:
            raise SystemExit(f"the upload did not complete: {upload}")
        t1 = time.perf_counter()
        done = client.files.wait_for_processing(upload.file.id, poll_interval=1, max_wait_seconds=7200)
        results["uploads_api"] = {
            "mb": args.mb, "seconds": round(total_s, 2), "mb_per_s": round(args.mb / total_s, 1),
            "server_peak_rss_mb_before": round(rss_before, 1), "server_peak_rss_mb_after": round(rss_after, 1),
            "validation_seconds": round(time.perf_counter() - t1, 1), "status": done.status,
        }  # fmt: skip
        client.files.delete(done.id)

        # the same file step by step (what upload_file_chunked does), to split parts from complete
        part_bytes = 64 * MB
        t0 = time.perf_counter()
        manual = client.uploads.create(bytes=args.mb * MB, filename="big.jsonl", mime_type="application/jsonl",
                                       purpose="fine-tune")  # fmt: skip
        part_ids = []
        with big.open("rb") as stream:
            while chunk := stream.read(part_bytes):
                part_ids.append(client.uploads.parts.create(manual.id, data=chunk).id)
        parts_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        finished = client.uploads.complete(manual.id, part_ids=part_ids, md5=checksum)
        complete_s = time.perf_counter() - t1
        results["uploads_api_split"] = {"parts_mb_per_s": round(args.mb / parts_s, 1),
                                        "complete_seconds": round(complete_s, 2),
                                        "complete_mb_per_s": round(args.mb / complete_s, 1)}  # fmt: skip
        if finished.file is not None:
            client.files.delete(finished.file.id)
        big.unlink()

        single = OUT / "single.jsonl"
        write_jsonl(single, args.single_mb)
        t0 = time.perf_counter()
        with single.open("rb") as stream:
            created = client.files.create(file=("single.jsonl", stream), purpose="fine-tune")
        single_s = time.perf_counter() - t0
        results["single_files_post"] = {"mb": args.single_mb, "seconds": round(single_s, 2),
                                        "mb_per_s": round(args.single_mb / single_s, 1),
                                        "server_peak_rss_mb_after": round(vm_hwm_mb(server.pid), 1)}  # fmt: skip
        client.files.wait_for_processing(created.id, poll_interval=1, max_wait_seconds=7200)

        # 2. webhook latency
        receiver = Receiver()
        client.webhooks.create(name="bench", url=receiver.url, event_types=["fine_tuning.job.cancelled"])
        small = client.files.create(file=("t.jsonl", single.read_bytes()[: 64 * 1024].rsplit(b"\n", 1)[0] + b"\n"),
                                    purpose="fine-tune")  # fmt: skip
        client.files.wait_for_processing(small.id, poll_interval=0.2)
        ended: dict[str, float] = {}
        cancel_ms = []
        for _ in range(args.events):
            job = client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=small.id)
            ended[job.id] = time.perf_counter()  # the job ends inside this cancel call
            client.fine_tuning.jobs.cancel(job.id)
            cancel_ms.append((time.perf_counter() - ended[job.id]) * 1000)
            deadline = time.monotonic() + 60
            while job.id not in receiver.arrivals and time.monotonic() < deadline:
                time.sleep(0.001)
        latencies = sorted((receiver.arrivals[j] - t) * 1000 for j, t in ended.items() if j in receiver.arrivals)
        results["webhook_latency_ms"] = {
            "events": len(latencies), "of": args.events, "p50": round(statistics.median(latencies), 1),
            "p95": round(latencies[max(0, int(0.95 * len(latencies)) - 1)], 1), "max": round(latencies[-1], 1),
            "cancel_call_p50": round(statistics.median(cancel_ms), 1),
        }  # fmt: skip
        receiver.server.shutdown()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
