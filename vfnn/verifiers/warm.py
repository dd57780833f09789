"""A warm server for ``vfnn verify``: one long-lived process with torch, onnx and the verifiers
imported, which forks a solve child per call, so that a call does not pay ``import torch`` (0.7-1.4 s
on a 2-core machine, most of a small solve's wall time).

``vfnn server start`` runs :func:`serve` in the background; while its socket answers, ``vfnn verify``
sends it the job and the server forks a child that does what :class:`~vfnn.verifiers.process.Isolated`'s
child does (own session, memory cap, one thread, output to a log, result to a pickle) in the caller's
working directory, environment, umask, resource limits, CPU affinity and niceness.  A caller whose
process context the server cannot reproduce (another cgroup, a limit above the server's, a higher
priority, other interpreter flags) is told no and runs its job in a fresh process, as is a caller of
other code (vfnn version, an edited source file, interpreter, an installed package changed): then
the server also shuts down.

The caller keeps the deadline: at it, it asks the server to kill the child's process tree (only the
server, its parent, reaps it, so no pid is signalled after reuse); when the server does not confirm in
time, the caller kills the tree itself (an unreaped child's pid cannot be reused).  When the caller dies,
its connection closes and the server kills the child.  A misbehaving client (garbage, a half message,
closing early) loses its own connection, never the server.

A request is a pickle, i.e. code: the socket must be in a folder that only its user can enter (created
so; a folder of another mode or owner is refused, never changed), and each side checks the other's uid.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import resource
import select
import selectors
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vfnn.verifiers.process import ChildOutcome, Isolated, _child, kill_tree, one_thread, read_outcome

SOCKET_ENV = "VFNN_SERVER_SOCKET"
IDLE_S = 3600.0
MAX_MESSAGE = 64 * 2**20  # bytes; a job's arguments are paths and options
ACK_S = 5.0  # how long a caller waits for the server to answer before it runs the job itself
PRELOAD = ("torch", "onnx", "highspy", "vfnn.verify_cli", "vfnn.verifiers.milp", "vfnn.verifiers.marabou",
           "vfnn.verifiers.abcrown", "vfnn.onnx_io", "vfnn.bounds", "vfnn.vnnlib")
LIMITS = tuple(getattr(resource, n) for n in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_FSIZE",
                                              "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_STACK", "RLIMIT_CORE")
               if hasattr(resource, n))
_HEADER = struct.Struct("!I")


class ServerGone(Exception):
    """The server did not take the job (it went away or did not answer in time)."""


def socket_path() -> Path:
    """``$VFNN_SERVER_SOCKET``, else ``$XDG_RUNTIME_DIR/vfnn/server.sock``, else ``/tmp/vfnn-UID/server.sock``."""
    if os.environ.get(SOCKET_ENV):
        return Path(os.environ[SOCKET_ENV])
    base = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(base) / "vfnn" if base else Path(f"/tmp/vfnn-{os.getuid()}")
    return folder / "server.sock"


def private_folder_problem(folder: Path) -> str | None:
    """Why ``folder`` is not safe for the socket (None when it is: a real directory of this user that
    nobody else can enter)."""
    try:
        st = os.lstat(folder)
    except OSError as exc:
        return f"{folder}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{folder} is not a directory (or is a symbolic link)"
    if st.st_uid != os.getuid():
        return f"{folder} belongs to uid {st.st_uid}, not to you"
    if st.st_mode & 0o077:
        return f"{folder} has mode {stat.S_IMODE(st.st_mode):o}; the socket's folder must be private (700)"
    return None


def code_stamp() -> dict[str, Any]:
    """What must be equal for the server to run the caller's code: interpreter, vfnn's version and
    location, the newest modification time of its source files (an edit makes the server stale), and
    the package folders on ``sys.path`` with their modification times (installing, upgrading or
    removing a package changes them).  The rest of ``sys.path`` (the script's or working directory,
    a test runner's additions) does not count: the packages a solve imports come from these."""
    import vfnn

    root = Path(vfnn.__file__).parent
    newest = max((e.stat().st_mtime_ns for e in _sources(root)), default=0)
    sites = []
    for p in sys.path:
        if Path(p).name in ("site-packages", "dist-packages"):
            try:
                sites.append((p, os.stat(p).st_mtime_ns))
            except OSError:
                sites.append((p, None))
    return {"python": sys.executable, "version": sys.version, "vfnn": vfnn.__version__, "package": str(root),
            "newest": newest, "site_packages": sites}


def _sources(folder: Path) -> list[os.DirEntry]:
    out = []
    with os.scandir(folder) as it:
        for e in it:
            if e.is_dir() and not e.name.startswith((".", "__")):
                out.extend(_sources(Path(e.path)))
            elif e.name.endswith((".py", ".toml")):
                out.append(e)
    return out


def process_context() -> dict[str, Any]:
    """What a solve inherits from its process besides cwd and environment, so the served child can
    take the caller's (or the server can say it cannot)."""
    mask = os.umask(0)
    os.umask(mask)
    try:
        cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        cgroup = None
    return {"umask": mask, "limits": {r: resource.getrlimit(r) for r in LIMITS},
            "affinity": sorted(os.sched_getaffinity(0)), "nice": os.getpriority(os.PRIO_PROCESS, 0),
            "cgroup": cgroup, "flags": tuple(sys.flags), "hash_seed": os.environ.get("PYTHONHASHSEED")}


def _context_problem(caller: dict[str, Any], mine: dict[str, Any]) -> str | None:
    """Why a child of this server cannot run in the caller's process context (None when it can)."""
    if caller["cgroup"] != mine["cgroup"]:
        return "another cgroup"
    if caller["flags"] != mine["flags"] or caller["hash_seed"] != mine["hash_seed"]:
        return "other interpreter flags or PYTHONHASHSEED"
    if not set(caller["affinity"]) <= set(mine["affinity"]):
        return "CPUs the server may not use"
    if caller["nice"] < mine["nice"]:
        return "a higher priority than the server's"
    for r, (_soft, hard) in caller["limits"].items():
        top = mine["limits"][r][1]
        if top != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > top):
            return f"resource limit {r} above the server's"
    return None


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    data = pickle.dumps(message)
    conn.sendall(_HEADER.pack(len(data)) + data)


