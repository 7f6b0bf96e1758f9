"""The python grader's sandbox process: a warm "zygote" that forks one restricted child per grading.

Standalone on purpose (standard library only, no ``tunery`` import): it is started as a script with
``python -I`` (no PYTHONPATH, no user site, no script directory on ``sys.path``) in an empty temporary
directory with a scrubbed environment, by ``sandbox.py``. Messages are length-prefixed JSON on
stdin/stdout.

Per grading, the zygote compiles the source (cached; compiling runs no user code) and forks a child
that, before running any user code:
  * starts a new session (so the whole process group can be killed) and sends stdin/stdout/stderr to
    /dev/null (user ``print`` cannot corrupt the protocol);
  * sets rlimits: CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS), file size (RLIMIT_FSIZE), no
    core dumps;
  * installs an audit hook (``sys.addaudithook``; hooks cannot be removed) that refuses: opening any
    path outside the Python installation / site-packages for reading or outside its working directory
    for writing, and any path under the denied roots (Tunery's data directory) at all; listing or
    changing directories outside those; creating sockets; starting processes (subprocess, os.system,
    exec*, spawn*, fork; ``_posixsubprocess.fork_exec``, which has no audit event, is replaced);
    sending signals; and loading native code through ctypes / cffi.
The zygote also enters a new, empty network namespace at start-up when it runs as root (``unshare``),
so even native code has no network. The parent's wall-clock timeout kills the child's process group.
This is defence in depth for graders written by the server's own users, not a boundary against a
determined attacker with native code execution: run Tunery in a container for that.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import select
import signal
import struct
import sys
import time
import traceback
from typing import Any

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
_HEADER = struct.Struct("!I")
_BLOCKED_EVENTS = (
    "socket.__new__",
    "socket.connect",
    "socket.bind",
    "socket.getaddrinfo",
    "subprocess.Popen",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.forkpty",
    "os.kill",
    "os.killpg",
    "signal.pthread_kill",
    "ctypes.",  # every ctypes event: dlopen, dlsym, cdata, call_function, string_at, addressof...
    "pty.spawn",
    "os.setuid",
    "os.chroot",
)
_BLOCKED_IMPORTS = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "cffi", "_cffi_backend"})
_PATH_EVENTS = frozenset({"os.listdir", "os.scandir", "os.chdir", "glob.glob", "os.walk"})
_WRITE_EVENTS = frozenset(
    {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink", "os.truncate",
     "shutil.rmtree", "shutil.copyfile", "shutil.move", "os.utime"}
)  # fmt: skip


def main() -> None:
    config = json.loads(sys.argv[1])
    if config.get("isolate_network", True) and os.geteuid() == 0:
        _unshare_network()
    for name in config.get("preload", []):
        with contextlib.suppress(Exception):  # a missing optional library only costs its import time later
            __import__(name)
    config["prctl"] = _prctl()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    ready = json.dumps({"status": "ready"}).encode()
    stdout.write(_HEADER.pack(len(ready)) + ready)
    stdout.flush()
    compiled: dict[str, Any] = {}
    while True:
        header = stdin.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        request = json.loads(stdin.read(_HEADER.unpack(header)[0]))
        reply = _grade(request, config, compiled)
        data = json.dumps(reply).encode()
        stdout.write(_HEADER.pack(len(data)) + data)
        stdout.flush()
        _clean(os.getcwd())


def _prctl() -> Any:
    """libc's ``prctl``, loaded before any grader runs (the children may not load native code)."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except Exception:
        return None


def _unshare_network() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.unshare(CLONE_NEWNET)
    except Exception:  # not permitted here: the audit hook still refuses sockets
        pass


def _grade(request: dict[str, Any], config: dict[str, Any], compiled: dict[str, Any]) -> dict[str, Any]:
    source = request["source"]
    code = compiled.get(source)
    if code is None:
        try:
            code = compile(source, "<grader>", "exec")
        except (SyntaxError, ValueError) as exc:
            return {"status": "runtime_error", "details": "".join(traceback.format_exception_only(exc)).strip()}
        if len(compiled) > 32:
            compiled.clear()
        compiled[source] = code
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: restrict, grade, report, exit without running the zygote's cleanup
        os.close(read_fd)
        status = 0
        try:
            _child(code, request, config, write_fd)
        except BaseException:
            status = 1
        os._exit(status)
    os.close(write_fd)
    return _collect(pid, read_fd, float(config["wall_seconds"]))


