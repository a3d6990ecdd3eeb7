"""The /movies app (PROTOCOL.md §4) through python-socketio's Client."""
import queue

import pytest
import socketio

from test_python_socketio import WAIT, server  # noqa: F401  (the module-scoped server fixture)


def movies(url, transport, auth=None):
    client = socketio.Client(reconnection=False)
    inbox = queue.Queue()
    client.on("*", lambda event, *args: inbox.put((event, list(args))), namespace="/movies")
    client.connect(url, namespaces=["/movies"], transports=[transport], auth=auth, wait_timeout=WAIT)
    event, args = inbox.get(timeout=WAIT)
    assert event == "on_connect"
    return client, inbox, args[0]


def call(client, event, *args):
    data = args[0] if len(args) == 1 else args
    return client.call(event, data, namespace="/movies", timeout=WAIT)


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_identify_join_chat_and_refusals(server, transport):  # noqa: F811
    client, inbox, state = movies(server, transport)
    try:
        assert state["logged_in"] is False
        assert call(client, "identify", "") == {"ok": False, "error": "username is empty"}
        assert call(client, "identify", "x" * 33)["ok"] is False
        assert call(client, "identify", "py-" + transport) == {"ok": True, "username": "py-" + transport}
        assert call(client, "chat", "Alien", "hi") == {"ok": False, "error": "not in room Alien"}
        assert call(client, "join", "Alien")["ok"] is True
        assert call(client, "chat", "Alien", "hello from python") == {"ok": True, "delivered": 1}
        while True:
            event, args = inbox.get(timeout=WAIT)
            if event == "chat":
                assert args[0]["text"] == "hello from python"
                assert args[0]["from"] == "py-" + transport
                break
    finally:
        client.disconnect()


def test_session_in_connect_payload_keeps_the_login(server):  # noqa: F811
    first, _, state = movies(server, "websocket")
    call(first, "identify", "pyuser")
    first.disconnect()
    again, _, state2 = movies(server, "polling", auth={"session": state["session"]})
    try:
        assert state2 == {"logged_in": True, "username": "pyuser"}
    finally:
        again.disconnect()
