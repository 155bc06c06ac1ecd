"""linkgate/1 for asyncio, mirroring ``asyncio.open_connection`` and ``asyncio.start_server``.

Client::

    reader, writer = await linkgate.aio.open_connection("gate.example", 7700, key)
    writer.write(b"hello")
    await writer.drain()

Server::

    async def handler(reader, writer, key_id):
        async for line in reader:
            writer.write(line)
            await writer.drain()
        writer.close()                     # close_notify: a clean end

    server = await linkgate.aio.start_server(handler, "0.0.0.0", 7700, keyring)
    async with server:
        await server.serve_forever()

In plain mode the reader and writer are asyncio's own. In the sealed modes they are
:class:`SealedStreamReader` and :class:`SealedStreamWriter`, with the same methods (``read``,
``readexactly``, ``readline``, ``readuntil``, ``write``, ``drain``, ``write_eof``, ``close``,
``wait_closed``, ``get_extra_info``, ...): ``write_eof()`` sends close_notify, ``read()`` returns
``b""`` only after the peer's close_notify, and a truncated or tampered stream raises a
:class:`~linkgate.RecordError` and resets the connection.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import os
import socket
import struct
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, Union

from . import _crypto, _io
from .errors import (ClosedEarly, ConnectionRefused, ImpostorServer, InvalidArgument,
                     LinkgateError, NetworkError, RecordError, Truncated, network_error)
from .keys import Key, credentials, normalize_keyring
from .protocol import (CHALLENGE_LEN, MAGIC, NONCE_LEN, PLAIN, RESPONSE_HEAD_LEN, SEALED_FS,
                       ClientHandshake, Judgement, Policy, check_mode, encode_challenge,
                       greeting_matches_so_far, judge, not_linkgate, refuse_head,
                       response_remaining_len)
from .record import MAX_DATA_LEN, RecordLayer
from .server import peer_text, source_of

__all__ = ["open_connection", "authenticate", "admit", "start_server", "SealedStreamReader",
           "SealedStreamWriter"]

logger = logging.getLogger("linkgate")

_READ_CHUNK = 4 * (MAX_DATA_LEN + 22)
_DEFAULT_LIMIT = 2 ** 16
_DURING = "in the sealed stream"

Reader = Union[asyncio.StreamReader, "SealedStreamReader"]
Writer = Union[asyncio.StreamWriter, "SealedStreamWriter"]


# --- the sealed stream --------------------------------------------------------------------------

class _SealedConnection:
    """What a sealed reader and writer share: the record layer and the streams underneath."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 layer: RecordLayer, key_id: str, mode: str):
        self.reader = reader
        self.writer = writer
        self.layer = layer
        self.key_id = key_id
        self.mode = mode
        self.failure: Optional[LinkgateError] = None
        # Closed (or aborted) by our own writer: a read waiting on the stream then ends, as on
        # a plain asyncio stream, rather than report the peer for a cut it did not make.
        self.closed_locally = False

    def fail(self, err: LinkgateError) -> None:
        """Remembers the failure and resets the connection."""
        if self.failure is None:
            self.failure = err
            self.reset()

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure.with_traceback(None)

    def reset(self) -> None:
        """Aborts the connection with SO_LINGER 0: the peer sees a reset, never a clean end."""
        _reset(self.writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class SealedStreamReader:
    """The reading half of a sealed session, with ``asyncio.StreamReader``'s reading methods.

    ``read()`` returns ``b""`` (and ``at_eof()`` is true) only after the peer's close_notify.
    A connection cut without it raises :class:`~linkgate.Truncated`; a record that fails raises
    :class:`~linkgate.RecordError`: nothing of it is returned, and the connection is reset.
    """

    def __init__(self, conn: _SealedConnection, limit: int = _DEFAULT_LIMIT):
        self._conn = conn
        self._limit = limit
        self._buffer = bytearray()
        self._waiting = False

    def __repr__(self) -> str:
        return f"<SealedStreamReader key_id={self.key_id} mode={self.mode}>"

    @property
    def key_id(self) -> str:
        return self._conn.key_id

    @property
    def mode(self) -> str:
        return self._conn.mode

    def exception(self) -> Optional[BaseException]:
        return self._conn.failure

    def at_eof(self) -> bool:
        """True once close_notify was received and everything before it was read."""
        return not self._buffer and self._conn.layer.read_closed

    async def _fill(self) -> bool:
        """Reads until at least one more byte of plaintext is buffered: True, or False at the
        end of the stream (close_notify)."""
        conn = self._conn
        conn.raise_failure()
        if conn.layer.read_closed:
            return False
        if self._waiting:
            raise RuntimeError("another coroutine is already waiting for data from this reader")
        self._waiting = True
        try:
            while True:
                try:
                    chunk = await conn.reader.read(_READ_CHUNK)
                except (ConnectionError, OSError) as err:
                    conn.raise_failure()
                    if conn.closed_locally:
                        return False
                    failure = network_error(err, _DURING)
                    conn.fail(failure)
                    raise failure from err
                conn.raise_failure()
                if not chunk:
                    if conn.closed_locally:
                        return False
                    try:
                        conn.layer.eof()
                    except Truncated as err:
                        conn.fail(err)
                        raise
                    return False
                try:
                    data = conn.layer.feed(chunk)
                except RecordError as err:
                    conn.fail(err)
                    raise
                if conn.layer.error is not None:
                    # Deliver the records before the failed one, then raise; reset the peer now.
                    conn.fail(conn.layer.error)
                if data:
                    self._buffer += data
                    return True
                if conn.layer.read_closed:
                    return False
        finally:
            self._waiting = False

    def _take(self, n: int) -> bytes:
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all of them until close_notify if ``n`` is -1); ``b""`` at the
        end."""
        if n == 0:
            return b""
        if n < 0:
            while await self._fill():
                pass
            return self._take(len(self._buffer))
        if not self._buffer:
            await self._fill()
        return self._take(n)

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; ``asyncio.IncompleteReadError`` if the stream ends first."""
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        while len(self._buffer) < n:
            if not await self._fill():
                partial = self._take(len(self._buffer))
                raise asyncio.IncompleteReadError(partial, n)
        return self._take(n)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """Bytes up to and including ``separator``, as ``StreamReader.readuntil``."""
        seplen = len(separator)
        if seplen == 0:
            raise ValueError("Separator should be at least one-byte string")
        offset = 0
        while True:
            index = self._buffer.find(separator, offset)
            if index != -1:
                end = index + seplen
                if end > self._limit:
                    raise asyncio.LimitOverrunError(
                        "Separator is found, but chunk is longer than limit", index)
                return self._take(end)
            offset = max(0, len(self._buffer) + 1 - seplen)
            if offset > self._limit:
                raise asyncio.LimitOverrunError(
                    "Separator is not found, and chunk exceed the limit", offset)
            if not await self._fill():
                partial = self._take(len(self._buffer))
                raise asyncio.IncompleteReadError(partial, None)

    async def readline(self) -> bytes:
        """One line (up to and including ``\\n``), or what is left at the end."""
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as err:
            return err.partial
        except asyncio.LimitOverrunError as err:
            if self._buffer.startswith(b"\n", err.consumed):
                del self._buffer[:err.consumed + 1]
            else:
                self._buffer.clear()
            raise ValueError(err.args[0]) from None

    def __aiter__(self) -> "SealedStreamReader":
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if line == b"":
            raise StopAsyncIteration
        return line


