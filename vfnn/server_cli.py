"""``vfnn server``: start, stop and inspect the warm server that ``vfnn verify`` uses when it runs."""

from __future__ import annotations

import json
import sys
import time

import click

from vfnn.errors import VfnnError


@click.group("server", context_settings={"max_content_width": 100})
def server_cmd() -> None:
    """A warm process for `vfnn verify`: it keeps torch, onnx and the verifiers imported and forks
    each call's solve, so a call costs its solve, not its start-up (about a second).  Results are
    the same as without it; `vfnn verify --no-server` bypasses it.  The socket is
    $VFNN_SERVER_SOCKET, else $XDG_RUNTIME_DIR/vfnn/server.sock, else /tmp/vfnn-UID/server.sock; a
    server whose code differs from the caller's (upgrade, edited source) shuts itself down and the
    call runs without it."""


@server_cmd.command("start")
@click.option("--idle", type=float, default=60.0, show_default=True,
              help="minutes without a call after which the server exits")
def start_cmd(idle: float) -> None:
    """Start the server in the background (nothing to do if one of this code is running)."""
    from vfnn.verifiers import warm

    if not idle > 0:
        raise VfnnError(f"--idle must be a positive number of minutes, got {idle}")
    path = warm.socket_path()
    conn = warm.connect(path)
    if conn is not None:
        conn.close()
        status = warm.request("status", path) or {}
        click.echo(f"vfnn server already running (pid {status.get('pid')}) at {path}")
        return
    if (other := warm.request("status", path)) is not None:  # it answers, but refused this process's calls
        raise VfnnError(f"the vfnn server at {path} (pid {other['pid']}) cannot run this process's calls "
                        "(another cgroup, resource limits, priority or interpreter flags); `vfnn server stop` it "
                        "and start it from here")
    try:
        status = warm.start_background(path, 60.0 * idle)
    except RuntimeError as exc:
        raise VfnnError(str(exc)) from None
    except OSError as exc:  # the socket's folder cannot be made or written
        raise VfnnError(f"cannot start the server at {path}: {exc.strerror or exc}") from None
    click.echo(f"vfnn server started (pid {status['pid']}) at {path}; exits after {idle:g} min without a call")


@server_cmd.command("status")
@click.option("--json", "as_json", is_flag=True, help="print the server's status as JSON")
def status_cmd(as_json: bool) -> None:
    """Whether a server answers; exit code 0 if one does, 3 if none."""
    from vfnn.verifiers import warm

    path = warm.socket_path()
    status = warm.request("status", path)
    if as_json:
        click.echo(json.dumps(status))
    elif status is None:
        click.echo(f"no vfnn server at {path}")
    else:
        click.echo(f"vfnn server pid {status['pid']} at {path}: up {status['uptime_s']:.0f} s, "
                   f"{status['jobs_served']} calls served, {status['running']} running; "
                   f"vfnn {status['stamp']['vfnn']} from {status['stamp']['package']}")
    sys.exit(0 if status is not None else 3)


@server_cmd.command("stop")
def stop_cmd() -> None:
    """Stop the server (its running calls are killed and report an error)."""
    from vfnn.verifiers import warm

    path = warm.socket_path()
    if warm.request("stop", path) is None:
        click.echo(f"no vfnn server at {path}")
        return
    until = time.monotonic() + 30.0
    while path.exists() and time.monotonic() < until:  # gone once its killed calls are reaped
        time.sleep(0.05)
    click.echo(f"vfnn server at {path} stopped")
