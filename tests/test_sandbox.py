"""The sandbox modes: chosen explicitly or automatically, each one working (the interpreter and the
toolchains reachable wherever they are installed) or refused before any sample runs; and a
machine without a working bubblewrap still evaluating correctly."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED, need_shared
from dscoder.cli import main
from dscoder.evaluate import sandbox, toolchains

BENCH = SHARED / "benchmarks"
READABLE = toolchains.readable_roots()


def canonical_samples(path, out, count):
    from dscoder.evaluate.benchmarks import tasks

    _, task_list = tasks(path)
    rows = [{"task_id": t.task_id, "completion": t.reference} for t in task_list[:count]]
    rows += [{"task_id": t.task_id, "completion": ""} for t in task_list[:count]]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def run_dscoder(args, env=None, wrap=()):
    """`dscoder ARGS` in a new process (optionally under `wrap`), as a user would run it."""
    command = [*wrap, sys.executable, "-m", "dscoder", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def working_modes():
    return [m for m in ("bwrap", "unshare") if sandbox.problem_with(m, READABLE) is None]


@pytest.mark.parametrize("mode", ["bwrap", "unshare", "none"])
def test_each_mode_runs_python_or_is_refused_before_any_sample(mode, tmp_path, capsys):
    samples = canonical_samples(need_shared(BENCH / "HumanEval.jsonl.gz"), tmp_path / "s.jsonl", 3)
    code = main(
        [
            "eval",
            "execute",
            "--benchmark",
            str(BENCH / "HumanEval.jsonl.gz"),
            "--samples",
            str(samples),
            "--out",
            str(tmp_path / "out"),
            "--sandbox",
            mode,
        ]
    )
    err = capsys.readouterr().err
    problem = sandbox.problem_with(mode, READABLE)
    if problem:  # refused in one line, with what is missing, and nothing written
        assert code == 2 and f"--sandbox {mode}: " in err and "Traceback" not in err
        assert not (tmp_path / "out").exists()
        return
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert summary["overall"]["pass@1"] == pytest.approx(0.5) and summary["statuses"] == {"passed": 3, "failed": 3}
    assert summary["isolation"] == run["execution"]["isolation"] == mode
    if mode == "none":
        assert "WITHOUT isolation" in err


def test_auto_takes_the_strongest_mode_that_works():
    modes = working_modes()
    assert sandbox.choose("auto", READABLE) == (modes[0] if modes else "none")


def test_an_unknown_mode_is_an_argument_error(capsys, tmp_path):
    code = main(
        [
            "eval",
            "execute",
            "--benchmark",
            "b.jsonl",
            "--samples",
            "s.jsonl",
            "--out",
            str(tmp_path / "o"),
            "--sandbox",
            "docker",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--sandbox: invalid choice: 'docker'" in err and not (tmp_path / "o").exists()


def test_a_toolchain_under_a_private_home_runs_in_every_isolating_mode(tmp_path):
    """The interpreter (and rustc) of an administrator's pyenv/rustup under /root: the sandbox
    user cannot enter /root, so each mode shows just those folders."""
    for mode in working_modes():
        with sandbox.Workdir() as work:
            result = sandbox.run(
                [sys.executable, "-c", "import os, sys; print(os.getuid(), sys.prefix)"],
                work,
                sandbox.Limits(),
                mode,
                readable=READABLE,
            )
            assert result.returncode == 0, (mode, result.stderr)
            if os.getuid() == 0:
                assert result.stdout.split()[0] == str(sandbox.slot_uid(0)) != "0"  # not root
            if shutil.which("rustc"):
                assert toolchains.probe("rust", mode) is None


def fake_bwrap(folder):
    """A `bwrap` that fails as it does in many containers."""
    folder.mkdir()
    script = folder / "bwrap"
    script.write_text(
        "#!/bin/sh\necho 'bwrap: Creating new user namespace failed: Operation not permitted' >&2\nexit 1\n"
    )
    script.chmod(0o755)
    return folder


def hidden_bwrap_wrap():
    """A mount namespace in which /usr/bin/bwrap is not there (root only)."""
    real = shutil.which("bwrap")
    if os.getuid() != 0 or real is None or shutil.which("unshare") is None:
        return None
    return ("unshare", "--mount", "--", "sh", "-c", f'mount --bind /dev/null {real} && exec "$@"', "sh")


@pytest.mark.parametrize("how", ["broken", "hidden"])
def test_a_machine_without_a_working_bubblewrap_still_evaluates(how, tmp_path):
    """What a fresh machine (or a container) without bubblewrap sees: `auto` says why it passed
    bwrap over, takes the next mode, and the canonical solutions still pass, Python and Rust."""
    env, wrap = dict(os.environ), ()
    if how == "broken":
        env["PATH"] = f"{fake_bwrap(tmp_path / 'bin')}{os.pathsep}{env['PATH']}"
    else:
        wrap = hidden_bwrap_wrap()
        if wrap is None:
            pytest.skip("hiding bwrap needs root, util-linux's unshare and an installed bwrap")
    benchmarks = [("python", BENCH / "HumanEval.jsonl.gz", 5)]
    if shutil.which("rustc"):
        benchmarks.append(("rust", BENCH / "humaneval-x-sample-rust.jsonl", 2))
    for language, bench, count in benchmarks:
        samples = canonical_samples(need_shared(bench), tmp_path / f"{language}.jsonl", count)
        out = tmp_path / f"out-{language}"
        done = run_dscoder(["eval", "execute", "--benchmark", bench, "--samples", samples, "--out", out], env, wrap)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        assert "bwrap: " in done.stderr  # why bwrap was passed over
        summary = json.loads((out / "summary.json").read_text())
        assert summary["isolation"] != "bwrap"
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        assert sorted(r["status"] for r in rows if r["completion_id"] == 0) == ["passed"] * count, rows
        assert not any(r["passed"] for r in rows if r["completion_id"] == 1)


def test_a_private_temporary_folder_does_not_hide_the_samples(tmp_path, monkeypatch):
    """TMPDIR inside a folder the sandbox replaces (a private home) must not hide the sample's
    own folder from it."""
    import tempfile

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    for mode in working_modes():
        with sandbox.Workdir() as work:
            result = sandbox.run(
                [sys.executable, "-c", "open('x', 'w').write('ok')"], work, sandbox.Limits(), mode, readable=READABLE
            )
            assert result.returncode == 0 and (work / "x").read_text() == "ok", (mode, result.stderr)


@pytest.mark.parametrize("mode", ["bwrap", "unshare"])
def test_a_killed_evaluation_leaves_no_program_running(mode, tmp_path):
    import signal
    import time

    if sandbox.problem_with(mode, READABLE):
        pytest.skip(f"--sandbox {mode}: {sandbox.problem_with(mode, READABLE)}")
    marker = f"59.{os.getpid():07d}{len(mode)}"  # a sleep of about a minute that no other process has
    script = (
        "import os\nfrom dscoder.evaluate import sandbox, toolchains\nwith sandbox.Workdir() as w:\n"
        "    sandbox.run(['sleep', os.environ['MARKER']], w, "
        f"sandbox.Limits(timeout=60), {mode!r}, readable=toolchains.readable_roots())\n"
    )
    host = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "MARKER": marker})

    def running(program_only=False):
        return [
            p
            for p in Path("/proc").glob("[0-9]*/cmdline")
            if marker.encode() in _read(p) and (not program_only or _read(p).startswith(b"sleep\0"))
        ]

    deadline = time.time() + 30
    while not running(program_only=True) and time.time() < deadline:
        time.sleep(0.05)
    assert running(program_only=True), "the program did not start"
    host.send_signal(signal.SIGKILL)
    host.wait()
    deadline = time.time() + 15
    while running() and time.time() < deadline:
        time.sleep(0.05)
    assert not running()


def _read(path):
    try:
        return path.read_bytes()
    except OSError:
        return b""


def test_a_sandbox_user_id_is_held_by_one_process_at_a_time(tmp_path):
    """Two evaluations at once (two `eval execute`, parallel test workers) get different user ids
    for their slots: a fork bomb in one cannot use up the other's process limit, and one's
    clean-up never reaps the other's programs. An id is free again when its process ends."""
    import subprocess

    holder = subprocess.Popen(
        [sys.executable, "-c", "from dscoder.evaluate import sandbox; print(sandbox.slot_uid(0), flush=True); input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        held = int(holder.stdout.readline())
        here = {sandbox.slot_uid(slot) for slot in (0, 1)}
        assert held not in here and len(here) == 2 and sandbox.slot_uid(0) == sandbox.slot_uid(0)
    finally:
        holder.communicate("\n", timeout=30)
    again = subprocess.run(
        [sys.executable, "-c", "from dscoder.evaluate import sandbox; print(sandbox.slot_uid(0))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(again.stdout) not in here  # the first free id: the one the holder had, or another free one