class SealedStreamWriter:
    """The writing half of a sealed session, with ``asyncio.StreamWriter``'s methods.

    ``write`` seals (records of at most 16384 bytes); ``write_eof()`` sends close_notify and
    shuts the TCP write half down (the other direction keeps flowing); ``close()`` sends
    close_notify first if it was not sent yet; ``abort()`` resets the connection instead.
    ``transport`` is the TCP transport underneath: never write to it directly.
    """

    def __init__(self, conn: _SealedConnection):
        self._conn = conn

    def __repr__(self) -> str:
        return f"<SealedStreamWriter key_id={self.key_id} mode={self.mode}>"

    @property
    def key_id(self) -> str:
        return self._conn.key_id

    @property
    def mode(self) -> str:
        return self._conn.mode

    @property
    def transport(self) -> asyncio.Transport:
        return self._conn.writer.transport  # type: ignore[return-value]

    def _check_writable(self) -> None:
        self._conn.raise_failure()
        if self._conn.layer.write_closed:
            raise NetworkError("cannot write after write_eof: close_notify was sent",
                               errno.EPIPE)

    def write(self, data) -> None:
        self._check_writable()
        if data:
            self._conn.writer.write(self._conn.layer.seal(data))

    def writelines(self, data) -> None:
        self.write(b"".join(data))

    def can_write_eof(self) -> bool:
        return self._conn.writer.can_write_eof()

    def write_eof(self) -> None:
        """Sends close_notify, then shuts the TCP write half down."""
        self._conn.raise_failure()
        if not self._conn.layer.write_closed:
            self._conn.writer.write(self._conn.layer.close_notify())
        self._conn.writer.write_eof()

    async def drain(self) -> None:
        conn = self._conn
        conn.raise_failure()
        try:
            await conn.writer.drain()
        except (ConnectionError, OSError) as err:
            conn.raise_failure()
            failure = network_error(err, _DURING)
            conn.fail(failure)
            raise failure from err

    def close(self) -> None:
        """Closes the connection, sending close_notify first if it was not sent yet. A read
        waiting in another task then ends (``b""``), as on a plain asyncio stream."""
        conn = self._conn
        conn.closed_locally = True
        if conn.failure is None and not conn.layer.write_closed and not self.is_closing():
            try:
                conn.writer.write(conn.layer.close_notify())
            except Exception:  # the transport may already be gone
                pass
        conn.writer.close()

    def abort(self) -> None:
        """Resets the connection without close_notify."""
        self._conn.closed_locally = True
        self._conn.reset()

    def is_closing(self) -> bool:
        return self._conn.writer.is_closing()

    async def wait_closed(self) -> None:
        try:
            await self._conn.writer.wait_closed()
        except (ConnectionError, OSError) as err:
            if self._conn.failure is None:
                raise network_error(err, _DURING) from err

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._conn.writer.get_extra_info(name, default)