def _recv(conn: socket.socket) -> dict[str, Any] | None:
    """One message (blocking, on the caller's side), or None when the peer has closed or sent nonsense."""
    head = _read_exactly(conn, _HEADER.size)
    if head is None or _HEADER.unpack(head)[0] > MAX_MESSAGE:
        return None
    body = _read_exactly(conn, _HEADER.unpack(head)[0])
    try:
        msg = None if body is None else pickle.loads(body)
    except Exception:  # noqa: BLE001 - whatever the bytes were, they are not a message
        return None
    return msg if isinstance(msg, dict) else None


def _read_exactly(conn: socket.socket, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        try:
            chunk = conn.recv(left)
        except OSError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _open(path: Path, timeout: float) -> socket.socket | None:
    """A connection to the socket at ``path`` if it is in a private folder and a server of this user
    listens there; None otherwise."""
    if private_folder_problem(path.parent) is not None or not path.is_socket():
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        conn.connect(str(path))
        if _peer_uid(conn) == os.getuid():
            return conn
    except OSError:
        pass
    conn.close()
    return None


# -- the caller's side -------------------------------------------------------------------------------

def connect(path: Path | None = None, timeout: float = 2.0) -> socket.socket | None:
    """A connection to a running server that can run this caller's job; None when there is none (or it
    is stale, or cannot reproduce this process's context)."""
    conn = _open(socket_path() if path is None else path, timeout)
    if conn is None:
        return None
    try:
        _send(conn, {"op": "hello", "stamp": code_stamp(), "context": process_context()})
        reply = _recv(conn)
    except OSError:
        reply = None
    if not reply or not reply.get("ok"):
        conn.close()
        return None
    return conn


def request(op: str, path: Path | None = None) -> dict[str, Any] | None:
    """Send ``status`` or ``stop`` to the server at ``path``; its reply, or None when none answers."""
    conn = _open(socket_path() if path is None else path, 10.0)
    if conn is None:
        return None
    with conn:
        try:
            _send(conn, {"op": op})
            return _recv(conn)
        except OSError:
            return None


def starter(conn: socket.socket) -> Callable[..., Any]:
    """A ``run_isolated`` starter: the job in a child of the server behind ``conn``, or in a fresh
    process (:class:`Isolated`) when the server does not take it."""

    def start(fn: Callable[..., Any], args: tuple, *, workdir: str | Path, memory_mb: int | None = None) -> Any:
        try:
            return Served(conn, fn, args, workdir=workdir, memory_mb=memory_mb)
        except ServerGone:
            conn.close()
            return Isolated(fn, args, workdir=workdir, memory_mb=memory_mb)

    return start


class Served:
    """A function running in a child of the warm server; the interface of
    :class:`~vfnn.verifiers.process.Isolated` (``start``, ``wait``, ``finish``).  Raises
    :class:`ServerGone` when the server does not confirm the job within :data:`ACK_S`."""

    def __init__(self, conn: socket.socket, fn: Any, args: tuple, *, workdir: str | Path,
                 memory_mb: int | None = None) -> None:
        self.conn, self.workdir = conn, Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.result_path, self.log_path = self.workdir / "result.pkl", self.workdir / "solver.log"
        for p in (self.result_path, self.log_path):
            p.unlink(missing_ok=True)
        self.start = time.monotonic()
        self.exitcode: int | None = None
        self.ended = False
        self._outcome: ChildOutcome | None = None
        try:
            conn.settimeout(ACK_S)
            _send(conn, {"op": "run", "fn": fn, "args": args, "result": str(self.result_path),
                         "log": str(self.log_path), "memory_mb": memory_mb, "env": dict(os.environ),
                         "cwd": os.getcwd(), "context": process_context()})
            ack = _recv(conn)
        except OSError:
            ack = None
        if not ack or "pid" not in ack:
            raise ServerGone
        self.pid: int = ack["pid"]

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
        """Have the server kill what is left of the child's tree (or kill it here if the server does not
        confirm), and read its outcome."""
        if self._outcome is not None:
            return self._outcome
        killed = not (self.ended or self._read_exit(0))  # it may have ended just at the deadline
        if killed:
            try:
                _send(self.conn, {"op": "kill"})
            except OSError:
                pass
            if not self._read_exit(ACK_S):  # a hung server has not reaped the child: its pid is still its own
                _kill_job(self.pid)
        self.conn.close()
        self._outcome = read_outcome(killed, self.result_path, self.log_path, self.exitcode)
        return self._outcome


# -- the server ----------------------------------------------------------------------------------------

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
    code = 0
    try:  # the child: the caller's process context, then exactly what Isolated's child does
        for thing in closing:  # the listener, other callers' connections, other children's pidfds
            if isinstance(thing, int):
                os.close(thing)
            else:
                thing.close()
        ctx = msg["context"]
        os.chdir(msg["cwd"])
        os.environ.clear()
        os.environ.update(msg["env"])
        os.umask(ctx["umask"])
        for r, limits in ctx["limits"].items():
            resource.setrlimit(r, tuple(limits))
        os.sched_setaffinity(0, ctx["affinity"])
        os.nice(ctx["nice"] - os.getpriority(os.PRIO_PROCESS, 0))
        _child(msg["fn"], msg["args"], msg["result"], msg["log"], msg["memory_mb"], os.getppid())
    except BaseException:  # noqa: BLE001 - a setup failure goes to the caller's log, as a fresh child's would
        code = 1
        try:
            with open(msg["log"], "a") as f:
                f.write(traceback.format_exc())
        except Exception:  # noqa: BLE001
            pass
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


class _Server:
    """The event loop of :func:`serve`: one thread (so forking is safe), non-blocking connections each
    with its own input buffer, children watched through pidfds."""

    def __init__(self, path: Path, idle_s: float, stamp: dict[str, Any], lock_fd: int) -> None:
        self.path, self.idle_s, self.stamp, self.lock_fd = path, idle_s, stamp, lock_fd
        self.context = process_context()
        self.started = self.last_activity = time.monotonic()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if path.is_socket():  # a dead server's socket: we hold the lock, so no live one owns it
            path.unlink()
        self.listener.bind(str(path))
        self.inode = os.stat(path).st_ino
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, "accept")
        self.buffers: dict[socket.socket, bytearray] = {}
        self.jobs: dict[socket.socket, tuple[int, int]] = {}  # connection -> (child pid, pidfd)
        self.served = 0
        self.listening = True

    def run(self) -> None:
        print(f"vfnn server {os.getpid()} ready at {self.path} after {time.monotonic() - self.started:.2f} s",
              flush=True)
        while self.listening or self.jobs:
            if self.listening and not self.jobs and time.monotonic() - self.last_activity > self.idle_s:
                self.close_listener()
                break
            for key, _ in self.sel.select(timeout=1.0):
                try:
                    self.handle(key)
                except Exception:  # noqa: BLE001 - one connection's trouble must not end the others' solves
                    traceback.print_exc()
                    if isinstance(key.fileobj, socket.socket) and key.fileobj is not self.listener:
                        self.drop(key.fileobj)
        if self.listening:
            self.close_listener()

    def handle(self, key: selectors.SelectorKey) -> None:
        if key.data == "accept":
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                return
            if _peer_uid(conn) != os.getuid():
                conn.close()
                return
            conn.setblocking(False)
            self.buffers[conn] = bytearray()
            self.sel.register(conn, selectors.EVENT_READ, "conn")
        elif key.data == "conn":
            self.read(key.fileobj)
        else:  # a child ended
            self.reaped(key.data[1])

    def read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.drop(conn)
            return
        buf = self.buffers[conn]
        buf += data
        while len(buf) >= _HEADER.size:
            n = _HEADER.unpack_from(buf)[0]
            if n > MAX_MESSAGE:
                self.drop(conn)
                return
            if len(buf) < _HEADER.size + n:
                return
            msg = pickle.loads(bytes(buf[_HEADER.size:_HEADER.size + n]))
            del buf[:_HEADER.size + n]
            if not isinstance(msg, dict) or not self.answer(conn, msg):
                self.drop(conn)
                return

    def reply(self, conn: socket.socket, message: dict[str, Any]) -> bool:
        try:
            conn.setblocking(True)
            conn.settimeout(2.0)
            _send(conn, message)
            return True
        except OSError:
            return False
        finally:
            conn.setblocking(False)

    def answer(self, conn: socket.socket, msg: dict[str, Any]) -> bool:
        """Act on one message; False when the connection is to be dropped."""
        self.last_activity = time.monotonic()
        op = msg.get("op")
        if op == "hello":
            if msg.get("stamp") != self.stamp or not self.listening:
                self.reply(conn, {"ok": False, "why": "stale"})
                self.close_listener()  # other code than the caller's: let a new server start
                return False
            why = _context_problem(msg["context"], self.context)
            return self.reply(conn, {"ok": why is None, "why": why}) and why is None
        if op == "run" and conn not in self.jobs and self.listening:
            if _context_problem(msg["context"], self.context) is not None:
                return False
            closing = [self.listener, self.sel, *self.buffers, *(fd for _, fd in self.jobs.values())]
            pid = _fork_job(msg, closing)
            fd = os.pidfd_open(pid)
            self.jobs[conn] = (pid, fd)
            self.sel.register(fd, selectors.EVENT_READ, ("exit", conn))
            self.served += 1
            return self.reply(conn, {"pid": pid})
        if op == "kill" and conn in self.jobs:
            _kill_job(self.jobs[conn][0])
            return True
        if op == "status":
            return self.reply(conn, {"pid": os.getpid(), "socket": str(self.path), "jobs_served": self.served,
                                     "running": len(self.jobs), "uptime_s": time.monotonic() - self.started,
                                     "stamp": self.stamp})
        if op == "stop":
            for pid, _ in list(self.jobs.values()):
                _kill_job(pid)
            self.close_listener()
            self.reply(conn, {"stopping": True})
            return False
        return False  # unknown, or a kill/run that makes no sense now

    def reaped(self, conn: socket.socket) -> None:
        if conn not in self.jobs:  # its caller left in the same select round and drop() reaped it
            return
        pid, fd = self.jobs.pop(conn)
        self.sel.unregister(fd)
        os.close(fd)
        try:
            os.killpg(pid, signal.SIGKILL)  # what the solve left in its session (the zombie holds the pgid)
        except (ProcessLookupError, PermissionError):
            pass
        _, status = os.waitpid(pid, 0)
        self.last_activity = time.monotonic()
        self.reply(conn, {"exit": os.waitstatus_to_exitcode(status)})

    def drop(self, conn: socket.socket) -> None:
        if conn in self.jobs:  # the caller went away mid-job: nobody wants the child any more
            pid, fd = self.jobs.pop(conn)
            _kill_job(pid)
            self.sel.unregister(fd)
            os.close(fd)
            os.waitpid(pid, 0)
        if conn in self.buffers:
            del self.buffers[conn]
            self.sel.unregister(conn)
        conn.close()

    def close_listener(self) -> None:
        """Stop taking calls: the socket goes (if it is still ours) and the lock with it, so a new server
        can start while this one's last children finish."""
        if not self.listening:
            return
        self.listening = False
        self.sel.unregister(self.listener)
        self.listener.close()
        try:
            if os.stat(self.path).st_ino == self.inode:
                self.path.unlink()
        except OSError:
            pass
        os.close(self.lock_fd)


