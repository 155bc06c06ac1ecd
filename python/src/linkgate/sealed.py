"""The sealed stream over a blocking socket: :class:`SealedSocket`."""

from __future__ import annotations

import errno
import io
import socket
import struct
import threading
from typing import Optional

from .errors import (LinkgateError, NetworkError, RecordError, Timeout, Truncated,
                     network_error)
from .record import MAX_DATA_LEN, RecordLayer

__all__ = ["SealedSocket"]

# Ciphertext read per recv call, and plaintext sealed per sendall call, at most.
_READ_CHUNK = 4 * (MAX_DATA_LEN + 22)
_WRITE_CHUNK = 4 * MAX_DATA_LEN
_DURING = "in the sealed stream"


def reset(sock: socket.socket) -> None:
    """Closes ``sock`` with SO_LINGER 0, so the peer sees a reset (not a clean end)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class SealedSocket:
    """A socket-like object for a sealed session (modes ``sealed`` and ``sealed-fs``).

    ``send``/``sendall`` seal bytes into records of at most 16384 bytes; ``recv`` opens them.
    ``recv`` returns ``b""`` only after the peer's close_notify: a connection cut without it
    raises :class:`Truncated`, and a tampered, reordered, dropped or injected record raises
    :class:`RecordError` (nothing of it is returned, and the connection is reset so that the
    peer sees an error too). ``shutdown(socket.SHUT_WR)`` sends close_notify and then shuts down
    the TCP write half: the peer sees a clean end of this direction, and the other direction
    keeps flowing. ``close()`` sends close_notify too if it was not sent yet; ``abort()`` resets
    the connection instead. As a context manager, a ``with`` block that raises aborts.

    One thread may receive while another sends. Blocking and timeout modes are supported
    (``settimeout``); a ``recv`` that times out raises :class:`Timeout` and can be retried, a
    ``send`` that times out part-way through a record breaks the stream. In non-blocking mode a
    ``recv`` with no whole record in yet raises ``BlockingIOError`` and can be retried (check
    :meth:`pending` before waiting in ``select``); sending needs blocking or timeout mode.

    Attributes: ``key_id`` (the id admitted), ``mode`` (``"sealed"`` or ``"sealed-fs"``),
    ``socket`` (the TCP socket underneath: never read or write it directly).
    """

    def __init__(self, sock: socket.socket, layer: RecordLayer, key_id: str, mode: str):
        self.socket = sock
        self.key_id = key_id
        self.mode = mode
        self._layer = layer
        self._plain = bytearray()
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._failure: Optional[LinkgateError] = None
        self._write_shut = False
        self._closed = False

    def __repr__(self) -> str:
        try:
            peer = "%s:%s" % self.socket.getpeername()[:2]
        except (OSError, TypeError):
            peer = "?"
        state = " closed" if self._closed else (" failed" if self._failure else "")
        return f"<SealedSocket key_id={self.key_id} mode={self.mode} peer={peer}{state}>"

    # --- failure --------------------------------------------------------------------------------

    def _fail(self, err: LinkgateError, other_lock: threading.Lock) -> None:
        """Remembers the failure and resets the connection (every later call raises ``err``)."""
        if self._failure is not None:
            return
        self._failure = err
        sock = self.socket
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        # A thread blocked on the other direction must wake up: shut the socket down first.
        idle = other_lock.acquire(blocking=False)
        try:
            if not idle:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            sock.close()
        finally:
            if idle:
                other_lock.release()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure.with_traceback(None)

    # --- receiving ------------------------------------------------------------------------------

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Up to ``bufsize`` bytes of plaintext; ``b""`` only after close_notify."""
        if flags:
            raise NetworkError("flags are not supported on a sealed socket", errno.EINVAL)
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        with self._read_lock:
            while True:
                if self._plain:
                    out = bytes(self._plain[:bufsize])
                    del self._plain[:bufsize]
                    return out
                self._raise_failure()
                if bufsize == 0 or self._layer.read_closed:
                    return b""
                self._fill()

    def _fill(self) -> None:
        """Reads ciphertext once and opens what it can (called with the read lock held)."""
        if self._closed:
            raise NetworkError("the sealed socket is closed", errno.EBADF)
        try:
            chunk = self.socket.recv(_READ_CHUNK)
        except socket.timeout as err:
            raise Timeout("timed out", self.socket.gettimeout()) from err
        except BlockingIOError:
            # Non-blocking mode, no whole record yet: what came so far stays buffered in the
            # record layer, and the caller retries once select says the socket is readable.
            raise
        except OSError as err:
            failure = network_error(err, _DURING)
            self._fail(failure, self._write_lock)
            raise failure from err
        if not chunk:
            try:
                self._layer.eof()
            except Truncated as err:
                self._fail(err, self._write_lock)
                raise
            return
        try:
            self._plain += self._layer.feed(chunk)
        except RecordError as err:
            self._fail(err, self._write_lock)
            raise
        if self._layer.error is not None:
            # Deliver the records before the failed one, then raise; reset the peer now.
            self._fail(self._layer.error, self._write_lock)

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        data = self.recv(nbytes or len(view), flags)
        view[:len(data)] = data
        return len(data)

    def pending(self) -> int:
        """Plaintext bytes already opened and not yet returned by recv (``select`` on the socket
        does not see them)."""
        return len(self._plain)

    # --- sending --------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        self._raise_failure()
        if self._closed:
            raise NetworkError("the sealed socket is closed", errno.EBADF)
        if self._write_shut:
            raise NetworkError("cannot send after shutdown: close_notify was sent", errno.EPIPE)
        if self.socket.gettimeout() == 0.0:
            # A record sent in part would break the stream: refuse before anything is sent.
            raise NetworkError("cannot send in non-blocking mode: use blocking or timeout mode "
                               "(settimeout) to send", errno.EINVAL)

    def _send_records(self, records: bytes) -> None:
        try:
            self.socket.sendall(records)
        except socket.timeout as err:
            timed_out = Timeout("timed out part-way through sending a record: the sealed "
                                "stream can no longer be used", self.socket.gettimeout())
            self._fail(timed_out, self._read_lock)
            raise timed_out from err
        except OSError as err:
            failure = network_error(err, _DURING)
            self._fail(failure, self._read_lock)
            raise failure from err

    def sendall(self, data, flags: int = 0) -> None:
        """Seals and sends all of ``data``."""
        if flags:
            raise NetworkError("flags are not supported on a sealed socket", errno.EINVAL)
        view = memoryview(data).cast("B")
        with self._write_lock:
            self._check_writable()
            for start in range(0, len(view), _WRITE_CHUNK):
                self._send_records(self._layer.seal(view[start:start + _WRITE_CHUNK]))

    def send(self, data, flags: int = 0) -> int:
        """Seals and sends up to 64 KiB of ``data``; returns how many bytes that was."""
        if flags:
            raise NetworkError("flags are not supported on a sealed socket", errno.EINVAL)
        view = memoryview(data).cast("B")[:_WRITE_CHUNK]
        with self._write_lock:
            self._check_writable()
            if len(view):
                self._send_records(self._layer.seal(view))
            return len(view)

    # --- ending ---------------------------------------------------------------------------------

    def shutdown(self, how: int) -> None:
        """``SHUT_WR`` (or ``SHUT_RDWR``): send close_notify, then shut the TCP write half down."""
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            with self._write_lock:
                self._raise_failure()
                if self._closed:
                    raise NetworkError("the sealed socket is closed", errno.EBADF)
                if not self._write_shut:
                    # close_notify is one small record: in non-blocking mode it may wait up to
                    # a second for room rather than go out in part.
                    saved = self.socket.gettimeout()
                    if saved == 0.0:
                        self.socket.settimeout(1.0)
                    try:
                        self._send_records(self._layer.close_notify())
                    finally:
                        if saved == 0.0 and self._failure is None:
                            self.socket.settimeout(saved)
                    self._write_shut = True
        try:
            self.socket.shutdown(how)
        except OSError as err:
            raise network_error(err, _DURING) from err

    def close(self) -> None:
        """Closes the connection; sends close_notify first if it was not sent yet (best effort,
        waiting at most a second for room in the send buffer)."""
        if self._closed:
            return
        self._closed = True
        if self._failure is None and not self._write_shut and self._write_lock.acquire(False):
            try:
                saved = self.socket.gettimeout()
                self.socket.settimeout(1.0 if not saved else min(saved, 1.0))
                self.socket.sendall(self._layer.close_notify())
                self._write_shut = True
            except OSError:
                pass
            finally:
                self._write_lock.release()
        self.socket.close()

    def abort(self) -> None:
        """Resets the connection (SO_LINGER 0) without close_notify: the peer sees an error,
        never a clean end."""
        self._closed = True
        reset(self.socket)

    def __enter__(self) -> "SealedSocket":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    # --- the socket underneath ------------------------------------------------------------------

    def fileno(self) -> int:
        return self.socket.fileno()

    def getpeername(self):
        return self.socket.getpeername()

    def getsockname(self):
        return self.socket.getsockname()

    def settimeout(self, timeout: Optional[float]) -> None:
        if self._failure is None:  # after a failure the socket is closed: nothing to set
            self.socket.settimeout(timeout)

    def gettimeout(self) -> Optional[float]:
        return self.socket.gettimeout()

    def setblocking(self, flag: bool) -> None:
        if self._failure is None:
            self.socket.setblocking(flag)

    def setsockopt(self, *args) -> None:
        self.socket.setsockopt(*args)

    def getsockopt(self, *args):
        return self.socket.getsockopt(*args)

    @property
    def family(self):
        return self.socket.family

    @property
    def type(self):
        return self.socket.type

    @property
    def closed(self) -> bool:
        return self._closed

    def makefile(self, mode: str = "r", buffering: Optional[int] = None, *,
                 encoding: Optional[str] = None, errors: Optional[str] = None,
                 newline: Optional[str] = None):
        """A file object over the sealed stream, as ``socket.makefile`` gives (closing the file
        does not close the socket)."""
        if not set(mode) <= {"r", "w", "b"}:
            raise ValueError(f"invalid mode {mode!r} (only r, w, b allowed)")
        reading, writing, binary = "r" in mode, "w" in mode, "b" in mode
        if not reading and not writing:
            reading = True
        raw = _SealedIO(self, reading, writing)
        if buffering is None:
            buffering = -1
        if buffering < 0:
            buffering = io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            if not binary:
                raise ValueError("unbuffered streams must be binary")
            return raw
        buffered: io.BufferedIOBase
        if reading and writing:
            buffered = io.BufferedRWPair(raw, raw, buffering)
        elif reading:
            buffered = io.BufferedReader(raw, buffering)
        else:
            buffered = io.BufferedWriter(raw, buffering)
        if binary:
            return buffered
        # Any buffered stream works at run time (socket.makefile does the same); typeshed's
        # protocol for the buffer asks for attributes BufferedRWPair does not have.
        text = io.TextIOWrapper(buffered, encoding, errors, newline)  # type: ignore[type-var]
        text.mode = mode  # type: ignore[misc]
        return text


class _SealedIO(io.RawIOBase):
    def __init__(self, sock: SealedSocket, reading: bool, writing: bool):
        super().__init__()
        self._sock = sock
        self._reading = reading
        self._writing = writing

    def readinto(self, buffer) -> int:
        return self._sock.recv_into(buffer)

    def write(self, data) -> int:
        self._sock.sendall(data)
        return len(memoryview(data))

    def readable(self) -> bool:
        return self._reading

    def writable(self) -> bool:
        return self._writing

    def fileno(self) -> int:
        return self._sock.fileno()
