"""Sticky routing for real: two `ptq4vm serve` processes on loopback ports behind Debian's
nginx running deploy/nginx/ptq4vm.conf, the file the compose deployment mounts, with the
replica addresses and the listening port put in. Clients are real WebSocket clients.

Which worker served a connection is read from nginx itself: the test's outer configuration
adds `$upstream_addr` as a response header (ptq4vm.conf sets no header of its own, so its
locations inherit it), and each worker's own /metrics confirms the count.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.deploy.conftest import DEPLOY
from tests.net import free_port
from tests.server.client import Stream
from tests.server.conftest import Assets, make_home

SITE = DEPLOY / "nginx" / "ptq4vm.conf"
# The replica addresses and the listen line of ptq4vm.conf, replaced by loopback ones.
REPLICAS = ("ptq4vm-1:8000", "ptq4vm-2:8000")
LISTEN = "listen 8080;"
UPSTREAM_HEADER = "X-Test-Upstream"
START_TIMEOUT_S = 90
# New sessions to open at most while waiting for each worker to hold `PER_WORKER` of them
# (each lands on a worker with probability 1/2: failing to fill both is 2^-20 unlikely).
MAX_NEW_SESSIONS = 24
PER_WORKER = 2


def nginx_binary() -> str:
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if path is None:
        pytest.fail(
            "Debian's nginx is not installed: run `make setup` (it runs "
            "`apt-get install -y nginx` as root)"
        )
    return path


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Worker:
    """One `ptq4vm serve` process."""

    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"worker {self.address} exited:\n{tail(self.log)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{self.address}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        pytest.fail(f"worker {self.address} not ready in {START_TIMEOUT_S} s:\n{tail(self.log)}")

    def metric(self, name: str) -> float:
        """An unlabelled sample of the worker's own /metrics."""
        text = httpx.get(f"http://{self.address}/metrics", timeout=10).text
        match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        assert match is not None, f"{name} not in the metrics of {self.address}"
        return float(match.group(1))

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def start_worker(home: Path, log: Path) -> Worker:
    port = free_port()
    env = {
        **os.environ,
        "PTQ4VM_HOME": str(home),
        "PTQ4VM_BUILD_DEFAULT": "false",
        "PTQ4VM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        # As deploy/compose.yaml configures the replicas: nginx (here on loopback) is the
        # trusted proxy. Room for every connection test_forwarded_addresses opens on one worker.
        "PTQ4VM_TRUSTED_PROXIES": "127.0.0.1",
        "PTQ4VM_MAX_SESSIONS": "32",
    }
    command = [sys.executable, "-m", "ptq4vm_core.cli", "serve"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Worker(port, proc, log)


def nginx_config(root: Path, workers: list[Worker], port: int) -> Path:
    """ptq4vm.conf with the workers' addresses and `port`, inside a minimal main config."""
    site = SITE.read_text()
    for replica, worker in zip(REPLICAS, workers, strict=True):
        assert f"server {replica} " in site, f"{SITE} no longer names replica {replica}"
        site = site.replace(f"server {replica} ", f"server {worker.address} ")
    assert site.count(LISTEN) == 1, f"{SITE} no longer has one `{LISTEN}`"
    site = site.replace(LISTEN, f"listen 127.0.0.1:{port};")
    (root / "ptq4vm.conf").write_text(site)
    temp = "\n".join(
        f"    {kind}_temp_path {root / kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    main = root / "nginx.conf"
    main.write_text(
        f"""{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
pid {root / "nginx.pid"};
error_log {root / "error.log"} info;
events {{ worker_connections 256; }}
http {{
    access_log {root / "access.log"};
{temp}
    uwsgi_temp_path {root / "uwsgi"};
    scgi_temp_path {root / "scgi"};
    add_header {UPSTREAM_HEADER} $upstream_addr always;
    include {root / "ptq4vm.conf"};
}}
"""
    )
    return main


class Cluster:
    """Two workers sharing one PTQ4VM_HOME (as replicas share the registry volume), nginx in
    front of them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.workers: list[Worker] = []
        self.port = free_port()
        self.nginx_root = root / "nginx"
        self.nginx: subprocess.Popen[bytes] | None = None
        self._clients = 0  # client addresses handed out by `stream`

    def start(self, assets: Assets) -> None:
        nginx = nginx_binary()
        home = make_home(self.root / "home", assets)
        for i in (1, 2):
            self.workers.append(start_worker(home, self.root / f"worker-{i}.log"))
        self.nginx_root.mkdir()
        config = nginx_config(self.nginx_root, self.workers, self.port)
        command = [nginx, "-p", str(self.nginx_root), "-c", str(config)]
        command += ["-e", str(self.nginx_root / "error.log"), "-g", "daemon off;"]
        self.nginx = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.nginx is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        for worker in self.workers:
            worker.wait_ready(deadline)
        while time.monotonic() < deadline:
            if self.nginx.poll() is not None:
                stderr = self.nginx.stderr.read().decode() if self.nginx.stderr else ""
                pytest.fail(f"nginx exited: {stderr}\n{tail(self.nginx_root / 'error.log')}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.1)
        pytest.fail("nginx did not listen in time")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    def stream(self, session: str | None = None) -> Stream:
        """A stream through nginx from a client address of its own (X-Forwarded-For, which
        nginx passes on): the tests' sessions stand for users, and however the hash spreads
        them, one worker's per-address limit (test_forwarded_addresses' subject) stays out of
        the way."""
        self._clients += 1
        client = f"10.9.{self._clients // 250}.{self._clients % 250 + 1}"
        return Stream(self.url, session=session, input="rgb24", headers={"X-Forwarded-For": client})

    def stop(self) -> None:
        if self.nginx is not None:
            if self.nginx.poll() is None:
                self.nginx.terminate()
                self.nginx.wait(timeout=20)
            if self.nginx.stderr is not None:
                self.nginx.stderr.close()
        for worker in self.workers:
            worker.stop()


def served_by(stream: Stream) -> str:
    """The worker nginx finally connected this stream to (after any it had to skip)."""
    response = stream.conn.response
    assert response is not None, "no handshake response"
    header = response.headers.get(UPSTREAM_HEADER)
    assert header, f"nginx sent no {UPSTREAM_HEADER} header"
    return str(header).split(",")[-1].strip()


@pytest.fixture
def cluster(tmp_path: Path, assets: Assets) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    try:
        cluster.start(assets)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def frames(clip_rgb: list[NDArray[np.uint8]]) -> list[bytes]:
    return [frame.tobytes() for frame in clip_rgb[:8]]


def open_until_both_hold_some(
    cluster: Cluster, stack: contextlib.ExitStack, frame: bytes
) -> dict[str, tuple[Stream, str]]:
    """New sessions through nginx (no `?session=`: nginx makes one up), each with one matte,
    until every worker holds PER_WORKER of them; left open. Session id -> (stream, worker)."""
    opened: dict[str, tuple[Stream, str]] = {}
    for _ in range(MAX_NEW_SESSIONS):
        stream = stack.enter_context(cluster.stream())
        session = stream.started["session"]
        assert stream.started["resumed"] is False
        # The id nginx made up ($request_id), taken by the server as the session's id.
        assert re.fullmatch(r"[0-9a-f]{32}", session), session
        meta, _ = stream.matte(frame)
        assert meta["seq"] == 0
        opened[session] = (stream, served_by(stream))
        counts = Counter(worker for _, worker in opened.values())
        if all(counts[w.address] >= PER_WORKER for w in cluster.workers):
            return opened
    spread = Counter(worker for _, worker in opened.values())
    pytest.fail(f"{MAX_NEW_SESSIONS} new sessions did not spread over both workers: {spread}")


def sessions_started(cluster: Cluster) -> dict[str, float]:
    return {w.address: w.metric("ptq4vm_stream_sessions_started_total") for w in cluster.workers}


def test_sessions_stick_to_their_worker(cluster: Cluster, frames: list[bytes]) -> None:
    with contextlib.ExitStack() as stack:
        opened = open_until_both_hold_some(cluster, stack, frames[0])
    placed = {session: worker for session, (_, worker) in opened.items()}
    started = sessions_started(cluster)
    assert started == dict(Counter(placed.values())), "a worker started sessions nginx did not"

    # Every reconnect of a session reaches the worker that holds it: resumed, state carried.
    for attempt in (1, 2):
        for session, worker in placed.items():
            with cluster.stream(session=session) as stream:
                assert served_by(stream) == worker
                assert stream.started["session"] == session
                assert stream.started["resumed"] is True
                assert stream.started["next_seq"] == attempt
                meta, _ = stream.matte(frames[attempt])
                assert (meta["seq"], meta["fresh"]) == (attempt, False)
    assert sessions_started(cluster) == started, "a resume started a session somewhere"


def test_killing_a_worker_moves_only_its_sessions(cluster: Cluster, frames: list[bytes]) -> None:
    victim, survivor = cluster.workers
    with contextlib.ExitStack() as stack:
        opened = open_until_both_hold_some(cluster, stack, frames[0])
        moved = {s: st for s, (st, w) in opened.items() if w == victim.address}
        kept = {s: st for s, (st, w) in opened.items() if w == survivor.address}
        started_before = survivor.metric("ptq4vm_stream_sessions_started_total")

        victim.kill()

        # The victim's streams are cut (nginx closes them when their upstream goes) ...
        for stream in moved.values():
            with pytest.raises(ConnectionClosed):
                stream.recv_json(timeout=20)
        # ... while the survivor's streams go on as if nothing happened: same state, seqs on.
        for seq in (1, 2):
            for stream in kept.values():
                meta, _ = stream.matte(frames[seq])
                assert (meta["seq"], meta["fresh"]) == (seq, False)

        # Reconnecting moves a victim's session to the survivor, which starts it afresh under
        # the same id (the client is told: `resumed` false, seq from 0, a fresh state) ...
        for session in moved:
            with cluster.stream(session=session) as stream:
                assert served_by(stream) == survivor.address
                assert stream.started["session"] == session
                assert stream.started["resumed"] is False
                assert stream.started["next_seq"] == 0
                meta, _ = stream.matte(frames[3])
                assert (meta["seq"], meta["fresh"]) == (0, True)
        # ... where it then sticks: the next reconnect resumes it there.
        for session in moved:
            with cluster.stream(session=session) as stream:
                assert served_by(stream) == survivor.address
                assert stream.started["resumed"] is True
                assert stream.started["next_seq"] == 1

        started_after = survivor.metric("ptq4vm_stream_sessions_started_total")
        assert started_after - started_before == len(moved)
        stopped: list[dict[str, Any]] = [stream.stop() for stream in kept.values()]
    # The survivor's own sessions never noticed: every frame matted, none dropped.
    for message in stopped:
        assert message["type"] == "stopped"
        assert (message["frames"], message["matted"], message["dropped"]) == (3, 3, 0)


# Forwarded clients, and connections each: more than PTQ4VM_MAX_CONNECTIONS_PER_CLIENT (8)
# reach one worker whatever the hash does, so a worker that saw them all as nginx's address
# would refuse some.
CLIENTS = 9
PER_CLIENT = 2


def test_forwarded_addresses_and_the_page_origin(cluster: Cluster) -> None:
    """nginx passes X-Forwarded-For and the Host with its port, as docs/operations.md ("Behind
    a proxy") requires. Each test client is 127.0.0.1, which the workers trust as nginx is;
    the addresses it claims stand for clients nginx saw (it appends the real peer, 127.0.0.1,
    which the worker skips as trusted)."""
    opened: list[ClientConnection] = []
    try:
        for i in range(CLIENTS * PER_CLIENT):
            forwarded = {"X-Forwarded-For": f"10.0.0.{i % CLIENTS}"}
            opened.append(
                connect(cluster.url, compression=None, additional_headers=forwarded).__enter__()
            )
        for i, conn in enumerate(opened):
            conn.send(f'{{"type":"ping","id":{i}}}')
            answer = conn.recv(timeout=30)
            assert answer == f'{{"type":"pong","id":{i}}}', answer
    finally:
        for conn in opened:
            conn.close()
    # The bundled page, loaded from nginx, opens its stream with nginx's origin.
    origin = {"Origin": f"http://127.0.0.1:{cluster.port}"}
    with connect(cluster.url, compression=None, additional_headers=origin) as page:
        page.send('{"type":"ping","id":"page"}')
        assert page.recv(timeout=30) == '{"type":"pong","id":"page"}'


def test_a_forwarded_flood_leaves_other_clients_served(
    cluster: Cluster, frames: list[bytes]
) -> None:
    """One client behind nginx starts sessions and drops them, far more than both workers'
    capacity (32 each): each worker keeps at most its per-address share of them (the address
    is X-Forwarded-For's, not nginx's), and another client gets its first matte at once."""
    hostile = {"X-Forwarded-For": "10.66.0.1"}
    for _ in range(70):
        stream = Stream(cluster.url, input="rgb24", headers=hostile).__enter__()
        stream.vanish()
        deadline = time.monotonic() + 10
        while any(w.metric("ptq4vm_stream_sessions_active") for w in cluster.workers):
            assert time.monotonic() < deadline, "a dropped connection is still counted"
            time.sleep(0.02)
    held = [w.metric("ptq4vm_stream_sessions_detached") for w in cluster.workers]
    assert all(count <= 8 for count in held), held  # PTQ4VM_MAX_CONNECTIONS_PER_CLIENT
    started = time.monotonic()
    with cluster.stream() as friend:
        friend.matte(frames[0])
    assert time.monotonic() - started <= 2.0
