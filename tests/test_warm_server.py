"""`vfnn server`: a warm process that `vfnn verify` hands its solve to.  The same verdicts and exit codes
as a fresh process, the caller's deadline and a killed caller stop the served child, and a server of
other code is never used."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_runner import alive

from vfnn.campaign.proctree import children, descendants
from vfnn.verifiers import warm

ROOT = Path(__file__).resolve().parents[1]
NET_42 = "onnx/ACASXU_run2a_4_2_batch_2000.onnx"  # prop_2 on 4_2 takes milp far longer than these timeouts


@pytest.fixture
def server() -> Iterator[dict]:
    """A server on a socket of its own (a short path: AF_UNIX paths are limited to 108 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="vfnn-ws-"))
    env = dict(os.environ, VFNN_SERVER_SOCKET=str(folder / "s.sock"))
    p = subprocess.run([sys.executable, "-m", "vfnn", "server", "start", "--idle", "5"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "started" in p.stdout, p.stdout + p.stderr
    status = warm.request("status", folder / "s.sock")
    assert status is not None and status["jobs_served"] == 0
    yield {"env": env, "socket": folder / "s.sock", "pid": status["pid"]}
    subprocess.run([sys.executable, "-m", "vfnn", "server", "stop"], env=env, cwd=ROOT, capture_output=True,
                   timeout=60)
    shutil.rmtree(folder, ignore_errors=True)


def _vfnn(env: dict, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "vfnn", *args], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=180)
    return p, time.monotonic() - t


def _served(server: dict) -> int:
    return warm.request("status", server["socket"])["jobs_served"]


def _without_times(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("wall_time", "tool_time", "tool_stats")}


def test_served_verdicts_equal_a_fresh_process(server: dict, acasxu: Path) -> None:
    cases = [("onnx/ACASXU_run2a_1_1_batch_2000.onnx", "prop_4.vnnlib", 0),  # unsat
             ("onnx/ACASXU_run2a_1_9_batch_2000.onnx", "prop_3.vnnlib", 1)]  # sat: a replayed counterexample
    for i, (net, prop, code) in enumerate(cases):
        args = ("verify", "--json", "-t", "120", str(acasxu / net), str(acasxu / "vnnlib" / prop))
        served, _ = _vfnn(server["env"], *args)
        assert _served(server) == i + 1  # this call went to the server
        fresh, _ = _vfnn(server["env"], *args, "--no-server")
        assert _served(server) == i + 1  # --no-server did not
        assert served.returncode == fresh.returncode == code, served.stderr + fresh.stderr
        a, b = json.loads(served.stdout), json.loads(fresh.stdout)
        assert _without_times(a) == _without_times(b)  # verdict, counterexample, unstable record, paths


def test_user_errors_through_the_server_are_one_line_and_exit_2(server: dict, tmp_path: Path, acasxu: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    p, _ = _vfnn(server["env"], "verify", str(bad), str(acasxu / "vnnlib" / "prop_1.vnnlib"))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "bad.onnx" in p.stderr, p.stderr
    assert _served(server) == 1


def test_the_callers_deadline_kills_the_served_solve_and_the_server_lives_on(server: dict, acasxu: Path) -> None:
    p, wall = _vfnn(server["env"], "verify", "-t", "3", "-o", "grace=0.5", str(acasxu / NET_42),
                    str(acasxu / "vnnlib" / "prop_2.vnnlib"))
    assert p.returncode == 4, p.stdout + p.stderr  # timeout
    assert wall < 3 + 0.5 + 0.5 + 10.0  # timeout + grace + 0.5 s, and the caller's own start-up on a loaded machine
    status = warm.request("status", server["socket"])
    assert status["jobs_served"] == 1 and status["running"] == 0
    assert not [c for c in children(server["pid"]) if alive(c)]


def test_a_killed_caller_takes_its_served_solve_with_it(server: dict, acasxu: Path) -> None:
    cmd = [sys.executable, "-m", "vfnn", "verify", "-t", "60", str(acasxu / NET_42),
           str(acasxu / "vnnlib" / "prop_2.vnnlib")]
    proc = subprocess.Popen(cmd, env=server["env"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        until = time.monotonic() + 60
        while time.monotonic() < until and not children(server["pid"]):
            time.sleep(0.05)
        time.sleep(0.5)
        served = descendants(server["pid"])  # the served child and whatever it started
        assert served, "the call never reached the server"
        proc.kill()
        proc.wait()
        killed = time.monotonic()
        while any(alive(c) for c in served) and time.monotonic() - killed < 10:
            time.sleep(0.05)
        assert not [c for c in served if alive(c)]
        assert warm.request("status", server["socket"])["running"] == 0
    finally:
        proc.kill()


def test_a_server_of_other_code_is_not_used_and_shuts_down(server: dict, acasxu: Path) -> None:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(server["socket"]))
        warm._send(conn, {"op": "hello", "stamp": {**warm.code_stamp(), "vfnn": "0.0.0-other"}})
        assert warm._recv(conn) == {"ok": False, "why": "stale"}
    until = time.monotonic() + 10
    while server["socket"].exists() and time.monotonic() < until:
        time.sleep(0.05)
    assert not server["socket"].exists() and warm.connect(server["socket"]) is None
    p, _ = _vfnn(server["env"], "verify", "-t", "60", str(acasxu / "onnx/ACASXU_run2a_1_1_batch_2000.onnx"),
                 str(acasxu / "vnnlib" / "prop_4.vnnlib"))
    assert p.returncode == 0, p.stderr  # solved in a fresh process


def test_start_says_when_the_running_server_cannot_serve_this_process(server: dict) -> None:
    env = dict(server["env"], PYTHONHASHSEED="12345")  # another hash seed: the server cannot take its calls
    p, _ = _vfnn(env, "server", "start")
    assert p.returncode == 2 and "cannot run this process's calls" in p.stderr, p.stdout + p.stderr
    assert warm.request("status", server["socket"])["pid"] == server["pid"]  # the running server is untouched


def test_status_and_stop_without_a_server(tmp_path: Path) -> None:
    env = dict(os.environ, VFNN_SERVER_SOCKET=str(tmp_path / "none.sock"))
    p, _ = _vfnn(env, "server", "status")
    assert p.returncode == 3 and "no vfnn server" in p.stdout
    p, _ = _vfnn(env, "server", "stop")
    assert p.returncode == 0 and "no vfnn server" in p.stdout
    env[warm.SOCKET_ENV] = str(tmp_path / ("x" * 120) / "s.sock")  # over AF_UNIX's 108 bytes
    p, _ = _vfnn(env, "server", "start")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "path too long" in p.stderr, p.stderr


def test_misbehaving_clients_lose_their_connection_not_the_server(server: dict, acasxu: Path) -> None:
    import socket
    import struct

    def raw(data: bytes, read: bool = False) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(server["socket"]))
            conn.sendall(data)
            if read:
                conn.recv(10)

    status = warm.pickle.dumps({"op": "status"})
    raw(struct.pack("!I", len(status)) + status)  # asks, and leaves without reading the answer
    raw(struct.pack("!I", 9) + b"not a pickle!")  # garbage
    raw(struct.pack("!I", 2**31))  # a length far over the limit
    raw(struct.pack("!I", len(warm.pickle.dumps([1]))) + warm.pickle.dumps([1]))  # not a message
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stuck:
        stuck.connect(str(server["socket"]))
        stuck.sendall(b"\x00")  # half a header, then silence: the others are served meanwhile
        t = time.monotonic()
        assert warm.request("status", server["socket"]) is not None and time.monotonic() - t < 5
        p, _ = _vfnn(server["env"], "verify", "-t", "60", str(acasxu / "onnx/ACASXU_run2a_1_1_batch_2000.onnx"),
                     str(acasxu / "vnnlib" / "prop_4.vnnlib"))
        assert p.returncode == 0, p.stderr
    assert _served(server) == 1


def test_the_served_child_takes_the_callers_umask_and_limits(server: dict) -> None:
    import resource

    from vfnn.verifiers.process import run_isolated

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    old_mask = os.umask(0o027)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 200), hard))
    try:
        for fn, args, want in ((os.umask, (0o22,), 0o027),
                               (resource.getrlimit, (resource.RLIMIT_NOFILE,), (min(soft, 200), hard)),
                               (os.getcwd, (), os.getcwd())):
            conn = warm.connect(server["socket"])
            assert conn is not None
            with tempfile.TemporaryDirectory() as tmp:
                out = run_isolated(fn, args, limit_s=30, workdir=tmp, starter=warm.starter(conn))
            assert out.kind == "returned" and out.value == want, (fn, out)
    finally:
        os.umask(old_mask)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert _served(server) == 3
    # a caller the server cannot reproduce (a higher priority is not for it to give) is told no
    ctx = warm.process_context()
    assert warm._context_problem({**ctx, "nice": ctx["nice"] - 1}, ctx) is not None


def test_a_socket_folder_others_can_enter_is_refused_not_changed(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    env = dict(os.environ, VFNN_SERVER_SOCKET=str(folder / "s.sock"))
    p, _ = _vfnn(env, "server", "start")
    assert p.returncode == 2 and "must be private" in p.stderr, p.stderr
    assert (folder.stat().st_mode & 0o777) == 0o755 and not list(folder.iterdir())
    assert warm.connect(folder / "s.sock") is None
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "s.sock").write_text("a user's file")
    env[warm.SOCKET_ENV] = str(private / "s.sock")
    p, _ = _vfnn(env, "server", "start")
    assert p.returncode == 2 and "did not start" in p.stderr, p.stderr  # the file is not deleted to make room
    assert (private / "s.sock").read_text() == "a user's file"
