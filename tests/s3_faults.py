"""A loopback TCP forwarder in front of an S3 endpoint that injects network faults on demand.

What a client sees, as with a real endpoint that fails:

* :meth:`FaultyEndpoint.outage`: every open connection dies (keep-alive ones too) and the next
  ``n`` connections are reset as soon as they are accepted (an endpoint restarting or a load
  balancer dropping it); connection ``n + 1`` reaches the store again, with its data.
* :meth:`FaultyEndpoint.arm_cut`: the next GET whose path contains ``match`` gets its response
  headers and half of its body, then the connection drops, and an outage of ``then_reset``
  connections follows (a fetch cut mid-body by an endpoint that went away).

Both are triggered by events (a request, a count of connections), never by time. A process
that only knows the URL (a spawned training worker) arms a cut with :func:`request_cut`.
"""
from __future__ import annotations

import socket
import struct
import threading
import urllib.parse
import urllib.request

_METHODS = (b"GET ", b"PUT ", b"POST ", b"HEAD ", b"DELETE ")
_CONTROL = b"/__fault__/"


def request_cut(url: str, match: str, then_reset: int) -> None:
    """Arm :meth:`FaultyEndpoint.arm_cut` through the endpoint's URL (from any process)."""
    query = urllib.parse.urlencode({"match": match, "reset": then_reset})
    urllib.request.urlopen(f"{url}/__fault__/cut?{query}", timeout=10).close()


def _reset(sock: socket.socket) -> None:
    """Close with RST (linger 0): the peer sees 'connection reset', not a clean end. The
    shutdown first wakes a thread blocked in recv on it (a plain close would wait for it)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Conn:
    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.client, self.upstream = client, upstream
        self.cut = False


class FaultyEndpoint:
    """See the module docstring. ``requests``: request lines forwarded; ``cuts``: request
    lines cut mid-body; ``resets``: connections reset while down."""

    def __init__(self, target_url: str):
        target = urllib.parse.urlsplit(target_url)
        self._target = (target.hostname or "127.0.0.1", int(target.port or 80))
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._live: set[_Conn] = set()
        self._cut_match: bytes | None = None
        self._reset_after_cut = 0
        self._resets_left = 0
        self.requests: list[str] = []
        self.cuts: list[str] = []
        self.resets = 0
        self.cut_done = threading.Event()
        self.back_up = threading.Event()
        self.back_up.set()
        threading.Thread(target=self._accept, daemon=True).start()

    # -- faults ---------------------------------------------------------------------------
    def outage(self, connections: int) -> None:
        """Drop every open connection and reset the next ``connections`` ones."""
        with self._lock:
            self._down(connections)

    def arm_cut(self, match: str, then_reset: int) -> None:
        with self._lock:
            self._cut_match, self._reset_after_cut = match.encode(), int(then_reset)
            self.cut_done.clear()

    def close(self) -> None:
        self._server.close()
        with self._lock:
            self._down(0)

    def _down(self, connections: int) -> None:  # lock held
        for conn in list(self._live):
            _reset(conn.client)
            _reset(conn.upstream)
        self._live.clear()
        self._resets_left = connections
        if connections:
            self.back_up.clear()

    # -- plumbing -------------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                if self._resets_left > 0:
                    self._resets_left -= 1
                    self.resets += 1
                    if self._resets_left == 0:
                        self.back_up.set()
                    _reset(client)
                    continue
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                _reset(client)
                continue
            conn = _Conn(client, upstream)
            with self._lock:
                self._live.add(conn)
            threading.Thread(target=self._requests, args=(conn,), daemon=True).start()
            threading.Thread(target=self._responses, args=(conn,), daemon=True).start()

    def _control(self, conn: _Conn, target: bytes) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target.decode()).query)
        self.arm_cut(query["match"][0], int(query["reset"][0]))
        conn.client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        self._drop(conn)

    def _requests(self, conn: _Conn) -> None:
        try:
            while data := conn.client.recv(65536):
                if data.startswith(_METHODS):
                    method, target = data.split(b"\r\n", 1)[0].split(b" ")[:2]
                    if target.startswith(_CONTROL):
                        return self._control(conn, target)
                    line = f"{method.decode()} {target.decode()}"
                    with self._lock:
                        self.requests.append(line)
                        if method == b"GET" and self._cut_match is not None and self._cut_match in target:
                            conn.cut, self._cut_match = True, None
                            self.cuts.append(line)
                conn.upstream.sendall(data)
        except OSError:
            pass
        self._drop(conn)

    def _responses(self, conn: _Conn) -> None:
        pending = b""
        try:
            while data := conn.upstream.recv(65536):
                if not conn.cut:
                    conn.client.sendall(data)
                    continue
                pending += data
                head = pending.find(b"\r\n\r\n")
                body = len(pending) - head - 4 if head >= 0 else 0
                if body < 2:
                    continue  # headers and some body first: the cut falls inside the body
                conn.client.sendall(pending[: head + 4 + body // 2])
                with self._lock:
                    self._down(self._reset_after_cut)
                self.cut_done.set()
                return
        except OSError:
            pass
        self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        with self._lock:
            self._live.discard(conn)
        for sock in (conn.client, conn.upstream):
            try:
                sock.close()
            except OSError:
                pass
