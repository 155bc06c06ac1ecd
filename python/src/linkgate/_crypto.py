"""The sealed modes' primitives from the ``cryptography`` package, imported only when needed:
plain mode and the seed scheme work with the standard library alone."""

from __future__ import annotations

from typing import Any, Optional, Tuple

from .errors import CryptographyMissing, KeyExchangeFailed

_loaded: Optional[Tuple[Any, Any, Any, Any, Any, Any, Any]] = None
_import_error: Optional[ImportError] = None


def _load():
    global _loaded, _import_error
    if _loaded is None and _import_error is None:
        try:
            from cryptography.hazmat.primitives.asymmetric.x25519 import (
                X25519PrivateKey, X25519PublicKey)
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            from cryptography.hazmat.primitives.hashes import SHA256
            from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
            from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
        except ImportError as err:
            _import_error = err
        else:
            _loaded = (AESGCM, X25519PrivateKey, X25519PublicKey, Encoding, PublicFormat,
                       HKDFExpand, SHA256)
    return _loaded


def available() -> bool:
    """True when the sealed modes can be used (``cryptography`` is installed)."""
    return _load() is not None


def require(mode: str, server: bool = False) -> None:
    """Raises CryptographyMissing (chained to the ImportError) unless the sealed modes work."""
    if _load() is None:
        raise CryptographyMissing(mode, server) from _import_error


def aesgcm(key: bytes):
    """An AES-256-GCM object for ``key``."""
    loaded = _load()
    if loaded is None:
        raise CryptographyMissing("sealed") from _import_error
    return loaded[0](key)


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand with SHA-256 (RFC 5869), from ``cryptography``."""
    loaded = _load()
    if loaded is None:
        raise CryptographyMissing("sealed") from _import_error
    hkdf_expand_cls, sha256 = loaded[5], loaded[6]
    return hkdf_expand_cls(sha256(), length, bytes(info)).derive(bytes(prk))


class Ephemeral:
    """A one-handshake X25519 secret."""

    __slots__ = ("_private", "public")

    def __init__(self, private_bytes: Optional[bytes] = None):
        loaded = _load()
        if loaded is None:
            raise CryptographyMissing("sealed-fs") from _import_error
        _, private_cls, _, encoding, public_format = loaded[:5]
        if private_bytes is None:
            self._private = private_cls.generate()
        else:
            self._private = private_cls.from_private_bytes(private_bytes)
        self.public = self._private.public_key().public_bytes(encoding.Raw, public_format.Raw)

    def __repr__(self) -> str:
        return "Ephemeral(..)"

    def agree(self, peer_public: bytes, whose: str) -> bytes:
        """X25519(secret, peer_public); KeyExchangeFailed on an all-zero output."""
        public_cls = _load()[2]  # type: ignore[index]
        try:
            shared = self._private.exchange(public_cls.from_public_bytes(bytes(peer_public)))
        except ValueError as err:
            raise KeyExchangeFailed(
                f"key exchange failed: the {whose}'s public key is invalid") from err
        if shared == bytes(len(shared)):
            raise KeyExchangeFailed(f"key exchange failed: the {whose}'s public key is invalid")
        return shared
