"""Interop with python-socketio's AsyncClient, whose transports are aiohttp's, not the Client's."""
import asyncio
import random

import pytest
import socketio

from test_python_socketio import WAIT, as_sent, random_args, server  # noqa: F401  (server: the module-scoped fixture)


async def session(url, transport):
    client = socketio.AsyncClient(reconnection=False)
    inbox = asyncio.Queue()
    client.on("*", lambda event, *args: inbox.put_nowait((event, list(args))))
    kw = {"transports": [transport]} if transport else {}
    await client.connect(url, auth={"token": "aio"}, wait_timeout=WAIT, **kw)
    try:

        async def expect(name):
            while True:
                event, args = await asyncio.wait_for(inbox.get(), WAIT)
                if event == name:
                    return args

        assert await expect("auth") == [{"token": "aio"}]
        assert client.transport() == (transport or "websocket")
        payload = ("text", {"blob": bytes(range(256)), "list": [b"", b"x"]})
        assert await client.call("message-with-ack", payload, timeout=WAIT) == payload
        await client.emit("message", {"n": 1})
        assert await expect("message-back") == [{"n": 1}]
    finally:
        await client.disconnect()


# None: the default, polling and then the upgrade to WebSocket.
@pytest.mark.parametrize("transport", ["websocket", "polling", None])
def test_async_client_events_acks_and_binary(server, transport):
    asyncio.run(session(server, transport))


async def round_trips(url, transport):
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(url, transports=[transport], wait_timeout=WAIT)
    try:
        for seed in range(100):
            args = random_args(random.Random(seed))
            acked = await client.call("message-with-ack", args, timeout=WAIT)
            acked = acked if isinstance(acked, tuple) else (acked,)
            assert as_sent(acked) == as_sent(args), f"seed {seed}"
    finally:
        await client.disconnect()


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_async_client_random_arguments_come_back_as_sent(server, transport):
    asyncio.run(round_trips(server, transport))
