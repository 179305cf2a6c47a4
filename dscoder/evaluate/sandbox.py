"""Running untrusted programs: each in its own directory and process group, with a wall-clock
timeout and CPU-time, memory, file-size and process-count limits, an empty environment, no
network, and capped output.

Isolation modes (`--sandbox`; `auto` takes the strongest that works here and says which):
- `bwrap` (bubblewrap): new user, PID, network, IPC and UTS namespaces; the whole filesystem
  read-only except the sample's directory and a private /tmp; the sandbox dies with its parent.
- `unshare` (util-linux, no extra package): new mount, PID, network, IPC and UTS namespaces; the
  filesystem read-only except the sample's directory, a private /tmp and empty /dev/shm, /var/tmp
  and /run/lock; no capabilities left to undo it.
- `none`: the time and resource limits only; programs run as the calling user, unisolated.
Started as root, bwrap and unshare run each program as an unprivileged user id of its own per
worker slot (so a fork bomb exhausts only its own slot's process limit), held by one process on
the machine at a time (`slot_uid`: two evaluations at once never share one). Such a user cannot
enter private folders such as /root, where administrators install pyenv interpreters and
rustup toolchains: in both modes those folders are replaced by an empty one that shows, read-
only, only the toolchains programs need (`exposures`). Started by a normal user, programs run as
that user in a user namespace and the process limit is not set (it would count the user's other
processes). Before any sample runs, `choose` checks that the mode starts the interpreter.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import resource
import select
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from dscoder.errors import UserError

log = logging.getLogger("dscoder")
BASE_UID = 61000  # the first sandbox user id (no account needed); see slot_uid
OUTPUT_CAP = 64 * 1024  # bytes of stdout/stderr kept for the result
MODES = ("auto", "bwrap", "unshare", "none")
TMP = "/tmp"  # where sample folders live: the sandbox's private /tmp shows them (whatever TMPDIR says)
SCRATCH = ("/dev/shm", "/var/tmp", "/run/lock")  # world-writable places an unshare sandbox empties
INSTALL = {"bwrap": "apt-get install bubblewrap", "unshare": "apt-get install util-linux"}  # Debian/Ubuntu


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


_announced: set[tuple[str, str]] = set()  # choices already reported by this process


def choose(requested: str, readable: tuple[str, ...]) -> str:
    """The isolation mode to use for `--sandbox requested`: `auto` gives the strongest mode that
    runs the interpreter here (logged, with why stronger ones were passed over); a mode that
    cannot is a UserError saying what is missing and how to install it."""
    if requested not in MODES:
        raise UserError(f"--sandbox {requested!r}: expected one of {', '.join(MODES)}")
    candidates = ("bwrap", "unshare", "none") if requested == "auto" else (requested,)
    passed_over = []
    for mode in candidates:
        problem = problem_with(mode, readable)
        if problem is None and (requested, mode) in _announced:
            return mode
        if problem is None:
            _announced.add((requested, mode))
            if mode == "none":
                log.warning(
                    "sandbox: none%s: untrusted programs run WITHOUT isolation (only the time and resource "
                    "limits hold)",
                    f" ({'; '.join(passed_over)})" if passed_over else "",
                )
            elif requested == "auto":
                log.info("sandbox: %s%s", mode, f" ({'; '.join(passed_over)})" if passed_over else "")
            return mode
        passed_over.append(f"{mode}: {problem}")
    if requested != "auto":
        raise UserError(f"--sandbox {requested}: {passed_over[0].split(': ', 1)[1]}")
    raise UserError(f"--sandbox auto: no isolation mode can run programs here ({'; '.join(passed_over)})")


@lru_cache(maxsize=None)
def problem_with(mode: str, readable: tuple[str, ...]) -> str | None:
    """None when `mode` starts this interpreter here, else what is missing (checked once)."""
    if mode != "none" and shutil.which(mode) is None:
        return f"{mode} is not installed (Debian/Ubuntu: {INSTALL[mode]})"
    if mode != "none" and os.getuid() == 0 and shutil.which("setpriv") is None:
        return f"setpriv is not installed (Debian/Ubuntu: {INSTALL['unshare']})"
    with Workdir() as folder:
        result = run(
            [sys.executable, "-c", "pass"], folder, Limits(timeout=30, cpu_seconds=30), mode, readable=readable
        )
    if result.returncode == 0:
        return None
    detail = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1][:200]
    return f"{mode} does not work here ({detail})"


def _searchable_by_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & stat.S_IXOTH)
    except OSError:
        return False


def exposures(readable: tuple[str, ...], workdir: Path | None) -> dict[str, list[tuple[str, bool]]]:
    """{folder to replace with an empty one: [(path to show inside it, writable)]}.

    /tmp is always replaced (a private /tmp), showing the sample's `workdir` (writable, when it
    lies there) and the readable paths in it; so is the user's home (and, as root, /root and any
    folder other users cannot enter, such as a 0700 home), showing just the readable paths in it,
    read-only. /tmp comes last, so a mount namespace can assemble the others in a folder under it."""
    hidden: dict[str, list[tuple[str, bool]]] = {"/tmp": []}
    if workdir is not None and Path(workdir).resolve().is_relative_to("/tmp"):
        hidden["/tmp"].append((str(Path(workdir).resolve()), True))
    for home in (
        {Path(os.path.expanduser("~")).resolve(), Path("/root")}
        if os.getuid() == 0
        else {Path(os.path.expanduser("~")).resolve()}
    ):
        if (
            home.is_dir()
            and len(home.parts) > 1
            and not Path("/tmp").is_relative_to(home)
            and not home.is_relative_to("/tmp")
        ):
            hidden.setdefault(str(home), [])
    for path in readable:
        path = Path(path).resolve()
        for ancestor in reversed(path.parents[:-1]):  # outermost first, "/" excluded
            if str(ancestor) in hidden or (os.getuid() == 0 and not _searchable_by_others(ancestor)):
                shown = hidden.setdefault(str(ancestor), [])
                if all(str(path) != p for p, _ in shown):
                    shown.append((str(path), False))
                break
    return dict(sorted(hidden.items(), key=lambda item: item[0] == "/tmp"))


def _bwrap(workdir: Path, readable: tuple[str, ...], env: dict[str, str], uid: int) -> list[str]:
    """The bubblewrap command line. As root, bwrap sets up the namespaces and mounts with its
    privileges (so toolchains under /root can be shown) and `setpriv` then drops to `uid`;
    otherwise bwrap runs unprivileged in a user namespace."""
    command = [
        _tool("bwrap"),
        "--unshare-net",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--die-with-parent",
        "--new-session",
        "--ro-bind",
        "/",
        "/",
        "--perms",
        "1777",
        "--tmpfs",
        "/tmp",
    ]
    if os.getuid() != 0:
        command += ["--unshare-user"]
    hidden = exposures(readable, None)
    for folder, shown in hidden.items():
        if folder != "/tmp":
            command += ["--perms", "0755", "--tmpfs", folder]
        for path, _ in shown:
            for parent in reversed(Path(path).parents):
                if parent.is_relative_to(folder) and parent != Path(folder):
                    command += ["--perms", "0755", "--dir", str(parent)]  # bwrap would create them 0700
            command += ["--ro-bind", path, path]
    command += [
        "--bind",
        str(workdir),
        str(workdir),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--chdir",
        str(workdir),
        "--clearenv",
    ]
    for key, value in env.items():
        command += ["--setenv", key, value]
    if os.getuid() == 0:
        command += _setpriv(uid)
    return command


def _tool(name: str) -> str:
    """The full path of a tool on this process's PATH (the sandbox's own PATH is another)."""
    return shutil.which(name) or name


def _setpriv(uid: int) -> list[str]:
    """Run the rest of the command line without any capability (as root: as user id `uid`)."""
    user = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if os.getuid() == 0 else []
    # --pdeathsig again: a change of user clears the parent-death signal unshare's --kill-child set
    return [
        _tool("setpriv"),
        *user,
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--pdeathsig=KILL",
        "--",
    ]


@lru_cache(maxsize=1)
def _stage() -> str:
    """An empty folder on which a sandbox's private mount namespace assembles each replacement
    folder before binding it into place (nothing is ever mounted on it outside a sandbox)."""
    folder = tempfile.mkdtemp(prefix="dscoder-stage-", dir=TMP)
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _unshare(workdir: Path, readable: tuple[str, ...], uid: int) -> list[str]:
    """The `unshare` command line: new mount, PID, network, IPC and UTS namespaces (and, for a
    normal user, a user namespace in which the user may mount). A shell inside the new mount
    namespace makes every mount read-only, gives the program a private /tmp holding its work
    folder (writable) and empty /dev/shm, /var/tmp and /run/lock, replaces (as root) private
    folders such as /root by ones that show only the toolchains, then runs the program without
    capabilities (as root: as `uid`), so it cannot undo any of it."""
    namespaces = ["--mount", "--net", "--ipc", "--uts", "--pid", "--fork", "--kill-child", "--mount-proc"]
    if os.getuid() != 0:
        namespaces = ["--user", "--map-root-user", *namespaces]
    stage, q = _stage(), shlex.quote
    script = [
        "set -e",  # the filesystem read-only first, then the program's own writable places
        "awk '$4 ~ /^rw/ {print $2}' /proc/self/mounts | while read -r m; do "
        'mount -o remount,bind,ro "$m" 2>/dev/null || true; done',
    ]
    for scratch in SCRATCH:
        if os.path.isdir(scratch) and not os.path.islink(scratch):
            script.append(f"mount -t tmpfs -o mode=1777,size=64m dscoder {scratch}")
    for folder, shown in exposures(readable, workdir).items():
        mode = "1777,size=512m" if folder == "/tmp" else "0755,size=16m"
        script.append(f"mount -t tmpfs -o mode={mode} dscoder {q(stage)}")
        for path, writable in shown:
            inside = q(str(Path(stage) / Path(path).relative_to(folder)))
            script += [
                f"mkdir -p {inside}",
                f"mount --bind {q(path)} {inside}",
                f"mount -o remount,bind,{'rw' if writable else 'ro'} {inside}",
            ]
        script.append(f"mount --rbind {q(stage)} {q(folder)}")
    script.append(f"cd {q(str(workdir))}")
    script.append("exec " + " ".join(q(a) for a in _setpriv(uid)) + ' "$@"')
    return [_tool("unshare"), *namespaces, "--", "/bin/sh", "-c", "\n".join(script), "sandbox"]


_slot_uids: dict[int, int] = {}  # this process's worker slot -> the sandbox user id it holds
_slot_locks: list = []  # their lock files, open (so held) until the process ends
_slot_guard = threading.Lock()


def slot_uid(slot: int) -> int:
    """The sandbox user id of this process's worker `slot`: the first of BASE_UID, BASE_UID + 1, ...
    that no other process on the machine holds (an flock on a file per id, released when the
    process ends), so two evaluations running at once (two `eval execute`, parallel test workers)
    never count against one user's process limit or have their programs reaped together."""
    with _slot_guard:
        if slot in _slot_uids:
            return _slot_uids[slot]
        folder = Path(TMP) / f"dscoder-sandbox-uids-{os.getuid()}"
        folder.mkdir(exist_ok=True)
        for uid in range(BASE_UID, BASE_UID + 4096):
            if uid in _slot_uids.values():
                continue
            lock = open(folder / f"{uid}.lock", "a")  # held open until the process ends
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.close()
                continue
            _slot_locks.append(lock)
            _slot_uids[slot] = uid
            return uid
        raise UserError(f"{folder}: all 4096 sandbox user ids are held by other running evaluations")


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
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin:" + os.path.dirname(shutil.which("rustc") or "/usr/bin"),
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "TMPDIR": str(workdir / ".tmp"),
        "GOCACHE": str(workdir / ".gocache"),
        "GOPATH": str(workdir / ".gopath"),
        "GOFLAGS": "-mod=mod",
        "GOPROXY": "off",
        "GO111MODULE": "on",
        "MONO_TRACE_LISTENER": "Console.Error",
    }  # mono reports a failed Debug.Assert there (else nowhere)


