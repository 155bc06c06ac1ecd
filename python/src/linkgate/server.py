"""The server's half of linkgate/1 over blocking sockets: :func:`admit` for one accepted socket,
and :func:`serve`, a threaded server that survives bad peers."""

from __future__ import annotations

import ipaddress
import logging
import os
import selectors
import socket
import threading
from typing import Callable, Dict, NamedTuple, Optional, Tuple, Union

from . import _io
from .errors import (InvalidArgument, LinkgateError, NetworkError, network_error)
from .keys import normalize_keyring
from .protocol import (NONCE_LEN, PLAIN, RESPONSE_HEAD_LEN, Policy, encode_challenge, judge,
                       refuse_head, response_remaining_len)
from .record import RecordLayer
from .sealed import SealedSocket, reset

__all__ = ["Admission", "admit", "Server", "serve"]

logger = logging.getLogger("linkgate")

Stream = Union[socket.socket, SealedSocket]


class Admission(NamedTuple):
    """An admitted connection: unpacks as ``stream, key_id = admission``.

    ``stream`` is the accepted socket itself in plain mode, a :class:`SealedSocket` in the
    sealed modes; ``mode`` says which.
    """

    stream: Stream
    key_id: str

    @property
    def mode(self) -> str:
        return getattr(self.stream, "mode", PLAIN)

    def __repr__(self) -> str:
        return f"Admission(key_id={self.key_id!r}, mode={self.mode!r})"


def _refuse(sock: socket.socket, verdict: bytes) -> None:
    """Sends a refusal and shuts our side down; best effort (the peer may be gone)."""
    try:
        sock.sendall(verdict)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _admit(sock: socket.socket, keyring: Dict[str, bytes], policy: Policy,
           deadline: _io.Deadline) -> Admission:
    hio = _io.HandshakeIO(sock, deadline)
    try:
        server_nonce = os.urandom(NONCE_LEN)
        hio.send(encode_challenge(server_nonce))
        # Read exactly the RESPONSE: its 2-byte head says how long the rest is.
        head = hio.recv_exact(RESPONSE_HEAD_LEN)
        bad_head = refuse_head(head)
        if bad_head is not None:
            _refuse(sock, bad_head.verdict)  # type: ignore[attr-defined]
            raise bad_head
        rest = hio.recv_exact(response_remaining_len(head))
        try:
            judged = judge(head + rest, server_nonce, keyring, policy)
        except LinkgateError as refusal:
            _refuse(sock, refusal.verdict)  # type: ignore[attr-defined]
            raise
        hio.send(judged.verdict)
    except LinkgateError:
        raise
    except socket.timeout as err:
        raise _io.timeout_error(deadline.timeout, _io.RESPONSE) from err
    except OSError as err:
        raise network_error(err, "during the handshake") from err
    finally:
        hio.restore()
    if judged.secrets is None:
        return Admission(sock, judged.key_id)
    layer = RecordLayer.for_side(judged.secrets, "server")
    return Admission(SealedSocket(sock, layer, judged.key_id, judged.mode), judged.key_id)


def admit(sock: socket.socket, keyring, *, timeout: Optional[float] = 5.0,
          allow_plain: bool = False, require_forward_secrecy: bool = False) -> Admission:
    """Runs the server's half of linkgate/1 on an accepted socket.

    ``keyring`` maps key ids to keys (load_keyring), or is an iterable of Keys. Returns an
    :class:`Admission`: ``stream, key_id = admit(conn, keyring)``. Plain mode is refused unless
    ``allow_plain``; ``require_forward_secrecy`` refuses mode sealed too (the client is sent
    ``malformed``, as the Rust gate does). Reads exactly the protocol's bytes, so what the client
    sends right after its RESPONSE stays in the stream.

    On refusal the client has been sent what the protocol says and the exception says why:
    Denied (``reason`` ``unknown_key_id`` or ``wrong_proof``), Malformed, ModeNotAllowed,
    KeyExchangeFailed, HandshakeTimeout, ClosedEarly, PeerReset or NetworkError (all
    LinkgateErrors). Close the socket afterwards. Blocks for up to ``timeout``: call it in the
    connection's own thread (as :func:`serve` does), never in the accept loop.
    """
    policy = Policy(allow_plain, require_forward_secrecy)
    policy.check_usable()
    return _admit(sock, normalize_keyring(keyring), policy, _io.Deadline(timeout))


# --- the threaded server ------------------------------------------------------------------------

