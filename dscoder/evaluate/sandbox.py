"""Running untrusted programs: each in its own directory and process group, with a wall-clock
timeout and CPU-time, memory, file-size and process-count limits, an empty environment, no
network, and capped output.

Isolation, strongest available first:
- `bwrap` (bubblewrap) run as an unprivileged user id of its own per worker slot (when started
  as root): new user, PID, network, IPC and UTS namespaces; the whole filesystem read-only
  except the sample's directory and a private /tmp; the sandbox dies with its parent. Programs
  cannot reach the network, see or signal other processes, or write anywhere else, and a fork
  bomb exhausts only its own slot's process limit.
- without bwrap: `unshare --net` where the kernel allows it, the same user ids and limits.
  Writable world-shared places such as /tmp are then reachable; the summary records which
  isolation was used.
Started by a normal user, programs run as that user and the process limit is not set (it would
count the user's other processes); the timeout, the PID namespace and the other limits remain.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

BASE_UID = 61000  # sandbox user ids: BASE_UID + worker slot (no account needed)
OUTPUT_CAP = 64 * 1024  # bytes of stdout/stderr kept for the result


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run."""

    timeout: float = 10.0  # wall-clock seconds
    cpu_seconds: int = 20
    memory_bytes: int = 2 * 2**30  # address space; 0: unlimited (runtimes that reserve a lot)
    file_bytes: int = 16 * 2**20
    processes: int = 256  # for the nobody user while the program runs


@dataclass
class Run:
    """What happened to one command."""

    returncode: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool


@lru_cache(maxsize=1)
def isolation() -> str:
    """"bwrap", "unshare" or "none": what this machine allows (checked once)."""
    with Workdir() as folder:
        if shutil.which("bwrap") and _works(_bwrap(folder, (), {}, BASE_UID) + ["/bin/true"], folder):
            return "bwrap"
    if shutil.which("unshare") and _works(["unshare", "--net", "/bin/true"], None):
        return "unshare"
    return "none"


def _works(command: list[str], folder: Path | None) -> bool:
    def prepare():
        if not command[0] == "bwrap":
            _drop_privileges(BASE_UID)

    try:
        return subprocess.run(command, capture_output=True, timeout=20, cwd=folder, preexec_fn=prepare).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _drop_privileges(uid: int) -> None:
    if os.getuid() == 0:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)


def _bwrap(workdir: Path, readable: tuple[str, ...], env: dict[str, str], uid: int) -> list[str]:
    """The bubblewrap command line. As root, bwrap sets up the namespaces and mounts with its
    privileges (so toolchains under /root can be shown) and `setpriv` then drops to `uid`;
    otherwise bwrap runs unprivileged in a user namespace."""
    command = ["bwrap", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent",
               "--new-session", "--ro-bind", "/", "/", "--perms", "1777", "--tmpfs", "/tmp"]
    if os.getuid() == 0:
        command += ["--tmpfs", "/root"]  # hide the administrator's home, show only the toolchains in it
    else:
        command += ["--unshare-user"]
    for path in readable:
        for parent in reversed(Path(path).parents[:-2] if path.startswith("/tmp/") else ()):
            command += ["--perms", "0755", "--dir", str(parent)]  # bwrap would create them 0700
        command += ["--ro-bind", path, path]
    command += ["--bind", str(workdir), str(workdir), "--proc", "/proc", "--dev", "/dev", "--chdir", str(workdir),
                "--clearenv"]
    for key, value in env.items():
        command += ["--setenv", key, value]
    if os.getuid() == 0:
        command += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                    "--bounding-set=-all", "--"]
    return command


def _wait_until_gone(uid: int, seconds: float = 10.0) -> None:
    """After a kill, wait for the slot's processes to be reaped (a fork bomb takes a moment)."""
    if os.getuid() != 0:
        return
    deadline = time.monotonic() + seconds
    marker = f"Uid:\t{uid}\t"
    while time.monotonic() < deadline:
        alive = False
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                if marker in status.read_text():
                    alive = True
                    break
            except OSError:
                continue
        if not alive:
            return
        time.sleep(0.05)


