"""The shared server's folder against other local users, and the embedded servers' limits.

With no ``$DAEBUS_RUNTIME_DIR`` or ``$XDG_RUNTIME_DIR``, the shared server lives in
``<tmp>/daebus-<uid>``, a name any local user can take first: as a folder, or as a symlink
to one, with a live server of their own in it. The tests play that other user with a
spare uid (they run as root, who may chown to any uid and start a process as it) and a
temp folder of their own standing in for ``/tmp`` (world-writable, sticky).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from redis.backoff import NoBackoff
from redis.retry import Retry

from _helpers import wait_for
from _servers import kill_shared_servers
from daebus import DaebusCaller
from daebus.cli import EXIT_FAILURE, cli
from daebus.config import resolve_redis_url
from daebus.exceptions import TransportError
from daebus.pubsub import DEFAULT_MAX_MESSAGE_SIZE
from daebus.server import (
    LOG_NAME,
    MAX_BULK_LEN,
    PUBSUB_BUFFER_HARD_LIMIT,
    SOCKET_NAME,
    EmbeddedServer,
    SharedServer,
    shared_server_status,
    stop_shared_server,
)

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        not sys.platform.startswith("linux") or os.geteuid() != 0,
        reason="plays another local user: needs root (to chown, and to run as that user)",
    ),
]

#: The other user: uids nobody on a test machine uses.
ATTACKER = 65533
#: A user the CLI runs as where root's powers would hide a permission error.
VICTIM = 65534


@dataclass
class SharedTmp:
    """A stand-in for ``/tmp``, where the runtime folder is ``daebus-<uid>``."""

    path: Path

    def runtime_dir(self, uid: int = 0) -> Path:
        return self.path / f"daebus-{uid}"


@pytest.fixture
def shared_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[SharedTmp]:
    """A temp folder like ``/tmp`` (mode 1777) that ``tempfile.gettempdir()`` returns."""
    # mkdtemp, not tmp_path: a unix socket path must stay under ~100 bytes.
    path = Path(tempfile.mkdtemp(prefix="daebus-sec-"))
    path.chmod(0o1777)
    monkeypatch.delenv("DAEBUS_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    try:
        yield SharedTmp(path)
    finally:
        for folder in path.iterdir():
            if folder.is_dir() and not folder.is_symlink():
                kill_shared_servers(folder)
        shutil.rmtree(path, ignore_errors=True)


class AttackerServer:
    """A valkey-server run as the other user, on ``daebus.sock`` in a folder of its choice."""

    def __init__(self, binary: Path, folder: Path) -> None:
        self.socket_path = folder / SOCKET_NAME
        self.process = subprocess.Popen(
            [
                str(binary),
                "--port", "0",
                "--unixsocket", str(self.socket_path),
                "--unixsocketperm", "777",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(folder),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=ATTACKER,
            group=ATTACKER,
        )  # fmt: skip
        wait_for(self._answers, timeout=10, message="the attacker's server did not start")
        self._baseline = self.connections()

    def _answers(self) -> bool:
        assert self.process.poll() is None, "the attacker's server exited"
        with contextlib.suppress(redis.RedisError, OSError):
            return self.connections() > 0
        return False

    def connections(self) -> int:
        """Connections the server has accepted so far, this question's included."""
        client = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=2)
        try:
            return int(client.info("stats")["total_connections_received"])
        finally:
            client.close()

    def others_connections(self) -> int:
        """Connections accepted since it started, other than the test's own questions."""
        return self.connections() - self._baseline - 1

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def attacker(server_binary: Path) -> Iterator[list[AttackerServer]]:
    """The other user's servers started by the test, killed at its end."""
    started: list[AttackerServer] = []
    yield started
    for server in started:
        server.stop()


def attacker_folder(path: Path, mode: int = 0o777) -> Path:
    path.mkdir()
    os.chown(path, ATTACKER, ATTACKER)
    path.chmod(mode)
    return path


def one_line_error(args: list[str]) -> str:
    """Run ``daebus ARGS`` in-process; its error, once checked to be one line and exit 1."""
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == EXIT_FAILURE, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), result.stderr
    return lines[0]


# -- another user's folder, or a symlink, in the place of ours ---------------------------