def run(
    command: list[str],
    workdir: Path,
    limits: Limits,
    mode: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    slot: int = 0,
    readable: tuple[str, ...] = (),
) -> Run:
    """Run `command` in `workdir` in sandbox `mode` (see `choose`), as the user id of worker
    `slot`; `readable` are the folders the program needs (interpreters, toolchains)."""
    uid = slot_uid(slot)
    env = {**environment(workdir), **(env or {})}
    if mode == "bwrap":
        full, child_env = _bwrap(workdir, readable, env, uid) + command, {}
    elif mode == "unshare":
        full, child_env = _unshare(workdir, readable, uid) + command, env
    elif mode == "none":
        full, child_env = command, env
    else:
        raise ValueError(f"unknown sandbox mode {mode!r}")

    def prepare() -> None:
        os.setsid()  # a process group of its own, killed whole at the timeout
        _die_with_parent()
        for kind, value in (
            (resource.RLIMIT_CPU, limits.cpu_seconds),
            (resource.RLIMIT_FSIZE, limits.file_bytes),
            (resource.RLIMIT_CORE, 0),
        ):
            resource.setrlimit(kind, (value, value))
        if os.getuid() == 0:
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
        if limits.memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))

    os.chmod(workdir, 0o777)
    (workdir / ".tmp").mkdir(mode=0o777, exist_ok=True)
    os.chmod(workdir / ".tmp", 0o777)
    start = time.monotonic()
    # read back through these handles, not the names: the program could replace the files
    with open(workdir / ".stdout", "w+b") as out, open(workdir / ".stderr", "w+b") as err:
        try:
            process = subprocess.Popen(
                full,
                cwd=workdir,
                env=child_env,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                preexec_fn=prepare,
            )
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
        return Run(
            None if timed_out else process.returncode, _tail_of(out), _tail_of(err), time.monotonic() - start, timed_out
        )


