// The Node socket.io@4 peer, with tinysio's handlers. Usage: node node-server.mjs PORT
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.argv[2] || 5102);
const http = createServer();
const io = new Server(http, { cors: { origin: "*" }, maxHttpBufferSize: 1e6 });
io.of("/").on("connection", (s) => {
  s.emit("auth", s.handshake.auth);
  s.on("message", (...args) => s.emit("message-back", ...args));
  s.on("message-with-ack", (...args) => {
    const ack = args.pop();
    if (typeof ack === "function") ack(...args);
  });
});
const movies = io.of("/movies");
movies.on("connection", (s) => {
  s.emit("on_connect", { logged_in: false });
  s.on("join", (room, ack) => {
    s.join(room);
    if (typeof ack === "function") ack({ ok: true });
  });
  s.on("chat", (room, text) => movies.to(room).emit("chat", { room, text }));
});
http.listen(port, "127.0.0.1", () => console.log(`listening on http://127.0.0.1:${port}`));
