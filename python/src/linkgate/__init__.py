"""linkgate/1 for Python: the client and server halves of the handshake, the sealed modes, a
threaded server, asyncio, key files, and the original recipe's ``seed`` scheme.

Plain mode and the seed scheme need only the standard library (Python 3.8+); the sealed modes
(``"sealed"`` and the default ``"sealed-fs"``) need ``cryptography``:
``pip install "linkgate[sealed]"``.

Client::

    import linkgate
    key = linkgate.load_key("alice.key")                  # Key(id="alice", secret=...)
    with linkgate.connect(("gate.example", 7700), key) as stream:
        stream.sendall(b"hello")                          # sealed, with forward secrecy

Server (each handshake in its own thread; bad peers delay no one)::

    def echo(stream, key_id):
        while data := stream.recv(65536):
            stream.sendall(data)

    server = linkgate.serve(echo, "0.0.0.0", 7700, linkgate.load_keyring("keys/"))
    server.serve_forever()

asyncio: :mod:`linkgate.aio` (``open_connection``, ``start_server``). The wire format is
specified in PROTOCOL.md at the root of the linkgate repository.
"""

from . import aio
from .client import authenticate, connect
from .errors import (ClosedEarly, ConnectionRefused, CryptographyMissing, Denied,
                     HandshakeTimeout, ImpostorServer, InvalidArgument, KeyExchangeFailed,
                     KeyFileError, LinkgateError, Malformed, MalformedVerdict, ModeNotAllowed,
                     NetworkError, NotLinkgate, PeerReset, RecordError, RefusedAsMalformed,
                     Timeout, Truncated)
from .keys import (MAX_KEY_LEN, MIN_KEY_LEN, Key, Keyring, generate_key, load_key, load_keyring,
                   load_seed_key)
from .protocol import (MAGIC, MODES, PLAIN, SEALED, SEALED_FS, client_proof, encode_response,
                       server_proof)
from .sealed import SealedSocket
from .seed import seed_admit, seed_answer, seed_authenticate
from .server import Admission, Server, admit, serve
from ._crypto import available as sealed_modes_available

__version__ = "0.2.0"

__all__ = [
    # client and server
    "connect", "authenticate", "admit", "Admission", "serve", "Server", "SealedSocket", "aio",
    # keys
    "Key", "Keyring", "load_key", "load_keyring", "load_seed_key", "generate_key",
    # modes and protocol
    "PLAIN", "SEALED", "SEALED_FS", "MODES", "MAGIC", "MIN_KEY_LEN", "MAX_KEY_LEN",
    "client_proof", "server_proof", "encode_response", "sealed_modes_available",
    # errors
    "LinkgateError", "Denied", "ImpostorServer", "NotLinkgate", "MalformedVerdict",
    "RefusedAsMalformed", "Malformed", "ModeNotAllowed", "KeyExchangeFailed", "ClosedEarly",
    "Timeout", "HandshakeTimeout", "NetworkError", "PeerReset", "ConnectionRefused",
    "RecordError", "Truncated", "KeyFileError", "InvalidArgument", "CryptographyMissing",
    # the recipe's scheme
    "seed_answer", "seed_authenticate", "seed_admit",
]