def _sealed(reader, writer, secrets, side: str, key_id: str, mode: str, limit: int):
    conn = _SealedConnection(reader, writer, RecordLayer.for_side(secrets, side), key_id, mode)
    return SealedStreamReader(conn, limit), SealedStreamWriter(conn)


# --- handshakes ---------------------------------------------------------------------------------

async def _guarded(coro, budget: Optional[float], setting: Optional[float], waiting: List[str]):
    """Runs a handshake within ``budget`` seconds, translating every failure into a
    LinkgateError (a timeout's message names the ``setting``, not the time that was left)."""
    try:
        if budget is None:
            return await coro
        if budget <= 0:
            coro.close()
            raise asyncio.TimeoutError()
        return await asyncio.wait_for(coro, budget)
    except LinkgateError:
        raise
    except asyncio.TimeoutError as err:
        raise _io.timeout_error(setting, waiting[0]) from err
    except asyncio.IncompleteReadError as err:
        raise ClosedEarly() from err
    except (ConnectionError, OSError) as err:
        raise network_error(err, "during the handshake") from err


async def _client_handshake(reader, writer, handshake: ClientHandshake, waiting: List[str]):
    data = b""
    while len(data) < CHALLENGE_LEN:
        chunk = await reader.read(CHALLENGE_LEN - len(data))
        if not chunk:
            if data and not greeting_matches_so_far(data):
                raise not_linkgate(data)
            raise ClosedEarly()
        data += chunk
        if not greeting_matches_so_far(data):
            raise not_linkgate(data)
    writer.write(handshake.response(data[len(MAGIC):]))
    await writer.drain()
    waiting[0] = _io.VERDICT
    first = await reader.readexactly(1)
    handshake.check_verdict_byte(first[0])
    try:
        rest = await reader.readexactly(handshake.admitted_verdict_len - 1)
    except asyncio.IncompleteReadError:
        raise ImpostorServer() from None
    return handshake.finish(first + rest)


async def _authenticate(reader, writer, key: Key, mode: str, timeout: Optional[float],
                        limit: int):
    handshake = ClientHandshake(key.id, key.secret, mode)
    waiting = [_io.CHALLENGE]
    secrets = await _guarded(_client_handshake(reader, writer, handshake, waiting), timeout,
                             timeout, waiting)
    if secrets is None:
        return reader, writer
    return _sealed(reader, writer, secrets, "client", key.id, mode, limit)


async def authenticate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key_id,
                       key: Optional[bytes] = None, *, mode: str = SEALED_FS,
                       timeout: Optional[float] = 5.0,
                       limit: int = _DEFAULT_LIMIT) -> Tuple[Reader, Writer]:
    """Runs the client's half of linkgate/1 over a connected (reader, writer) pair and returns
    the pair to use from then on: the same objects in plain mode, a sealed pair in the sealed
    modes. ``key_id, key`` as for :func:`linkgate.connect` (or a Key alone). Raises the same
    LinkgateErrors as :func:`linkgate.authenticate`; the connection is left open on failure."""
    mode = check_mode(mode)
    return await _authenticate(reader, writer, credentials(key_id, key), mode,
                               _io.check_timeout(timeout), limit)


