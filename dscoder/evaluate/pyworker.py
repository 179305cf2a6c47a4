"""A Python fork server that runs inside the sandbox (standard library only, no dscoder import).

Started once per worker slot inside bubblewrap as the slot's user, it reads one JSON request per
line ({dir, file, timeout, cpu, memory, fsize}) and, for each, forks a child that starts a new
session in the sample's directory, sets the resource limits, points stdout/stderr at files there,
clears the environment and runs the program as `__main__`. Forking skips interpreter start-up
(most of a HumanEval program's cost); every other guarantee of the sandbox holds (namespaces, the
slot's user, read-only filesystem, limits). After each sample, every process left in the
sandbox's PID namespace except this server is killed, so nothing survives into the next sample.
"""

import json
import os
import resource
import runpy
import select
import signal
import sys
import time
import traceback

# Standard-library modules benchmark programs commonly import, loaded once here so that forked
# children find them in sys.modules instead of importing them again (it does not change what a
# program can do: it could import them itself).
PRELOAD = (
    "typing",
    "math",
    "re",
    "collections",
    "itertools",
    "functools",
    "string",
    "heapq",
    "bisect",
    "hashlib",
    "random",
    "statistics",
    "fractions",
    "decimal",
    "copy",
    "operator",
    "unittest",
)
for _name in PRELOAD:
    try:
        __import__(_name)
    except ImportError:
        pass


def _child(request):
    os.setsid()
    os.chdir(request["dir"])
    limits = (
        (resource.RLIMIT_CPU, request["cpu"]),
        (resource.RLIMIT_FSIZE, request["fsize"]),
        (resource.RLIMIT_CORE, 0),
    )
    for kind, value in limits:
        resource.setrlimit(kind, (value, value))
    if request["memory"]:
        resource.setrlimit(resource.RLIMIT_AS, (request["memory"], request["memory"]))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, name in ((1, ".stdout"), (2, ".stderr")):
        os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [request["file"]]
    sys.path.insert(0, request["dir"])
    code = 0
    try:
        runpy.run_path(request["file"], run_name="__main__")
    except SystemExit as exc:
        if isinstance(exc.code, int):
            code = exc.code
        elif exc.code is not None:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(code)


def _sweep(keep, tmp_device):
    """Kill every process of this PID namespace but the init and this server, and empty the
    sandbox's private /tmp (but for `keep`, the server's own area). A /tmp that is no longer the
    private one this server started with (a program got it unmounted) is left alone, and the
    server stops: its owner starts a new one."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in (1, me):
            try:
                os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                break
        except ChildProcessError:
            break
    import shutil

    if os.stat("/tmp").st_dev != tmp_device:
        os._exit(3)
    for entry in os.listdir("/tmp"):
        path = os.path.join("/tmp", entry)
        if path != keep and not keep.startswith(path + "/"):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass


def _undumpable():
    """Make this server impossible to ptrace for the programs it forks (they run as the same user):
    a program must not stop it or rewrite the results it reports."""
    import ctypes

    PR_SET_DUMPABLE = 4
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def serve(keep):
    _undumpable()
    tmp_device = os.stat("/tmp").st_dev
    for line in sys.stdin:
        request = json.loads(line)
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(request)
        timed_out, status = False, None
        fd = os.pidfd_open(pid)
        ready, _, _ = select.select([fd], [], [], request["timeout"])
        if not ready:
            timed_out = True
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        _sweep(keep, tmp_device)
        reply = {
            "returncode": None if timed_out else os.waitstatus_to_exitcode(status),
            "timed_out": timed_out,
            "seconds": time.monotonic() - start,
        }
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve(sys.argv[1])
