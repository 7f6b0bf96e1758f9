"""The ``tunery`` CLI's client commands against a real server, as a user runs them in a terminal.

Run alone: ``.venv/bin/pytest tests/integration/test_cli.py``
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ceilings import ceiling
from tests.integration.harness import Server

pytestmark = pytest.mark.integration


def run_cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**server.env, "TUNERY_BASE_URL": f"{server.url}/v1", "TUNERY_API_KEY": server.key, "COLUMNS": "200"}
    command = [sys.executable, "-m", "tunery", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=ceiling(30))


def write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat(i: int) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}]}


def test_upload_good_file_prints_statistics(server: Server, tmp_path: Path) -> None:
    good = write(tmp_path / "good.jsonl", [chat(i) for i in range(12)])
    done = run_cli(server, "files", "upload", str(good))
    assert done.returncode == 0, done.stderr
    assert "processed" in done.stdout
    assert "12 examples" in done.stdout
    file_id = next(word for word in done.stdout.split() if word.startswith("file-"))
    listed = run_cli(server, "files", "list")
    assert file_id in listed.stdout
    shown = run_cli(server, "files", "show", file_id, "--json")
    assert json.loads(shown.stdout)["id"] == file_id
    removed = run_cli(server, "files", "rm", file_id)
    assert removed.returncode == 0
    gone = run_cli(server, "files", "show", file_id)
    assert gone.returncode == 1
    assert "Error 404" in gone.stderr


def test_upload_bad_file_prints_line_numbered_problems_and_fails(server: Server, tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [chat(i) for i in range(12)]
    rows[6] = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 2}]}
    bad = write(tmp_path / "bad.jsonl", rows)
    done = run_cli(server, "files", "upload", str(bad))
    assert done.returncode == 1
    assert "error" in done.stdout
    assert "line 7" in done.stdout
    assert "weight" in done.stdout


def test_client_commands_explain_a_missing_key(server: Server) -> None:
    env = {k: v for k, v in server.env.items() if k != "TUNERY_API_KEY"}
    done = subprocess.run(
        [sys.executable, "-m", "tunery", "files", "list", "--base-url", f"{server.url}/v1"],
        env=env, capture_output=True, text=True, timeout=ceiling(15),
    )  # fmt: skip
    assert done.returncode == 1
    assert "No API key" in done.stderr


def test_jobs_commands_show_and_cancel(server: Server, tmp_path: Path) -> None:
    good = write(tmp_path / "train.jsonl", [chat(i) for i in range(12)])
    upload = run_cli(server, "files", "upload", str(good), "--json")
    file_id = json.loads(upload.stdout)["id"]
    created = run_cli(server, "jobs", "create", "--model", "tiny-llama", "-t", file_id, "--n-epochs", "50", "--json")
    assert created.returncode == 0, created.stderr
    job_id = json.loads(created.stdout)["id"]
    cancelled = run_cli(server, "jobs", "cancel", job_id)
    assert "cancelled" in cancelled.stdout
    shown = run_cli(server, "jobs", "show", job_id)
    assert job_id in shown.stdout
    assert "cancelled" in shown.stdout
    events = run_cli(server, "jobs", "events", job_id)
    assert "Job cancelled." in events.stdout
    again = run_cli(server, "jobs", "cancel", job_id)
    assert again.returncode == 1
    assert "Error 409" in again.stderr


def test_a_dpo_job_from_the_cli_runs_to_the_end(server: Server) -> None:
    data = Path(__file__).resolve().parents[1] / "data" / "preference_train.jsonl"
    upload = run_cli(server, "files", "upload", str(data), "--json")
    assert upload.returncode == 0, upload.stderr
    file_id = json.loads(upload.stdout)["id"]
    created = run_cli(
        server, "jobs", "create", "--model", "tiny-llama", "-t", file_id,
        "--method", "dpo", "--beta", "0.3", "--n-epochs", "1", "--batch-size", "16", "--watch",
    )  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    assert "succeeded" in created.stdout
    job_id = created.stdout.split("Created ", 1)[1].split()[0]
    shown = run_cli(server, "jobs", "show", job_id, "--json")
    job = json.loads(shown.stdout)
    assert job["method"]["type"] == "dpo"
    assert job["method"]["dpo"]["hyperparameters"]["beta"] == 0.3
    events = run_cli(server, "jobs", "events", job_id)
    assert "reward accuracy=" in events.stdout