async def open_connection(host=None, port=None, key_id=None, key: Optional[bytes] = None, *,
                          mode: str = SEALED_FS, timeout: Optional[float] = 5.0,
                          **kwargs) -> Tuple[Reader, Writer]:
    """Connects like ``asyncio.open_connection(host, port, **kwargs)`` and authenticates,
    asking for ``mode`` (default ``"sealed-fs"``); ``timeout`` covers both. Returns
    ``(reader, writer)``. Every failure is a LinkgateError (ConnectionRefused, NetworkError,
    HandshakeTimeout, Denied, ...); the connection is closed on failure."""
    key_obj = credentials(key_id, key)
    mode = check_mode(mode)
    if mode != PLAIN:
        _crypto.require(mode)
    deadline = _io.Deadline(timeout)
    try:
        connecting = asyncio.open_connection(host, port, **kwargs)
        if deadline.timeout is None:
            reader, writer = await connecting
        else:
            reader, writer = await asyncio.wait_for(connecting, deadline.timeout)
    except asyncio.TimeoutError as err:
        raise _io.timeout_error(deadline.timeout, _io.CONNECT) from err
    except ConnectionRefusedError as err:
        raise ConnectionRefused(f"cannot connect to {host}:{port}: connection refused (is the "
                                "gate running and listening there?)", err.errno) from err
    except OSError as err:
        raise NetworkError(f"cannot connect to {host}:{port}: {err.strerror or err}",
                           err.errno) from err
    waiting = [_io.CHALLENGE]
    try:
        handshake = ClientHandshake(key_obj.id, key_obj.secret, mode)
        secrets = await _guarded(_client_handshake(reader, writer, handshake, waiting),
                                 deadline.remaining(), deadline.timeout, waiting)
    except BaseException:
        writer.close()
        raise
    limit = kwargs.get("limit", _DEFAULT_LIMIT)
    if secrets is None:
        return reader, writer
    return _sealed(reader, writer, secrets, "client", key_obj.id, mode, limit)


async def _refuse(writer: asyncio.StreamWriter, verdict: bytes) -> None:
    try:
        writer.write(verdict)
        if writer.can_write_eof():
            writer.write_eof()
        await writer.drain()
    except (ConnectionError, OSError):
        pass


async def _server_handshake(reader, writer, keyring: Dict[str, bytes],
                            policy: Policy) -> Judgement:
    server_nonce = os.urandom(NONCE_LEN)
    writer.write(encode_challenge(server_nonce))
    await writer.drain()
    head = await reader.readexactly(RESPONSE_HEAD_LEN)
    bad_head = refuse_head(head)
    if bad_head is not None:
        await _refuse(writer, bad_head.verdict)  # type: ignore[attr-defined]
        raise bad_head
    rest = await reader.readexactly(response_remaining_len(head))
    try:
        judged = judge(head + rest, server_nonce, keyring, policy)
    except LinkgateError as refusal:
        await _refuse(writer, refusal.verdict)  # type: ignore[attr-defined]
        raise
    writer.write(judged.verdict)
    await writer.drain()
    return judged


async def _admit(reader, writer, keyring: Dict[str, bytes], policy: Policy,
                 timeout: Optional[float], limit: int):
    waiting = [_io.RESPONSE]
    judged = await _guarded(_server_handshake(reader, writer, keyring, policy), timeout,
                            timeout, waiting)
    if judged.secrets is None:
        return reader, writer, judged.key_id
    sealed_reader, sealed_writer = _sealed(reader, writer, judged.secrets, "server",
                                           judged.key_id, judged.mode, limit)
    return sealed_reader, sealed_writer, judged.key_id


async def admit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, keyring, *,
                timeout: Optional[float] = 5.0, allow_plain: bool = False,
                require_forward_secrecy: bool = False,
                limit: int = _DEFAULT_LIMIT) -> Tuple[Reader, Writer, str]:
    """Runs the server's half of linkgate/1 over an accepted (reader, writer) pair; returns
    ``(reader, writer, key_id)``, the pair being sealed in the sealed modes. Raises the same
    LinkgateErrors as :func:`linkgate.admit` (the client has been sent what the protocol says);
    close the writer afterwards."""
    policy = Policy(allow_plain, require_forward_secrecy)
    policy.check_usable()
    return await _admit(reader, writer, normalize_keyring(keyring), policy,
                        _io.check_timeout(timeout), limit)


