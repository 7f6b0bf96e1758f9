"""The python grader runs user code in a limited process: hung or hostile code is reported, never fatal."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tunery.graders import PythonSandbox, SandboxLimits, parse_grader, run_grader, sample_from_text


@pytest.fixture(scope="module")
def secret_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("tunery-data")
    (data / "secret.txt").write_text("top secret")
    return data


@pytest.fixture(scope="module")
def sandbox(secret_dir: Path) -> Iterator[PythonSandbox]:
    limits = SandboxLimits(
        wall_seconds=3.0, cpu_seconds=2.0, memory_bytes=512 * 1024**2, workers=1, denied_paths=(str(secret_dir),)
    )
    pool = PythonSandbox(limits)
    yield pool
    pool.close()


def _grade(sandbox: PythonSandbox, source: str, answer: str = "Paris", item: dict[str, Any] | None = None) -> Any:
    grader = parse_grader({"type": "python", "name": "py", "source": source})
    return run_grader(grader, sample=sample_from_text(answer), item=item or {}, sandbox=sandbox)


def test_grade_gets_sample_and_item(sandbox: PythonSandbox) -> None:
    source = (
        "from rapidfuzz import fuzz\n"
        "def grade(sample, item):\n"
        "    print('noise on stdout does not matter')\n"
        "    return 1.0 if sample['output_text'] == item['answer'] else fuzz.ratio('ab', 'ac') / 100\n"
    )
    assert _grade(sandbox, source, "Paris", {"answer": "Paris"}).reward == 1.0
    assert _grade(sandbox, source, "London", {"answer": "Paris"}).reward == 0.5
    assert _grade(sandbox, "def grade(s, i):\n    return True").reward == 1.0


def test_a_raising_grader_is_a_runtime_error_with_its_traceback(sandbox: PythonSandbox) -> None:
    result = _grade(sandbox, "def grade(sample, item):\n    raise ValueError('bad grader')\n")
    errors = result.metadata.errors
    assert result.reward == 0.0
    assert errors.python_grader_runtime_error
    assert "ValueError: bad grader" in (errors.python_grader_runtime_error_details or "")
    assert not errors.python_grader_server_error


def test_a_non_number_is_a_runtime_error(sandbox: PythonSandbox) -> None:
    for value in ("'high'", "float('nan')", "None"):
        result = _grade(sandbox, f"def grade(sample, item):\n    return {value}\n")
        assert result.metadata.errors.python_grader_runtime_error, value
        assert result.reward == 0.0


def test_a_grader_that_loops_forever_is_killed(sandbox: PythonSandbox) -> None:
    started = time.monotonic()
    result = _grade(sandbox, "def grade(sample, item):\n    while True:\n        pass\n")
    errors = result.metadata.errors
    assert errors.python_grader_server_error
    assert errors.python_grader_server_error_type == "timeout"
    assert time.monotonic() - started < 30
    assert _grade(sandbox, "def grade(s, i):\n    return 0.25").reward == 0.25  # the pool still works


def test_a_sleeping_grader_hits_the_wall_clock(sandbox: PythonSandbox) -> None:
    result = _grade(sandbox, "import time\ndef grade(sample, item):\n    time.sleep(60)\n")
    assert result.metadata.errors.python_grader_server_error_type == "timeout"


def test_the_data_directory_cannot_be_read(sandbox: PythonSandbox, secret_dir: Path) -> None:
    for source in (
        f"def grade(sample, item):\n    return len(open({str(secret_dir / 'secret.txt')!r}).read())\n",
        f"import os\ndef grade(sample, item):\n    return len(os.listdir({str(secret_dir)!r}))\n",
        "def grade(sample, item):\n    return len(open('/etc/hostname').read())\n",
        "import pathlib\ndef grade(sample, item):\n    return len(pathlib.Path('/root').iterdir().__next__().name)\n",
    ):
        result = _grade(sandbox, source)
        assert result.reward == 0.0, source
        assert result.metadata.errors.python_grader_runtime_error, source
        assert "sandbox does not allow" in (result.metadata.errors.python_grader_runtime_error_details or "")


def test_the_working_directory_is_writable_and_emptied(sandbox: PythonSandbox) -> None:
    write = "def grade(sample, item):\n    open('scratch.txt', 'w').write('x')\n    return 1\n"
    read = "import os\ndef grade(sample, item):\n    return len(os.listdir('.'))\n"
    assert _grade(sandbox, write).reward == 1.0
    assert _grade(sandbox, read).reward == 0.0


def test_no_network(sandbox: PythonSandbox) -> None:
    source = (
        "import socket\n"
        "def grade(sample, item):\n"
        "    s = socket.create_connection(('127.0.0.1', 5432), timeout=1)\n"
        "    return 1.0\n"
    )
    result = _grade(sandbox, source)
    assert result.reward == 0.0
    assert result.metadata.errors.python_grader_runtime_error


@pytest.mark.parametrize(
    "body",
    [
        "import subprocess\n    subprocess.run(['cat', '/etc/hostname'])",
        "import os\n    os.system('true')",
        "import os\n    os.fork()",
        "import os\n    os.kill(os.getppid(), 9)",
        "import ctypes\n    ctypes.CDLL(None)",
        "import ctypes\n    ctypes.string_at(id(1), 8)",
        "import _posixsubprocess\n    _posixsubprocess.fork_exec(*([None] * 22))",
        "import sys\n    del sys.modules['_posixsubprocess']\n    import _posixsubprocess",
    ],
)
def test_no_processes_signals_or_native_code(sandbox: PythonSandbox, body: str) -> None:
    result = _grade(sandbox, f"def grade(sample, item):\n    {body}\n    return 1.0\n")
    assert result.reward == 0.0
    assert result.metadata.errors.python_grader_runtime_error
    assert _grade(sandbox, "def grade(s, i):\n    return 0.5").reward == 0.5


def test_memory_is_limited(sandbox: PythonSandbox) -> None:
    result = _grade(sandbox, "def grade(sample, item):\n    x = bytearray(2 * 1024**3)\n    return 1\n")
    assert result.reward == 0.0
    assert result.metadata.errors.python_grader_server_error_type == "oom"


def test_state_does_not_leak_between_gradings(sandbox: PythonSandbox) -> None:
    source = (
        "import json\ndef grade(sample, item):\n    n = getattr(json, 'seen', 0)\n    json.seen = n + 1\n    return n\n"
    )
    assert [_grade(sandbox, source).reward for _ in range(3)] == [0.0, 0.0, 0.0]


def test_a_killed_worker_is_replaced(sandbox: PythonSandbox) -> None:
    sandbox.warm()
    for worker in list(sandbox._all):
        worker.process.kill()
        worker.process.wait()
    assert _grade(sandbox, "def grade(s, i):\n    return 0.75").reward == 0.75


def test_libraries_of_openais_grader_image_import(sandbox: PythonSandbox) -> None:
    source = (
        "from nltk.translate.gleu_score import sentence_gleu\n"
        "def grade(sample, item):\n"
        "    return sentence_gleu([['a', 'b']], sample['output_text'].split())\n"
    )
    result = _grade(sandbox, source, "a b")
    assert result.metadata.errors.python_grader_runtime_error_details is None
    assert result.reward == 1.0


def test_sockets_are_refused_even_without_a_network_namespace() -> None:
    """What a server not running as root gets: the audit hook alone."""
    pool = PythonSandbox(SandboxLimits(wall_seconds=5, cpu_seconds=5, workers=1, isolate_network=False))
    try:
        source = "import socket\ndef grade(sample, item):\n    socket.socket()\n    return 1.0\n"
        result = _grade(pool, source)
        assert result.reward == 0.0
        assert "sandbox does not allow socket" in (result.metadata.errors.python_grader_runtime_error_details or "")
    finally:
        pool.close()
