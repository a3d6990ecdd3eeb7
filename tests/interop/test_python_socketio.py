"""Interop with the official python-socketio Client (PROTOCOL.md §2 and the §4 echo service)."""
import os
import queue
import random
import re
import subprocess
import threading

import pytest
import socketio

BIN = os.environ.get("TINYSIO_BIN", os.path.join(os.path.dirname(__file__), "../../target/debug/tinysio"))
WAIT = 20  # seconds: the bound on any single wait; reaching it fails the test


@pytest.fixture(scope="module")
def server():
    # A short ping interval: python-socketio's polling client sometimes ends without a close
    # packet while its last GET waits (README, known gaps), and its disconnect() then takes
    # one ping interval.
    proc = subprocess.Popen([BIN, "--port", "0", "--ping-interval", "2000"], stderr=subprocess.PIPE, text=True)
    lines = []
    first = proc.stderr.readline()
    lines.append(first)
    url = re.search(r"http://\S+", first).group(0)
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    yield url
    proc.kill()
    proc.wait()
    assert not any("panicked" in line for line in lines)


def connect(url, transport=None, **kw):
    """A client on one transport, or with the default (polling, then the upgrade) when None."""
    client = socketio.Client(reconnection=False)
    inbox = queue.Queue()
    client.on("*", lambda event, *args: inbox.put((event, list(args))))
    if transport:
        kw["transports"] = [transport]
    client.connect(url, wait_timeout=WAIT, **kw)
    return client, inbox


def expect(inbox, name):
    while True:
        event, args = inbox.get(timeout=WAIT)
        if event == name:
            return args


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_events_acks_and_auth(server, transport):
    client, inbox = connect(server, transport, auth={"token": "py"})
    try:
        assert client.transport() == transport
        assert expect(inbox, "auth") == [{"token": "py"}]
        client.emit("message", ("hi", {"n": 1}))
        assert expect(inbox, "message-back") == ["hi", {"n": 1}]
        assert client.call("message-with-ack", ("one", 2), timeout=WAIT) == ("one", 2)
        assert client.call("message-with-ack", "single", timeout=WAIT) == "single"
    finally:
        client.disconnect()


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_binary_is_byte_exact(server, transport):
    client, inbox = connect(server, transport)
    try:
        blob = bytes(range(256))
        payload = (b"\x00\x01", {"nested": {"blob": blob, "list": [b"", b"x"]}})
        client.emit("message", payload)
        assert expect(inbox, "message-back") == list(payload)
        assert client.call("message-with-ack", payload, timeout=WAIT) == payload
    finally:
        client.disconnect()


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_call_times_out_when_no_ack_comes(server, transport):
    client, _ = connect(server, transport)
    try:
        # `message` is answered with an event, never with an ack.
        with pytest.raises(socketio.exceptions.TimeoutError):
            client.call("message", "no ack for this", timeout=0.5)
        assert client.call("message-with-ack", "still fine", timeout=WAIT) == "still fine"
    finally:
        client.disconnect()


def test_default_transports_upgrade_polling_to_websocket(server):
    # No `transports`: what most users write. The client opens over polling, upgrades, and the
    # packets before and after the upgrade all arrive.
    client, inbox = connect(server, auth={"token": "default"})
    try:
        assert expect(inbox, "auth") == [{"token": "default"}]
        assert client.transport() == "websocket"
        assert client.call("message-with-ack", ("after", "upgrade"), timeout=WAIT) == ("after", "upgrade")
        client.emit("message", {"n": 2})
        assert expect(inbox, "message-back") == [{"n": 2}]
    finally:
        client.disconnect()


def test_server_asks_the_python_client_for_an_ack(server):
    client, inbox = connect(server, "websocket")
    try:
        client.on("ack-me", lambda *args: ("from python",) + args)
        client.emit("server-ack", (5000, "q"))
        assert expect(inbox, "server-ack-result") == [{"ok": True, "args": ["from python", "q"]}]
    finally:
        client.disconnect()


def test_unknown_namespace_is_refused(server):
    client = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError, match="Invalid namespace|One or more namespaces failed"):
        client.connect(server, namespaces=["/random"], transports=["websocket"], wait_timeout=WAIT)
    client.disconnect()


def random_args(rng):
    """Seeded arguments of every kind python-socketio sends: strings with astral characters,
    lone surrogates and NUL, integers of 64 bits, floats at the extremes, bytes at any depth,
    nested lists and dicts."""
    pieces = ["a", "é", "😀", "\ud83d", "\ude00", "\u2028", "\x00", '"', "\\", "\U0010ffff"]

    def text():
        return "".join(rng.choice(pieces) for _ in range(rng.randrange(6)))

    def value(depth):
        kind = rng.randrange(4 if depth > 3 else 6)
        if kind == 0:
            return text()
        if kind == 1:
            return rng.choice([0, 1, -1, 2**53 + 1, -(2**63), 2**64 - 1, 1e21, 5e-324, 1.7976931348623157e308, 0.1])
        if kind == 2:
            return rng.choice([True, False, None])
        if kind == 3:
            return text().encode("utf-8", "surrogatepass")
        if kind == 4:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        return {rng.choice(["a", "", "10", "😀", text()]): value(depth + 1) for _ in range(rng.randrange(4))}

    return tuple(value(0) for _ in range(1 + rng.randrange(3)))


def as_sent(v):
    """What JSON and UTF-8 make of a value on its way: a lone surrogate becomes U+FFFD."""
    if isinstance(v, str):
        return v.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(v, (list, tuple)):
        return [as_sent(x) for x in v]
    if isinstance(v, dict):
        return {as_sent(k): as_sent(x) for k, x in v.items()}
    return v


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_random_arguments_come_back_from_the_echo_as_sent(server, transport):
    client, _ = connect(server, transport)
    try:
        for seed in range(100):
            args = random_args(random.Random(seed))
            acked = client.call("message-with-ack", args, timeout=WAIT)
            acked = acked if isinstance(acked, tuple) else (acked,)
            assert as_sent(acked) == as_sent(args), f"seed {seed}"
    finally:
        client.disconnect()