def _die_with_parent() -> None:
    """(In the child, before exec) be killed when the evaluating process dies, even by SIGKILL:
    a killed run leaves no program running on (bwrap does the same with --die-with-parent)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()


def _tail_of(f) -> str:
    """The last OUTPUT_CAP bytes of an open output file, as text."""
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - OUTPUT_CAP))
    return f.read().decode("utf-8", "replace")


def _tail(path: Path) -> str:
    """The last OUTPUT_CAP bytes of an output file a sandboxed program wrote; "" unless it is a
    plain file of the folder (the program may have put a link to a secret in its place)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    with open(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            return ""
        return _tail_of(f)


# A fixed program whose speed says how busy or slow this machine is; it prints its own time.
REFERENCE = "import time\nt = time.perf_counter()\ns = 0\nfor i in range(2_000_000):\n    s += i * i\nprint(time.perf_counter() - t)\n"
REFERENCE_SECONDS = 0.2  # its time on an idle 2-core machine of the kind dscoder is developed on
_factors: dict[tuple[str, int], tuple[float, float]] = {}  # (mode, parallel) -> (factor, when measured)


def load_factor(mode: str, readable: tuple[str, ...], parallel: int = 1, max_age: float = 60.0) -> float:
    """How many times slower than the reference machine a program runs here now, at least 1: the
    median time of the reference program run `parallel` at once, twice, inside sandbox `mode`
    (so a slow CPU, other load and the run's own workers all count); reused for `max_age`
    seconds. Evaluation scales its time limits by it."""
    cached = _factors.get((mode, parallel))
    if cached is not None and time.monotonic() - cached[1] < max_age:
        return cached[0]

    def once(_) -> float | None:
        with Workdir() as folder:
            (folder / "reference.py").write_text(REFERENCE)
            result = run(
                [sys.executable, "reference.py"], folder, Limits(timeout=120, cpu_seconds=120), mode, readable=readable
            )
        try:
            return float(result.stdout.strip())
        except ValueError:
            return None

    from concurrent.futures import ThreadPoolExecutor
    from statistics import median

    with ThreadPoolExecutor(parallel) as pool:
        times = [t for t in pool.map(once, range(2 * parallel)) if t is not None]
    factor = max(1.0, median(times) / REFERENCE_SECONDS) if times else 1.0
    _factors[(mode, parallel)] = (factor, time.monotonic())
    return factor


class Workdir:
    """A fresh directory for one sample, removed afterwards."""

    def __init__(self, root: Path | None = None):
        self.path = Path(tempfile.mkdtemp(prefix="dscoder-eval-", dir=root or TMP))

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class PythonWorker:
    """A fork server (pyworker.py) inside the sandbox for one worker slot: Python programs run
    in forked children instead of new interpreters (modes with a PID namespace and a private
    /tmp of their own: bwrap and unshare)."""

    def __init__(self, slot: int, readable: tuple[str, ...], mode: str):
        self.slot, self.readable = slot, readable
        self.root = Path(tempfile.mkdtemp(prefix=f"dscoder-slot{slot}-", dir=TMP))
        os.chmod(self.root, 0o755)  # samples write only in their own folder inside
        uid = slot_uid(slot)
        script = Path(__file__).with_name("pyworker.py")
        env = {"PATH": environment(self.root)["PATH"], "LANG": "C.UTF-8"}
        if mode == "bwrap":
            command, child_env = _bwrap(self.root, readable, env, uid), {}
        elif mode == "unshare":
            command, child_env = _unshare(self.root, readable, uid), env
        else:
            raise ValueError(f"no Python worker in sandbox mode {mode!r}")
        command += [sys.executable, "-E", str(script), str(self.root)]

        def prepare() -> None:
            os.setsid()
            _die_with_parent()
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if os.getuid() == 0:
                resource.setrlimit(resource.RLIMIT_NPROC, (256, 256))

        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_env,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=prepare,
        )
        self.uid = uid

    def folder(self) -> Path:
        """A fresh sample folder inside this worker's area."""
        path = Path(tempfile.mkdtemp(dir=self.root))
        os.chmod(path, 0o777)
        return path

    def run(self, folder: Path, file: str, limits: Limits) -> Run:
        import json

        request = {
            "dir": str(folder),
            "file": file,
            "timeout": limits.timeout,
            "cpu": limits.cpu_seconds,
            "memory": limits.memory_bytes,
            "fsize": limits.file_bytes,
            "env": environment(folder),
        }
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            # the server answers within the sample's timeout; one that does not (stopped, hung) is ended
            ready, _, _ = select.select([self.process.stdout], [], [], limits.timeout + 10)
            if not ready:
                self.close()
                raise RuntimeError("the Python worker did not answer")
            reply = json.loads(self.process.stdout.readline())
        except (OSError, ValueError):
            raise RuntimeError("the Python worker stopped") from None
        return Run(
            reply["returncode"],
            _tail(folder / ".stdout"),
            _tail(folder / ".stderr"),
            reply["seconds"],
            reply["timed_out"],
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        try:
            self.process.stdin.close()  # the server ends when its input does
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            _kill_group(self.process)
            self.process.wait()
        _wait_until_gone(self.uid)
        shutil.rmtree(self.root, ignore_errors=True)
