"""Requests/s through 1 vs 2 ``tunery serve`` processes on one PostgreSQL database (and one blob store).

Each configuration starts its servers (workers off), then ``--clients`` threads send authenticated
``GET /v1/files`` (a database read, the commonest API call) round-robin over the servers for ``--seconds``;
``--repeat`` interleaved rounds, median and spread of requests/s. Needs a PostgreSQL URL whose role may create
schemas (``TUNERY_BENCH_DATABASE_URL``, or ``TUNERY_TEST_DATABASE_URL``).

    PYTHONPATH=src TUNERY_BENCH_DATABASE_URL=postgresql+psycopg://tunery:tunery@127.0.0.1:5432/tunery_test \\
        .venv/bin/python bench/api_servers.py --seconds 10 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tunery.testing.databases import fresh_database
from tunery.testing.s3_server import free_port


def start(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunery", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server did not start; see {log}")


def load(urls: list[str], key: str, clients: int, seconds: float) -> float:
    done = [0] * clients
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            n = 0
            while time.monotonic() < stop:
                response = http.get(f"{urls[(i + n) % len(urls)]}/v1/files")
                response.raise_for_status()
                n += 1
            done[i] = n

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.monotonic() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    url = os.environ.get("TUNERY_BENCH_DATABASE_URL") or os.environ.get("TUNERY_TEST_DATABASE_URL")
    if not url:
        sys.exit("Set TUNERY_BENCH_DATABASE_URL to a PostgreSQL URL.")
    work = Path(tempfile.mkdtemp(prefix="tunery-bench-api-"))
    with fresh_database(work, url) as database:
        env = {
            **os.environ,
            "TUNERY_STORAGE__DATABASE_URL": database.url.render_as_string(hide_password=False),
            "TUNERY_STORAGE__BLOB_BACKEND": "local",
            "TUNERY_WORKER__ENABLED": "false",
            "TUNERY_EVALS__RUNNER_ENABLED": "false",
        }
        cli = {**env, "TUNERY_DATA_DIR": str(work / "cli")}
        key = subprocess.run(
            [sys.executable, "-m", "tunery", "keys", "create", "--project", "bench"],
            env=cli, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        servers = [start({**env, "TUNERY_DATA_DIR": str(work / name)}, work / f"{name}.log") for name in ("a", "b")]
        try:
            rates: dict[int, list[float]] = {1: [], 2: []}
            for _ in range(args.repeat):
                for count in (1, 2):
                    rates[count].append(load([u for _, u in servers[:count]], key, args.clients, args.seconds))
        finally:
            for proc, _ in servers:
                proc.terminate()
                proc.wait(timeout=30)
    setup = f"{args.clients} client threads, {args.seconds:.0f} s x {args.repeat}; {os.cpu_count()} CPUs"
    print(f"\nGET /v1/files, {setup}")
    print("| API servers | requests/s median (min-max) |")
    print("|---|---|")
    for count, values in rates.items():
        print(f"| {count} | {statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f}) |")


if __name__ == "__main__":
    main()