def source_of(peer) -> str:
    """The source a handshake bound counts against: an IPv4 address, or an IPv6 /64."""
    host = peer[0] if isinstance(peer, tuple) else str(peer)
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


def peer_text(peer) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = peer[0]
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer)


def _close_quietly(stream) -> None:
    try:
        stream.close()
    except OSError:
        pass


def _abort(stream) -> None:
    try:
        if isinstance(stream, SealedSocket):
            stream.abort()
        else:
            reset(stream)
    except OSError:
        pass


def _listen(host: Optional[str], port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
    try:
        return socket.create_server((host or "", port), family=family, backlog=backlog)
    except OSError as err:
        raise NetworkError(f"cannot listen on {peer_text((host or '', port))}: "
                           f"{err.strerror or err}", err.errno) from err


Handler = Callable[[Stream, str], None]


class Server:
    """A threaded linkgate/1 server (see :func:`serve`, which makes and starts one).

    The accept loop only accepts: each handshake runs in a thread of its own, with the handshake
    timeout, so no peer (silent, slow, resetting, sending garbage) delays any other. Handshakes
    in progress are bounded globally (``max_handshakes``) and per source (an IPv4 address, an
    IPv6 /64: ``max_handshakes_per_source``); past either bound a new connection is closed at
    once. An admitted connection stays in its thread and is handed to
    ``handler(stream, key_id)``; when the handler returns, the stream is closed (cleanly: in
    the sealed modes with close_notify, if the handler did not shut it down itself); when it
    raises, the connection is reset. ``max_connections`` (default: unbounded) bounds the
    connections open at once: at the bound, no new connection is accepted until one ends.

    Refusals, admissions and handler failures are logged to the ``linkgate`` logger (refusals and
    admissions at INFO, with the peer and a ``reason=``).
    """

    def __init__(self, handler: Handler, host: Optional[str], port: int, keyring, *,
                 timeout: Optional[float] = 5.0, allow_plain: bool = False,
                 require_forward_secrecy: bool = False, max_handshakes: int = 1024,
                 max_handshakes_per_source: int = 64, max_connections: Optional[int] = None,
                 backlog: int = 128):
        if not callable(handler):
            raise InvalidArgument("the handler must be callable: handler(stream, key_id)")
        self._keyring = normalize_keyring(keyring)
        if not self._keyring:
            raise InvalidArgument("the keyring is empty")
        self._policy = Policy(allow_plain, require_forward_secrecy)
        self._policy.check_usable()
        self._timeout = _io.check_timeout(timeout)
        for name, value in (("max_handshakes", max_handshakes),
                            ("max_handshakes_per_source", max_handshakes_per_source),
                            ("max_connections", 1 if max_connections is None else max_connections)):
            if int(value) < 1:
                unbounded = " (or None: unbounded)" if name == "max_connections" else ""
                raise InvalidArgument(f"{name} must be at least 1{unbounded}")
        self._handler = handler
        self._max_handshakes = int(max_handshakes)
        self._max_per_source = int(max_handshakes_per_source)
        self._connections = (None if max_connections is None
                             else threading.BoundedSemaphore(int(max_connections)))
        self._lock = threading.Lock()
        self._handshakes = 0
        self._per_source: Dict[str, int] = {}
        self._listener = _listen(host, port, backlog)
        # Kept: the address is still what it was after close() (logs, repr).
        self._address = self._listener.getsockname()
        self._wake_r, self._wake_w = socket.socketpair()
        self._closing = threading.Event()
        self._stopped = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._running = False
        self._loop_thread: Optional[threading.Thread] = None

    def __repr__(self) -> str:
        return f"<linkgate.Server {peer_text(self.address)}>"

    @property
    def address(self) -> Tuple:
        """The address listened on (e.g. after binding port 0); still known after close()."""
        return self._address

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def handshakes_in_progress(self) -> int:
        return self._handshakes

    def start(self) -> "Server":
        """Runs the accept loop in a background (daemon) thread; returns the server."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._accept_loop, name="linkgate-accept",
                                            daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Blocks until the server is closed (runs the accept loop here if it was not
        started)."""
        if self._thread is None and not self._running:
            self._accept_loop()
            return
        while not self._stopped.wait(0.5):
            pass

    def close(self) -> None:
        """Stops accepting and closes the listening socket. Connections already admitted go on
        until their handlers return."""
        if self._closing.is_set():
            self._stopped.wait()
            return
        self._closing.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._running:
            if threading.current_thread() is not self._loop_thread:
                self._stopped.wait()
        else:
            self._listener.close()
            self._stopped.set()
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    shutdown = close

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the accept loop ------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        with self._lock:
            if self._running or self._closing.is_set():
                return
            self._running = True
            self._loop_thread = threading.current_thread()
        selector = selectors.DefaultSelector()
        self._listener.setblocking(False)
        selector.register(self._listener, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._closing.is_set():
                if self._connections is not None:
                    while not self._connections.acquire(timeout=0.2):
                        if self._closing.is_set():
                            return
                if not self._accept_one(selector) and self._connections is not None:
                    self._connections.release()
        finally:
            selector.close()
            self._listener.close()
            self._stopped.set()

    def _accept_one(self, selector) -> bool:
        """Accepts one connection and starts its thread; False if none was started."""
        selector.select()
        if self._closing.is_set():
            return False
        try:
            conn, peer = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as err:
            # E.g. out of file descriptors: say so, pause, go on.
            logger.warning("accept failed: %s; retrying", err)
            self._closing.wait(0.1)
            return False
        source = source_of(peer)
        with self._lock:
            if self._handshakes >= self._max_handshakes:
                over = f"max_handshakes={self._max_handshakes}"
            elif self._per_source.get(source, 0) >= self._max_per_source:
                over = f"max_handshakes_per_source={self._max_per_source}"
            else:
                over = None
                self._handshakes += 1
                self._per_source[source] = self._per_source.get(source, 0) + 1
        if over is not None:
            logger.warning("connection rejected peer=%s reason=too_many_handshakes: %s reached; "
                           "closed at once", peer_text(peer), over)
            _close_quietly(conn)
            return False
        try:
            conn.setblocking(True)
            thread = threading.Thread(target=self._connection, args=(conn, peer, source),
                                      name=f"linkgate-{peer_text(peer)}", daemon=True)
            thread.start()
        except Exception as err:  # e.g. RuntimeError: can't start new thread
            logger.error("cannot handle a connection from %s: %s", peer_text(peer), err)
            self._handshake_done(source)
            _close_quietly(conn)
            return False
        return True

    def _handshake_done(self, source: str) -> None:
        with self._lock:
            self._handshakes -= 1
            left = self._per_source[source] - 1
            if left:
                self._per_source[source] = left
            else:
                del self._per_source[source]

    def _connection(self, conn: socket.socket, peer, source: str) -> None:
        where = peer_text(peer)
        try:
            try:
                try:
                    stream, key_id = _admit(conn, self._keyring, self._policy,
                                            _io.Deadline(self._timeout))
                finally:
                    self._handshake_done(source)
            except LinkgateError as err:
                logger.info("connection rejected peer=%s reason=%s: %s", where, err.reason, err)
                _close_quietly(conn)
                return
            except Exception:
                logger.exception("handshake failed peer=%s", where)
                _abort(conn)
                return
            mode = getattr(stream, "mode", PLAIN)
            logger.info("admitted peer=%s key_id=%s mode=%s", where, key_id, mode)
            try:
                self._handler(stream, key_id)
            except (LinkgateError, OSError) as err:
                reason = getattr(err, "reason", "io")
                logger.info("closed after an error peer=%s key_id=%s reason=%s: %s", where,
                            key_id, reason, err)
                _abort(stream)
            except Exception:
                logger.exception("the handler failed peer=%s key_id=%s", where, key_id)
                _abort(stream)
            else:
                _close_quietly(stream)
                logger.debug("closed peer=%s key_id=%s", where, key_id)
        finally:
            if self._connections is not None:
                self._connections.release()


def serve(handler: Handler, host: Optional[str], port: int, keyring, **options) -> Server:
    """Starts a threaded linkgate/1 server on ``host:port`` (port 0: any free port, see
    ``server.port``) and returns it, already accepting in a background thread.

    ``handler(stream, key_id)`` runs in the connection's own thread for every admitted client.
    Options: ``timeout`` (5 s per handshake), ``allow_plain``, ``require_forward_secrecy``,
    ``max_handshakes`` (1024), ``max_handshakes_per_source`` (64), ``max_connections``
    (unbounded), ``backlog``. See :class:`Server`. Stop it with ``server.close()``; block on it
    with ``server.serve_forever()``::

        server = linkgate.serve(echo, "0.0.0.0", 7700, linkgate.load_keyring("keys/"))
        server.serve_forever()
    """
    return Server(handler, host, port, keyring, **options).start()
