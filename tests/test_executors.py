"""The build on a two-node Ray cluster started on this machine: the same corpus as the local
executor, a worker killed mid-task retried, and a node that cannot see the build folder."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from test_build import CFG, corpus_bytes, corpus_content, stdlib_repos, uninterrupted

from dscoder.config import apply_overrides
from dscoder.data.build import build
from dscoder.data.steps import BuildConfig
from dscoder.errors import UserError

pytest.importorskip("ray")
RAY = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second node, one CPU each, as `ray start` makes them on two machines."""
    if RAY is None:
        pytest.skip("the ray command is not installed (pip install 'dscoder[ray]')")
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run(
            [
                RAY,
                "start",
                "--head",
                f"--port={port}",
                "--node-ip-address=127.0.0.1",
                "--include-dashboard=false",
                *common,
            ],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [
                RAY,
                "start",
                f"--address={address}",
                "--node-ip-address=127.0.0.1",
                '--resources={"second_node": 1}',
                *common,
            ],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True)
        pytest.skip(f"could not start a local two-node Ray cluster: {getattr(exc, 'stderr', b'')[-300:]!r}")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    yield address
    import ray

    if ray.is_initialized():
        ray.shutdown()
    subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.mark.slow
def test_two_nodes_build_the_same_corpus_as_local_processes(cluster, tmp_path):
    import ray

    local = tmp_path / "local"
    build(local, stdlib_repos(), [], [], CFG)
    out = tmp_path / "ray"
    ray.init(address=cluster, log_to_driver=False)
    try:
        assert sum(node["Alive"] for node in ray.nodes()) == 2
        build(out, stdlib_repos(), [], [], CFG, engine="ray", ray_address=cluster)
    finally:
        ray.shutdown()
    assert corpus_bytes(out).keys() == corpus_bytes(local).keys()
    assert {k: v for k, v in corpus_bytes(out).items() if k != "manifest.json"} == {
        k: v for k, v in corpus_bytes(local).items() if k != "manifest.json"
    }


@pytest.mark.slow
def test_a_worker_killed_mid_task_is_retried_and_the_corpus_is_the_same(cluster, tmp_path):
    import psutil

    reference = tmp_path / "reference"
    build(reference, stdlib_repos(), [], [], CFG)
    killed: list[int] = []
    stop = threading.Event()

    def kill_one_task():
        while not stop.is_set() and not killed:
            for process in psutil.process_iter(["cmdline"]):
                cmdline = process.info["cmdline"] or []
                if cmdline and cmdline[0].startswith("ray::run_unit"):
                    try:
                        process.send_signal(signal.SIGKILL)
                        killed.append(process.pid)
                    except psutil.Error:
                        continue
                    break
            time.sleep(0.005)

    killer = threading.Thread(target=kill_one_task)
    killer.start()
    try:
        build(tmp_path / "out", stdlib_repos(), [], [], CFG, engine="ray", ray_address=cluster)
    finally:
        stop.set()
        killer.join()
    assert killed, "no task was running long enough to be killed"
    assert {k: v for k, v in corpus_bytes(tmp_path / "out").items() if k != "manifest.json"} == {
        k: v for k, v in corpus_bytes(reference).items() if k != "manifest.json"
    }


@pytest.mark.slow
def test_a_local_ray_build_starts_its_own_instance_beside_a_running_cluster(cluster, tmp_path):
    """`--engine ray` without an address runs on a Ray instance of its own with `--workers` CPUs,
    the same corpus as local processes, even where a `ray start` cluster already runs on the
    machine (Ray would otherwise join that cluster)."""
    import ray

    reference = uninterrupted(tmp_path, CFG)
    out = tmp_path / "ray"
    build(out, stdlib_repos(), [], [], apply_overrides(CFG, {"run.workers": "2"}), engine="ray")
    assert corpus_content(out) == reference
    assert not ray.is_initialized()


def test_a_node_that_cannot_see_the_build_folder_is_one_line(tmp_path):
    """Every task checks the build folder first: on a node without the shared filesystem the
    build stops with a line naming the machine and the folder, and writes nothing elsewhere."""
    from dscoder.data.build import run_unit

    unit = {"index": 0, "kind": "repos", "items": []}
    with pytest.raises(UserError, match=r"cannot see the build folder .*shared filesystem"):
        run_unit(unit, BuildConfig(), str(tmp_path / "not-mounted" / "work"), None)
    assert not (tmp_path / "not-mounted").exists()