def environment(workdir: Path) -> dict[str, str]:
    """The only variables a program sees (nothing of the caller's, so no secrets)."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin:" + os.path.dirname(shutil.which("rustc") or "/usr/bin"),
            "HOME": str(workdir), "LANG": "C.UTF-8", "TMPDIR": str(workdir / ".tmp"), "GOCACHE": str(workdir / ".gocache"),
            "GOPATH": str(workdir / ".gopath"), "GOFLAGS": "-mod=mod", "GOPROXY": "off", "GO111MODULE": "on"}


def run(command: list[str], workdir: Path, limits: Limits, stdin: str | None = None,
        env: dict[str, str] | None = None, slot: int = 0, readable: tuple[str, ...] = ()) -> Run:
    """Run `command` in `workdir` inside the sandbox, as the user id of worker `slot`;
    `readable` are folders under /root or /tmp the program needs (interpreters, toolchains)."""
    uid = BASE_UID + slot
    mode = isolation()
    env = {**environment(workdir), **(env or {})}
    if mode == "bwrap":
        full, child_env = _bwrap(workdir, readable, env, uid) + command, {}
    elif mode == "unshare":
        full, child_env = ["unshare", "--net", *command], env
    else:
        full, child_env = command, env

    def prepare() -> None:
        os.setsid()  # a process group of its own, killed whole at the timeout
        for kind, value in ((resource.RLIMIT_CPU, limits.cpu_seconds), (resource.RLIMIT_FSIZE, limits.file_bytes),
                            (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(kind, (value, value))
        if os.getuid() == 0:
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
        if limits.memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        if mode != "bwrap":  # bwrap drops to the slot's user itself, after mounting
            _drop_privileges(uid)

    os.chmod(workdir, 0o777)
    (workdir / ".tmp").mkdir(mode=0o777, exist_ok=True)
    os.chmod(workdir / ".tmp", 0o777)
    out_path, err_path = workdir / ".stdout", workdir / ".stderr"
    start = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        try:
            process = subprocess.Popen(full, cwd=workdir, env=child_env, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                       stdout=out, stderr=err, preexec_fn=prepare)
        except OSError as exc:
            return Run(127, "", f"cannot start {command[0]}: {exc}", 0.0, False)
        timed_out = False
        try:
            process.communicate(input=stdin.encode() if stdin is not None else None, timeout=limits.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(process)
            process.wait()
            _wait_until_gone(uid)
    return Run(None if timed_out else process.returncode, _tail(out_path), _tail(err_path),
               time.monotonic() - start, timed_out)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()


def _tail(path: Path) -> str:
    """The last OUTPUT_CAP bytes of an output file, as text."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - OUTPUT_CAP))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


class Workdir:
    """A fresh directory for one sample, removed afterwards."""

    def __init__(self, root: Path | None = None):
        self.path = Path(tempfile.mkdtemp(prefix="dscoder-eval-", dir=root))

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class PythonWorker:
    """A fork server (pyworker.py) inside the sandbox for one worker slot: Python programs run
    in forked children instead of new interpreters (bubblewrap isolation only)."""

    def __init__(self, slot: int, readable: tuple[str, ...]):
        import sys

        self.slot, self.readable = slot, readable
        self.root = Path(tempfile.mkdtemp(prefix=f"dscoder-slot{slot}-"))
        os.chmod(self.root, 0o755)  # samples write only in their own folder inside
        uid = BASE_UID + slot
        script = Path(__file__).with_name("pyworker.py")
        command = _bwrap(self.root, readable, {"PATH": environment(self.root)["PATH"], "LANG": "C.UTF-8"}, uid)
        command += [sys.executable, "-E", str(script), str(self.root)]

        def prepare() -> None:
            os.setsid()
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if os.getuid() == 0:
                resource.setrlimit(resource.RLIMIT_NPROC, (256, 256))

        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True, preexec_fn=prepare)
        self.uid = uid

    def folder(self) -> Path:
        """A fresh sample folder inside this worker's area."""
        path = Path(tempfile.mkdtemp(dir=self.root))
        os.chmod(path, 0o777)
        return path

    def run(self, folder: Path, file: str, limits: Limits) -> Run:
        import json

        request = {"dir": str(folder), "file": file, "timeout": limits.timeout, "cpu": limits.cpu_seconds,
                   "memory": limits.memory_bytes, "fsize": limits.file_bytes, "env": environment(folder)}
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            reply = json.loads(self.process.stdout.readline())
        except (OSError, ValueError):
            raise RuntimeError("the Python worker stopped") from None
        return Run(reply["returncode"], _tail(folder / ".stdout"), _tail(folder / ".stderr"), reply["seconds"],
                   reply["timed_out"])

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        try:
            self.process.stdin.close()
        except OSError:
            pass
        _kill_group(self.process)
        self.process.wait()
        _wait_until_gone(self.uid)
        shutil.rmtree(self.root, ignore_errors=True)