@pytest.mark.parametrize("kind", ["folder", "symlink"])
def test_a_folder_squatted_by_another_user_with_a_live_server_is_refused(
    shared_tmp: SharedTmp,
    attacker: list[AttackerServer],
    server_binary: Path,
    dead_default_url: str,
    kind: str,
) -> None:
    ours = shared_tmp.runtime_dir()
    if kind == "folder":
        folder = attacker_folder(ours)
        refusal = "belongs to another user"
    else:
        folder = attacker_folder(shared_tmp.path / "elsewhere")
        ours.symlink_to(folder)
        os.lchown(ours, ATTACKER, ATTACKER)
        refusal = "is a symlink"
    squatter = AttackerServer(server_binary, folder)
    attacker.append(squatter)

    with pytest.raises(TransportError, match=refusal):
        resolve_redis_url()
    with pytest.raises(TransportError, match=refusal):
        shared_server_status()
    with pytest.raises(TransportError, match=refusal):
        stop_shared_server()
    with pytest.raises(TransportError, match=refusal):
        DaebusCaller("victim").send_request("secret", {"pin": "1234"}, timeout=2)
    for args in (["call", "victim", "secret"], ["server", "--status"], ["server", "--stop"]):
        assert refusal in one_line_error(args)

    assert squatter.others_connections() == 0
    assert squatter.process.poll() is None  # not stopped either (root could have)
    assert not (folder / "daebus.lock").exists()


def test_another_users_socket_in_an_open_folder_of_ours_is_not_used(
    shared_tmp: SharedTmp, attacker: list[AttackerServer], server_binary: Path
) -> None:
    # Our own folder, but open to all until daebus makes it private: the other user put
    # a server of their own in it meanwhile.
    ours = shared_tmp.runtime_dir()
    ours.mkdir(mode=0o700)
    ours.chmod(0o777)
    squatter = AttackerServer(server_binary, ours)
    attacker.append(squatter)

    status = SharedServer(ours, binary=server_binary).ensure()

    assert status.started
    assert status.pid != squatter.process.pid
    assert (ours.stat().st_mode & 0o777) == 0o700
    info = (ours / SOCKET_NAME).lstat()
    assert info.st_uid == 0
    client = redis.Redis.from_url(status.url)
    try:
        assert int(client.info("server")["process_id"]) == status.pid
    finally:
        client.close()
    assert squatter.process.poll() is None


def test_a_socket_symlinked_to_another_users_server_is_not_followed(
    shared_tmp: SharedTmp, attacker: list[AttackerServer], server_binary: Path
) -> None:
    elsewhere = attacker_folder(shared_tmp.path / "elsewhere")
    squatter = AttackerServer(server_binary, elsewhere)
    attacker.append(squatter)
    ours = shared_tmp.runtime_dir()
    ours.mkdir(mode=0o700)
    (ours / SOCKET_NAME).symlink_to(squatter.socket_path)

    status = SharedServer(ours, binary=server_binary).ensure()

    assert status.started
    assert status.pid != squatter.process.pid
    assert not (ours / SOCKET_NAME).is_symlink()
    assert squatter.others_connections() == 0


def test_a_log_symlinked_elsewhere_is_refused_not_appended_to(
    shared_tmp: SharedTmp, server_binary: Path
) -> None:
    ours = shared_tmp.runtime_dir()
    ours.mkdir(mode=0o700)
    target = shared_tmp.path / "precious.txt"
    target.write_text("keep me\n")
    (ours / LOG_NAME).symlink_to(target)

    with pytest.raises(TransportError, match="is a symlink"):
        SharedServer(ours, binary=server_binary).ensure()

    assert target.read_text() == "keep me\n"
    assert not (ours / SOCKET_NAME).exists()


# -- the CLI as a user whom the folder's permissions stop ---------------------------------

# Imports everything the CLI needs while the interpreter's files are readable (the test's
# Python may live in root's home), then becomes the victim and runs `daebus ARGS`.
AS_VICTIM = textwrap.dedent(
    f"""
    import email.parser, encodings.idna, importlib.metadata, os, sys
    import redis
    import daebus.cli, daebus.runtime.loop, daebus.config, daebus.demo, daebus.server
    redis.Redis(unix_socket_path="/nonexistent").connection_pool.make_connection()
    importlib.metadata.version("redis")
    os.setgroups([])
    os.setgid({VICTIM})
    os.setuid({VICTIM})
    sys.argv[0] = "daebus"
    daebus.cli.main()
    """
)


