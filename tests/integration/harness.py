"""Starting and waiting for a real Tunery server process; shared by the integration fixtures."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.ceilings import ceiling

STARTUP_TIMEOUT_S = ceiling(30)  # import torch-free app, migrate, start a worker


@dataclass(frozen=True)
class Server:
    url: str  # http://127.0.0.1:PORT
    key: str  # project "itest"
    other_key: str  # project "intruder"
    data_dir: Path
    env: dict[str, str]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_healthy(proc: subprocess.Popen[str], url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tunery serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"tunery serve did not become healthy in {STARTUP_TIMEOUT_S}s:\n{log.read_text()}")


def tunery(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "tunery", *args], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()