def _child(code: Any, request: dict[str, Any], config: dict[str, Any], write_fd: int) -> None:
    os.setsid()
    if config.get("prctl") is not None:
        config["prctl"](PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with the zygote, even if it is killed
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    cpu = math.ceil(config["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (config["memory_bytes"], config["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (config["file_bytes"], config["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _disarm_process_spawning()
    _install_audit_hook(config, write_fd)
    try:
        namespace: dict[str, Any] = {"__name__": "grader", "__builtins__": __builtins__}
        exec(code, namespace)
        grade = namespace.get("grade")
        if not callable(grade):
            raise TypeError("The source must define a function grade(sample, item).")
        value = grade(request["sample"], request["item"])
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, int | float) or not math.isfinite(float(value)):
            raise TypeError(f"grade() must return a finite number, not {value!r}.")
        reply: dict[str, Any] = {"status": "ok", "reward": float(value)}
    except MemoryError:
        reply = {"status": "oom", "details": "The grader ran out of memory."}
    except BaseException as exc:
        lines = traceback.format_exception(exc)
        reply = {"status": "runtime_error", "details": "".join(lines)[-4000:]}
    os.write(write_fd, json.dumps(reply).encode())


def _disarm_process_spawning() -> None:
    """``_posixsubprocess.fork_exec`` raises no audit event of its own: replace it (the module stays
    loaded, so importing it again finds this copy; a fresh import is refused by the audit hook)."""
    import _posixsubprocess
    import subprocess

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError("The grader sandbox does not allow starting processes.")

    _posixsubprocess.fork_exec = refuse
    subprocess._fork_exec = refuse  # type: ignore[attr-defined]


def _install_audit_hook(config: dict[str, Any], result_fd: int) -> None:
    work = os.path.realpath(os.getcwd())
    readable = tuple(
        os.path.realpath(p)
        for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.__file__), *sys.path}
        if p and os.path.isdir(p)
    )
    denied = tuple(os.path.realpath(p) for p in config.get("denied_paths", []))
    devices = ("/dev/null", "/dev/urandom", "/dev/random")

    def under(path: str, roots: tuple[str, ...]) -> bool:
        return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)

    def allowed(raw: Any, write: bool) -> bool:
        if isinstance(raw, int):
            return raw == result_fd or raw in (0, 1, 2)
        if isinstance(raw, bytes):
            raw = os.fsdecode(raw)
        if not isinstance(raw, str):
            return False
        path = os.path.realpath(os.path.join(work, raw))
        if under(path, denied):
            return False
        if path in devices or under(path, (work,)):
            return True
        return not write and under(path, readable)

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            write = any(c in mode for c in "wax+") or bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if not allowed(args[0], write):
                raise PermissionError(f"The grader sandbox does not allow opening {args[0]!r}.")
        elif event == "import":
            if args and str(args[0]).split(".")[0] in _BLOCKED_IMPORTS:
                raise PermissionError(f"The grader sandbox does not allow importing {args[0]!r}.")
        elif event in _PATH_EVENTS:
            if args and args[0] is not None and not allowed(args[0], False):
                raise PermissionError(f"The grader sandbox does not allow {event} on {args[0]!r}.")
        elif event in _WRITE_EVENTS:
            if args and not allowed(args[0], True):
                raise PermissionError(f"The grader sandbox does not allow {event} on {args[0]!r}.")
        elif event.startswith(_BLOCKED_EVENTS):
            raise PermissionError(f"The grader sandbox does not allow {event} (no network, no processes).")

    sys.addaudithook(hook)


def _collect(pid: int, read_fd: int, wall_seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + wall_seconds
    chunks: list[bytes] = []
    timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([read_fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
    status = _reap(pid, deadline if not timed_out else 0.0)
    if status is None:  # still running: past its time (or it closed the pipe and kept going)
        timed_out = True
        _kill_group(pid)
        _, status = os.waitpid(pid, 0)
    _kill_group(pid)  # anything the grader left behind in its process group
    if timed_out:
        return {"status": "timeout", "details": f"The grader did not finish within {wall_seconds:g} s."}
    if chunks:
        try:
            reply: dict[str, Any] = json.loads(b"".join(chunks))
            return reply
        except ValueError:
            return {"status": "internal", "details": "The grader's result could not be read."}
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL):
        return {"status": "timeout", "details": "The grader used up its CPU time and was killed."}
    if os.WIFSIGNALED(status):
        return {"status": "internal", "details": f"The grader was killed by signal {os.WTERMSIG(status)}."}
    return {"status": "internal", "details": f"The grader exited with status {os.WEXITSTATUS(status)}."}


def _reap(pid: int, deadline: float) -> int | None:
    """The child's wait status once it exits, or ``None`` if it is still running at ``deadline``."""
    pause = 0.0002
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(pause)
        pause = min(pause * 2, 0.01)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _clean(work: str) -> None:
    import shutil

    for entry in os.scandir(work):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


if __name__ == "__main__":
    main()
