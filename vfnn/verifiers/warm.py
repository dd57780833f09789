"""A warm server for ``vfnn verify``: one long-lived process with torch, onnx and the verifiers
imported, which forks a solve child per call, so that a call does not pay ``import torch`` (0.7-1.4 s
on a 2-core machine, most of a small solve's wall time).

``vfnn server start`` runs :func:`serve` in the background; while its socket answers, ``vfnn verify``
sends it the job and the server forks an isolated child exactly as :class:`~vfnn.verifiers.process.Isolated`
does (own session, memory cap, one thread, output to a log, result to a pickle), in the caller's
working directory and environment.  The caller keeps the deadline: at it, it asks the server to kill
the child's process tree (only the server, its parent, reaps it, so no pid is signalled after reuse);
when the caller dies, its connection closes and the server kills the child too.

The socket lives in a directory only its user can enter, and the server also checks the peer's uid
(a request is a pickle, i.e. code).  A server whose code differs from the caller's (another vfnn
version, an edited source file, another interpreter) answers "stale" and shuts down; the caller then
runs the job in a fresh process as if no server were running.  The server exits after ``idle_s`` seconds
without a job.
"""

from __future__ import annotations

import os
import pickle
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vfnn.verifiers.process import ChildOutcome, _child, kill_tree, one_thread, read_outcome

SOCKET_ENV = "VFNN_SERVER_SOCKET"
IDLE_S = 3600.0
PRELOAD = ("torch", "onnx", "highspy", "vfnn.verify_cli", "vfnn.verifiers.milp", "vfnn.verifiers.marabou",
           "vfnn.verifiers.abcrown", "vfnn.onnx_io", "vfnn.bounds")
_HEADER = struct.Struct("!I")


def socket_path() -> Path:
    """``$VFNN_SERVER_SOCKET``, else ``$XDG_RUNTIME_DIR/vfnn/server.sock``, else ``/tmp/vfnn-UID/server.sock``."""
    if os.environ.get(SOCKET_ENV):
        return Path(os.environ[SOCKET_ENV])
    base = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(base) / "vfnn" if base else Path(f"/tmp/vfnn-{os.getuid()}")
    return folder / "server.sock"


def code_stamp() -> dict[str, Any]:
    """What must be equal for the server to run the caller's code: interpreter, version, and the
    newest modification time of the package's source files (an edit makes the server stale)."""
    import vfnn

    root = Path(vfnn.__file__).parent
    newest = max((e.stat().st_mtime_ns for e in _sources(root)), default=0)
    return {"python": sys.executable, "vfnn": vfnn.__version__, "package": str(root), "newest": newest}


def _sources(folder: Path) -> list[os.DirEntry]:
    out = []
    with os.scandir(folder) as it:
        for e in it:
            if e.is_dir() and not e.name.startswith((".", "__")):
                out.extend(_sources(Path(e.path)))
            elif e.name.endswith((".py", ".toml")):
                out.append(e)
    return out


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    data = pickle.dumps(message)
    conn.sendall(_HEADER.pack(len(data)) + data)


def _recv(conn: socket.socket) -> dict[str, Any] | None:
    """One message, or None when the peer has closed the connection."""
    head = _read_exactly(conn, _HEADER.size)
    if head is None:
        return None
    body = _read_exactly(conn, _HEADER.unpack(head)[0])
    return None if body is None else pickle.loads(body)


def _read_exactly(conn: socket.socket, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        try:
            chunk = conn.recv(left)
        except (ConnectionError, OSError):
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# -- the caller's side -------------------------------------------------------------------------------

def connect(path: Path | None = None, timeout: float = 5.0) -> socket.socket | None:
    """A connection to a running, up-to-date server; None when there is none (or it is stale)."""
    path = socket_path() if path is None else path
    if not path.is_socket():
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        conn.connect(str(path))
        _send(conn, {"op": "hello", "stamp": code_stamp()})
        reply = _recv(conn)
    except OSError:
        conn.close()
        return None
    if not reply or not reply.get("ok"):
        conn.close()
        return None
    conn.settimeout(None)
    return conn


def request(op: str, path: Path | None = None) -> dict[str, Any] | None:
    """Send ``status`` or ``stop`` to the server at ``path``; its reply, or None when none answers."""
    path = socket_path() if path is None else path
    if not path.is_socket():
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10.0)
        try:
            conn.connect(str(path))
            _send(conn, {"op": op})
            return _recv(conn)
        except OSError:
            return None


class Served:
    """A function running in a child of the warm server; the interface of
    :class:`~vfnn.verifiers.process.Isolated` (``start``, ``wait``, ``finish``)."""

    def __init__(self, conn: socket.socket, fn: Any, args: tuple, *, workdir: str | Path,
                 memory_mb: int | None = None) -> None:
        self.conn, self.workdir = conn, Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.result_path, self.log_path = self.workdir / "result.pkl", self.workdir / "solver.log"
        for p in (self.result_path, self.log_path):
            p.unlink(missing_ok=True)
        self.start = time.monotonic()
        _send(conn, {"op": "run", "fn": fn, "args": args, "result": str(self.result_path), "log": str(self.log_path),
                     "memory_mb": memory_mb, "env": dict(os.environ), "cwd": os.getcwd()})
        self.exitcode: int | None = None
        self.ended = False
        self._outcome: ChildOutcome | None = None

    def _read_exit(self, timeout: float | None) -> bool:
        if not select.select([self.conn], [], [], timeout)[0]:
            return False
        self.conn.settimeout(10.0)
        msg = _recv(self.conn)
        self.ended = True
        self.exitcode = None if msg is None else msg.get("exit")  # None: the server itself went away
        return True

    def wait(self, until: float, on_wait: Any = None) -> bool:
        """Wait until the monotonic time ``until`` (``on_wait`` between short waits); True if it ended."""
        while not self.ended:
            left = until - time.monotonic()
            if left <= 0:
                return False
            if self._read_exit(min(left, 0.1) if on_wait else left):
                break
            if on_wait:
                on_wait()
        return True

    def finish(self) -> ChildOutcome:
        """Have the server kill what is left of the child's tree, and read its outcome."""
        if self._outcome is not None:
            return self._outcome
        killed = not self.ended
        if killed:
            try:
                _send(self.conn, {"op": "kill"})
            except OSError:
                pass
            self._read_exit(30.0)
        self.conn.close()
        self._outcome = read_outcome(killed, self.result_path, self.log_path, self.exitcode)
        return self._outcome