def serve(path: Path, idle_s: float = IDLE_S) -> None:
    """Listen at ``path`` until ``stop``, a stale caller, or ``idle_s`` seconds without a call.
    Exits at once (code 3) when another server holds the socket's lock."""
    import importlib

    from vfnn.verifiers.process import allow_plain_fork

    stamp = code_stamp()  # before the imports: an edit made while they run makes this server stale
    lock_fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"another vfnn server holds {path}", flush=True)
        sys.exit(3)
    one_thread()
    allow_plain_fork()  # this process runs no torch code: its children fork their solves directly
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # an optional tool that is not installed; the job reports it as it would without a server
    _Server(path, idle_s, stamp, lock_fd).run()


def prepare_folder(path: Path) -> None:
    """Create the socket's folder private (700), or raise ``OSError``/``PermissionError`` saying why an
    existing one cannot be used; an existing folder is never changed."""
    folder = path.parent
    if not os.path.lexists(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir(mode=0o700)
    if (why := private_folder_problem(folder)) is not None:
        raise PermissionError(why)


def start_background(path: Path, idle_s: float, wait_s: float = 60.0) -> dict[str, Any]:
    """Start :func:`serve` as a detached process (its output in ``<socket>.log``); return its status
    once it (or a server that was already starting) answers.  Raises RuntimeError when none comes up
    in ``wait_s``, and OSError when the socket's folder is not private."""
    prepare_folder(path)
    log = path.with_name(path.name + ".log")
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vfnn.verifiers.warm", str(path), str(idle_s)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    until = time.monotonic() + wait_s
    while time.monotonic() < until:
        if (status := request("status", path)) is not None:
            return status
        if proc.poll() is not None and proc.returncode != 3:  # 3: another server has the lock: wait for it
            break
        time.sleep(0.05)
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
    raise RuntimeError(f"the server did not start (see {log})" + (f": {tail[0]}" if tail else ""))


if __name__ == "__main__":
    serve(Path(sys.argv[1]), float(sys.argv[2]))
