"""Faults of the wire: a loopback HTTP proxy in front of the sandbox that breaks bodies on demand.

The emulators run on uvicorn, which always frames a body (Content-Length or chunked) and always
ends a connection politely, so the ways a real network, a proxy or a server that dies mid-stream
cut a download cannot come from them. This proxy forwards each request to the sandbox, reads the
whole answer, and sends it on in one of these ways (a queued mode is used once per 200 answer;
other statuses pass through untouched):

- ``close``        the default: no length, the end of the body is the end of the connection
                   (legal in HTTP/1.1; what many proxies send);
- ``close-cut``    the same, closed part-way through the body;
- ``chunked-cut``  chunked, closed part-way through a chunk;
- ``length-cut``   a Content-Length for the whole body, closed before it is all sent;
- ``reset``        the headers and part of the body, then a TCP reset (RST).

"Part-way" is `after` of the body (a fraction, default one half). One request per connection:
every answer says ``Connection: close``.
"""

from __future__ import annotations

import http.client
import socket
import socketserver
import struct
import threading
from collections import deque
from urllib.parse import urlsplit

MODES = ("close", "close-cut", "chunked-cut", "length-cut", "reset")
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}
_CHUNK = 16 * 1024


class FaultyProxy:
    """`with FaultyProxy(state.base_url) as proxy:` point a client at `proxy.url`, then
    `proxy.queue("close-cut", 2)` breaks the next two 200 answers that way."""

    def __init__(self, upstream: str):
        u = urlsplit(upstream)
        self.upstream = (u.hostname, u.port or 80)
        self._faults: deque[tuple[str, float]] = deque()
        self._lock = threading.Lock()
        self.served: list[str] = []  # the mode each 200 answer was sent with
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                proxy._handle(self.rfile, self.connection)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True

            def shutdown_request(self, request):
                if request.fileno() in proxy._resets:  # no FIN before the RST
                    proxy._resets.discard(request.fileno())
                    self.close_request(request)
                else:
                    super().shutdown_request(request)

        self._resets: set[int] = set()
        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def queue(self, mode: str, count: int = 1, after: float = 0.5) -> None:
        """Break the next `count` 200 answers in `mode`, cut at `after` of their body."""
        if mode not in MODES:
            raise ValueError(f"unknown wire fault {mode!r}: one of {', '.join(MODES)}")
        with self._lock:
            self._faults.extend([(mode, after)] * count)

    def pending(self) -> int:
        with self._lock:
            return len(self._faults)

    def _take(self) -> tuple[str, float]:
        with self._lock:
            return self._faults.popleft() if self._faults else ("close", 1.0)

    def _handle(self, rfile, sock: socket.socket) -> None:
        request_line = rfile.readline(65537).decode("latin-1").rstrip("\r\n")
        if not request_line:
            return
        method, target, _ = request_line.split(" ", 2)
        headers = []
        while (line := rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
        body = rfile.read(length) if length else None
        upstream = http.client.HTTPConnection(*self.upstream, timeout=600)
        try:
            upstream.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() not in _HOP:
                    upstream.putheader(name, value)
            if body is not None:
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body)
            resp = upstream.getresponse()
            data = resp.read()  # http.client undoes chunking, keeps gzip as sent
            status, reason, kept = resp.status, resp.reason, resp.getheaders()
        finally:
            upstream.close()
        mode, after = self._take() if status == 200 else ("close", 1.0)
        if status == 200:
            self.served.append(mode)
        self._send(sock, status, reason, kept, data, mode, after)

    def _send(self, sock, status, reason, headers, data, mode, after) -> None:
        cut = int(len(data) * after) if mode != "close" else len(data)
        head = [f"HTTP/1.1 {status} {reason}"]
        head += [f"{k}: {v}" for k, v in headers if k.lower() not in _HOP]
        if mode == "chunked-cut":
            head.append("Transfer-Encoding: chunked")
        elif mode in ("length-cut", "reset"):
            head.append(f"Content-Length: {len(data)}")
        head.append("Connection: close")
        try:
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            if mode == "chunked-cut":
                for i in range(0, len(data), _CHUNK):
                    piece = data[i : i + _CHUNK]
                    sock.sendall(f"{len(piece):x}\r\n".encode())
                    if i + len(piece) > cut:  # the chunk the connection dies in
                        sock.sendall(piece[: cut - i])
                        break
                    sock.sendall(piece + b"\r\n")
                else:
                    sock.sendall(b"0\r\n\r\n")
            else:
                sock.sendall(data[:cut])
            if mode == "reset":  # closed with SO_LINGER 0, the kernel sends RST, not FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self._resets.add(sock.fileno())
        except OSError:
            pass  # the client went away first