@pytest.mark.parametrize(
    "args",
    [
        ["call", "svc", "act"],
        ["publish", "channel", "{}"],
        ["listen", "channel.*"],
        ["run", "daebus.demo:shop"],
        ["demo"],
        ["server", "--status"],
        ["server", "--stop"],
        ["server"],
    ],
)
def test_a_runtime_folder_symlinked_to_an_unreadable_folder_is_a_one_line_error(
    shared_tmp: SharedTmp, dead_default_url: str, args: list[str]
) -> None:
    hidden = attacker_folder(shared_tmp.path / "hidden", mode=0o700)
    link = shared_tmp.runtime_dir(VICTIM)
    link.symlink_to(hidden)
    os.lchown(link, ATTACKER, ATTACKER)
    env = {name: value for name, value in os.environ.items() if not name.startswith("DAEBUS_")}
    env.pop("XDG_RUNTIME_DIR", None)
    env.update(TMPDIR=str(shared_tmp.path), DAEBUS_DEFAULT_REDIS_URL=dead_default_url)

    done = subprocess.run(
        [sys.executable, "-c", AS_VICTIM, *args],
        env=env,
        cwd=shared_tmp.path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert done.returncode == EXIT_FAILURE, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: "), done.stderr
    assert f"{link} is a symlink" in lines[0]


# -- one message cannot cut the subscribers off ----------------------------------------


@dataclass
class Embedded:
    """A server daebus starts: a client of it, and its address for a bare socket."""

    client: redis.Redis
    address: str | tuple[str, int]

    def connect(self) -> socket.socket:
        family = socket.AF_UNIX if isinstance(self.address, str) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self.address)
        return sock


@pytest.fixture(params=["shared", "private"])
def embedded(request: pytest.FixtureRequest, server_binary: Path) -> Iterator[Embedded]:
    """Each kind of server daebus starts: the shared one, a private one."""
    no_retry = Retry(NoBackoff(), 0)
    if request.param == "shared":
        folder = Path(tempfile.mkdtemp(prefix="daebus-t-"))
        server = SharedServer(folder, binary=server_binary)
        client = redis.Redis.from_url(server.ensure().url, retry=no_retry)
        try:
            yield Embedded(client, str(server.socket_path))
        finally:
            client.close()
            server.stop()
            shutil.rmtree(folder, ignore_errors=True)
    else:
        with EmbeddedServer(server_binary) as private:
            client = redis.Redis.from_url(private.url, retry=no_retry)
            try:
                yield Embedded(client, (private.host, private.port))
            finally:
                client.close()


def test_the_embedded_servers_refuse_a_message_no_subscriber_could_hold(
    embedded: Embedded,
) -> None:
    client = embedded.client
    assert client.config_get("proto-max-bulk-len") == {"proto-max-bulk-len": str(MAX_BULK_LEN)}
    limits = client.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
    assert int(limits.split("pubsub ")[1].split()[0]) == PUBSUB_BUFFER_HARD_LIMIT
    # Room for daebus's largest message, and the subscriber's buffer for several.
    assert DEFAULT_MAX_MESSAGE_SIZE <= MAX_BULK_LEN < PUBSUB_BUFFER_HARD_LIMIT


def read_until(sock: socket.socket, end: bytes) -> bytes:
    """What ``sock`` receives up to and including ``end``; AssertionError at end of file."""
    received = bytearray()
    while not received.endswith(end):
        chunk = sock.recv(1 << 20)
        assert chunk, f"the server closed the connection after {len(received)} bytes"
        received += chunk
    return bytes(received)


def test_an_oversized_publish_fails_for_its_sender_and_subscribers_stay(
    embedded: Embedded,
) -> None:
    # A bare socket, which never reconnects: a subscriber the server dropped shows.
    with embedded.connect() as subscriber:
        subscriber.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nnews\r\n")
        read_until(subscriber, b":1\r\n")
        # Over the old pub/sub hard limit (32 MB), over the largest message now.
        with pytest.raises((redis.ConnectionError, redis.ResponseError)):
            embedded.client.publish("news", b"x" * (40 * 1024 * 1024))
        largest = b"y" * DEFAULT_MAX_MESSAGE_SIZE
        assert embedded.client.publish("news", largest) == 1
        assert embedded.client.publish("news", b"after") == 1
        received = read_until(subscriber, b"$5\r\nafter\r\n")
    assert received.count(b"news") == 2
    assert largest in received
    assert b"x" * 1024 not in received