class _Bounds:
    """Handshakes in progress, globally and per source."""

    def __init__(self, total: int, per_source: int):
        if int(total) < 1 or int(per_source) < 1:
            raise InvalidArgument("max_handshakes and max_handshakes_per_source must be at "
                                  "least 1")
        self.total = int(total)
        self.per_source = int(per_source)
        self.in_progress = 0
        self.by_source: Dict[str, int] = {}

    def enter(self, source: str) -> Optional[str]:
        """None if a handshake may start (and counts it), else the bound reached."""
        if self.in_progress >= self.total:
            return f"max_handshakes={self.total}"
        if self.by_source.get(source, 0) >= self.per_source:
            return f"max_handshakes_per_source={self.per_source}"
        self.in_progress += 1
        self.by_source[source] = self.by_source.get(source, 0) + 1
        return None

    def leave(self, source: str) -> None:
        self.in_progress -= 1
        left = self.by_source[source] - 1
        if left:
            self.by_source[source] = left
        else:
            del self.by_source[source]


Handler = Callable[[Reader, Writer, str], Optional[Awaitable[None]]]


async def start_server(handler: Handler, host=None, port=None, keyring=None, *,
                       timeout: Optional[float] = 5.0, allow_plain: bool = False,
                       require_forward_secrecy: bool = False, max_handshakes: int = 1024,
                       max_handshakes_per_source: int = 64, **kwargs) -> asyncio.AbstractServer:
    """Starts a linkgate/1 server like ``asyncio.start_server(cb, host, port, **kwargs)`` and
    returns the ``asyncio.Server``.

    ``handler(reader, writer, key_id)`` (a coroutine function, or a plain function) is called
    for every admitted client; each handshake runs in the connection's own task with
    ``timeout``, so no peer delays another. Handshakes in progress are bounded globally
    (``max_handshakes``) and per source (``max_handshakes_per_source``: an IPv4 address or an
    IPv6 /64); past either bound a new connection is closed at once. Plain mode is refused
    unless ``allow_plain``; ``require_forward_secrecy`` refuses mode sealed. Refusals and
    admissions are logged to the ``linkgate`` logger. As with asyncio, the handler closes the
    writer when it is done (``close()`` or ``write_eof()`` sends close_notify); if it raises,
    the connection is reset.
    """
    if keyring is None:
        raise InvalidArgument("start_server needs a keyring (e.g. linkgate.load_keyring(...))")
    keys = normalize_keyring(keyring)
    if not keys:
        raise InvalidArgument("the keyring is empty")
    policy = Policy(allow_plain, require_forward_secrecy)
    policy.check_usable()
    timeout = _io.check_timeout(timeout)
    bounds = _Bounds(max_handshakes, max_handshakes_per_source)
    limit = kwargs.get("limit", _DEFAULT_LIMIT)

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        where = peer_text(peer)
        source = source_of(peer) if peer else "?"
        over = bounds.enter(source)
        if over is not None:
            logger.warning("connection rejected peer=%s reason=too_many_handshakes: %s "
                           "reached; closed at once", where, over)
            writer.close()
            return
        try:
            try:
                stream_reader, stream_writer, key_id = await _admit(reader, writer, keys,
                                                                    policy, timeout, limit)
            finally:
                bounds.leave(source)
        except LinkgateError as err:
            logger.info("connection rejected peer=%s reason=%s: %s", where, err.reason, err)
            writer.close()
            return
        except Exception:
            logger.exception("handshake failed peer=%s", where)
            _reset(writer)
            return
        mode = getattr(stream_writer, "mode", PLAIN)
        logger.info("admitted peer=%s key_id=%s mode=%s", where, key_id, mode)
        try:
            result = handler(stream_reader, stream_writer, key_id)
            if inspect.isawaitable(result):
                await result
        except (LinkgateError, OSError) as err:
            logger.info("closed after an error peer=%s key_id=%s reason=%s: %s", where, key_id,
                        getattr(err, "reason", "io"), err)
            _reset(writer)
        except Exception:
            logger.exception("the handler failed peer=%s key_id=%s", where, key_id)
            _reset(writer)

    return await asyncio.start_server(connected, host, port, **kwargs)
