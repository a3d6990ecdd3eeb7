"""The Flask-SocketIO peer in threading mode, with tinysio's handlers. Usage: flask_server.py PORT"""
import sys

from flask import Flask, request
from flask_socketio import SocketIO, emit, join_room

app = Flask(__name__)
socketio = SocketIO(app, async_mode="threading", cors_allowed_origins="*", max_http_buffer_size=1_000_000)


@socketio.on("connect", namespace="/")
def on_connect(auth=None):
    emit("auth", auth or {})


@socketio.on("message", namespace="/")
def on_message(*args):
    emit("message-back", args if len(args) != 1 else args[0])


@socketio.on("message-with-ack", namespace="/")
def on_message_with_ack(*args):
    return args if len(args) != 1 else args[0]


@socketio.on("connect", namespace="/movies")
def movies_connect(auth=None):
    emit("on_connect", {"logged_in": False})


@socketio.on("join", namespace="/movies")
def movies_join(room):
    join_room(room)
    return {"ok": True}


@socketio.on("chat", namespace="/movies")
def movies_chat(room, text):
    emit("chat", {"room": room, "text": text}, to=room)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5103
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    socketio.run(app, host="127.0.0.1", port=port, allow_unsafe_werkzeug=True, log_output=False)