# -- the server ----------------------------------------------------------------------------------------

def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _kill_job(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # the child leads its own session after setsid
    except (ProcessLookupError, PermissionError):
        pass
    kill_tree(pid)  # not yet at setsid, or descendants in sessions of their own


def _fork_job(msg: dict[str, Any], closing: list[Any]) -> int:
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: the caller's directory and environment, then exactly what Isolated's child does
        for thing in closing:
            thing.close()
        os.chdir(msg["cwd"])
        os.environ.clear()
        os.environ.update(msg["env"])
        _child(msg["fn"], msg["args"], msg["result"], msg["log"], msg["memory_mb"], os.getppid())
    finally:
        os._exit(0)


def serve(path: Path, idle_s: float = IDLE_S) -> None:
    """Listen at ``path`` until ``stop``, a stale caller, or ``idle_s`` seconds without a job."""
    import importlib

    from vfnn.verifiers.process import allow_plain_fork

    started = time.monotonic()
    one_thread()
    allow_plain_fork()  # this process runs no torch code: its children fork their solves directly
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # an optional tool that is not installed; the job reports it as it would without a server
    stamp = code_stamp()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    jobs: dict[socket.socket, tuple[int, int]] = {}  # connection -> (child pid, pidfd)
    served, last_job, stopping = 0, time.monotonic(), False
    print(f"vfnn server {os.getpid()} ready at {path} after {time.monotonic() - started:.2f} s", flush=True)

    def drop(conn: socket.socket) -> None:
        if conn in jobs:  # the caller went away mid-job: nobody wants the child any more
            pid, fd = jobs.pop(conn)
            _kill_job(pid)
            sel.unregister(fd)
            os.waitpid(pid, 0)
            os.close(fd)
        sel.unregister(conn)
        conn.close()

    while not (stopping and not jobs):
        if not jobs and not stopping and time.monotonic() - last_job > idle_s:
            break
        for key, _ in sel.select(timeout=1.0):
            what = key.data
            if what == "accept":
                conn, _ = listener.accept()
                if _peer_uid(conn) != os.getuid():
                    conn.close()
                    continue
                conn.settimeout(10.0)
                sel.register(conn, selectors.EVENT_READ, "conn")
            elif what == "conn":
                conn = key.fileobj
                msg = _recv(conn)
                op = None if msg is None else msg.get("op")
                if op == "hello":
                    fresh = msg.get("stamp") == stamp and not stopping
                    _send(conn, {"ok": fresh})
                    if not fresh:
                        stopping = True
                elif op == "run" and conn not in jobs:
                    pid = _fork_job(msg, [listener, sel, *[k.fileobj for k in sel.get_map().values()
                                                           if isinstance(k.fileobj, socket.socket)]])
                    fd = os.pidfd_open(pid)
                    jobs[conn] = (pid, fd)
                    sel.register(fd, selectors.EVENT_READ, ("exit", conn))
                    served += 1
                elif op == "kill" and conn in jobs:
                    _kill_job(jobs[conn][0])
                elif op == "status":
                    _send(conn, {"pid": os.getpid(), "socket": str(path), "jobs_served": served,
                                 "running": len(jobs), "uptime_s": time.monotonic() - started, "stamp": stamp})
                elif op == "stop":
                    stopping = True
                    for pid, _ in list(jobs.values()):
                        _kill_job(pid)
                    _send(conn, {"stopping": True})
                else:
                    drop(conn)
            else:  # a child ended: reap it and tell its caller
                conn = what[1]
                pid, fd = jobs.pop(conn)
                sel.unregister(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                last_job = time.monotonic()
                try:
                    _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
                except OSError:
                    pass
        if stopping and listener.fileno() >= 0:
            sel.unregister(listener)
            listener.close()
            path.unlink(missing_ok=True)
    if listener.fileno() >= 0:
        listener.close()
        path.unlink(missing_ok=True)


def start_background(path: Path, idle_s: float, wait_s: float = 60.0) -> dict[str, Any]:
    """Start :func:`serve` as a detached process (its output in ``server.log`` next to the socket);
    return its status once it answers.  Raises RuntimeError when it does not come up in ``wait_s``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = path.with_name(path.stem + ".log")
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vfnn.verifiers.warm", str(path), str(idle_s)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    until = time.monotonic() + wait_s
    while time.monotonic() < until:
        if (status := request("status", path)) is not None:
            return status
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
    raise RuntimeError(f"the server did not start (see {log})" + (f": {tail[0]}" if tail else ""))


if __name__ == "__main__":
    serve(Path(sys.argv[1]), float(sys.argv[2]))
