"""Keys, key ids and key files, with the same rules as the Rust side.

A key file holds one key, as one line of hex (what ``linkgate keygen`` writes), one line of
standard base64 (padding optional), or 32 to 64 raw bytes that are not text (spiped's format);
the first format that fits wins. Surrounding whitespace is ignored in the text forms. The key is
16 to 64 bytes (1 to 64 for the seed scheme). On POSIX a key file that group or others can access
is refused (as ssh does), and only regular files are read, so loading never blocks on a FIFO or
a device. The file's stem is the key id: ``alice.key`` holds the key of ``alice``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import stat
from pathlib import Path
from typing import Iterable, List, Mapping, NamedTuple, Optional, Union

from .errors import InvalidArgument, KeyFileError

__all__ = ["Key", "Keyring", "load_key", "load_seed_key", "load_keyring", "generate_key",
           "MIN_KEY_LEN", "MAX_KEY_LEN", "MAX_KEY_ID_LEN"]

MIN_KEY_LEN = 16
MAX_KEY_LEN = 64
MAX_KEY_ID_LEN = 64
#: Shortest raw binary key accepted (spiped's keys are usually 32 bytes).
MIN_RAW_KEY_LEN = 32
#: A key file larger than this is refused (a 64-byte key is 128 hex digits).
MAX_KEY_FILE_LEN = 4096

_KEY_ID = re.compile(rb"\A[A-Za-z0-9._-]{1,64}\Z")
_BASE64 = re.compile(rb"\A[A-Za-z0-9+/]*\Z")
_HEX = re.compile(rb"\A[0-9A-Fa-f]*\Z")
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
# base64's alphabet without padding: a hex line with one or two of these in place of digits is
# a typo, not a base64 key.
_BASE64_SYMBOLS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
# Rust's u8::is_ascii_whitespace: space, tab, newline, form feed, carriage return.
_WHITESPACE = b" \t\n\x0c\r"
_TEXT_BYTES = frozenset(range(0x21, 0x7F)) | frozenset(_WHITESPACE)

logger = logging.getLogger("linkgate")

PathLike = Union[str, "os.PathLike[str]"]


class Key(NamedTuple):
    """A key and the id it is registered under. Unpacks as ``key_id, secret = key``; its repr
    shows the id and the length, never the secret."""

    id: str
    secret: bytes

    def __repr__(self) -> str:
        return f"Key(id={self.id!r}, secret=<{len(self.secret)} bytes>)"

    # A method, not `__str__ = __repr__`: type checkers would take that for a third field.
    def __str__(self) -> str:
        return self.__repr__()


def check_key_id(key_id: str) -> bytes:
    """The key id's bytes, or InvalidArgument: 1 to 64 ASCII letters, digits, '.', '_' or '-'."""
    if not isinstance(key_id, str):
        raise InvalidArgument(f"a key id must be a str, not {type(key_id).__name__}")
    raw = key_id.encode("ascii", "replace")
    if not _KEY_ID.match(raw):
        raise InvalidArgument(
            f"invalid key id {key_id!r}: use 1 to 64 ASCII letters, digits, '.', '_' or '-'")
    return raw


def is_valid_key_id(raw: bytes) -> bool:
    return bool(_KEY_ID.match(raw))


def check_key(secret: bytes, min_len: int = MIN_KEY_LEN) -> bytes:
    """The key as bytes, or InvalidArgument if it is not min_len (16) to 64 bytes long."""
    if isinstance(secret, Key):
        secret = secret.secret
    if not isinstance(secret, (bytes, bytearray, memoryview)):
        raise InvalidArgument(f"a key must be bytes, not {type(secret).__name__}")
    secret = bytes(secret)
    if not min_len <= len(secret) <= MAX_KEY_LEN:
        raise InvalidArgument(
            f"a key must be {min_len} to {MAX_KEY_LEN} bytes long, this one has {len(secret)}")
    return secret


def credentials(key_id, key) -> Key:
    """``(key_id, key)`` as given to connect/authenticate: a Key alone (``key`` None), or an id
    and the key's bytes (or an id and a Key, whose own id the given one then replaces)."""
    if key is None:
        if isinstance(key_id, Key):
            check_key_id(key_id.id)
            return Key(key_id.id, check_key(key_id.secret))
        raise InvalidArgument("no key given: pass a Key (from load_key), or a key id and a key")
    if isinstance(key_id, Key):
        raise InvalidArgument("a Key already holds its id: pass it alone, without a second key")
    check_key_id(key_id)
    return Key(key_id, check_key(key))


def generate_key(key_id: str, length: int = 32) -> Key:
    """A fresh random key (32 bytes by default) for ``key_id``."""
    check_key_id(key_id)
    return Key(key_id, check_key(os.urandom(length)))


class Keyring(dict):
    """A dict of key id to key (what :func:`load_keyring` returns, and what servers keep), whose
    repr (and str) lists the ids only, so printing or logging a keyring never shows a key. Its
    copies are Keyrings too; ``dict(keyring)`` is a plain dict, and shows the keys."""

    def __repr__(self) -> str:
        return f"Keyring(ids={sorted(map(str, self))!r})"

    def __str__(self) -> str:
        return self.__repr__()

    def copy(self) -> "Keyring":
        return Keyring(self)


def normalize_keyring(keyring) -> Keyring:
    """A keyring given as a mapping of id to key bytes (or Key), or as an iterable of Keys, as
    a dict of id to bytes; every id and key is checked (InvalidArgument)."""
    if isinstance(keyring, Key):
        keyring = [keyring]
    items: Iterable
    if isinstance(keyring, Mapping):
        items = keyring.items()
    else:
        try:
            items = [(key.id, key.secret) for key in keyring]
        except (TypeError, AttributeError):
            raise InvalidArgument(
                "a keyring is a mapping of key id to key (load_keyring), or Keys") from None
    out = Keyring()
    for key_id, secret in items:
        check_key_id(key_id)
        try:
            out[key_id] = check_key(secret)
        except InvalidArgument as err:
            raise InvalidArgument(f"key {key_id}: {err}") from None
    return out


# --- key files ----------------------------------------------------------------------------------

def _problem(path, text: str) -> KeyFileError:
    err = KeyFileError(f"key file {path}: {text}", path=path)
    err.problem = text
    return err


def _id_from_path(path: Path) -> str:
    stem = path.stem
    if stem.startswith(".") or not _KEY_ID.match(stem.encode("ascii", "replace")):
        raise _problem(path, "the file name's stem is not a valid key id (use 1 to 64 ASCII "
                             "letters, digits, '.', '_', '-', not starting with '.')")
    return stem


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a plain file"


def _check_regular(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise _problem(path, f"not a regular file ({_kind(info.st_mode)}); a key file must be a "
                             "plain file")


def _read(path: Path, allow_open_permissions: bool) -> bytes:
    """A key file's bytes: a regular file only, never blocking, with the permission check."""
    def unreadable(err: OSError) -> KeyFileError:
        return _problem(path, f"cannot read: {err.strerror or err}")

    try:
        _check_regular(path, os.stat(path))
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags)
    except OSError as err:
        raise unreadable(err) from err
    try:
        info = os.fstat(fd)
        _check_regular(path, info)
        if os.name == "posix" and not allow_open_permissions and info.st_mode & 0o077:
            raise _problem(
                path, f"permissions {stat.S_IMODE(info.st_mode):04o} are too open: it is "
                      "accessible by group or others (run: chmod 600 on it)")
        chunks = []
        size = 0
        while size <= MAX_KEY_FILE_LEN:
            chunk = os.read(fd, MAX_KEY_FILE_LEN + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as err:
        raise unreadable(err) from err
    finally:
        os.close(fd)
    contents = b"".join(chunks)
    if len(contents) > MAX_KEY_FILE_LEN:
        raise _problem(path, "the file is too large to be a key file")
    return contents


def decode_key(contents: bytes) -> Optional[bytes]:
    """A key file's contents decoded (hex, then base64, then raw), or None if they are no key.
    The length is not judged here (except for raw keys: 32 to 64 bytes)."""
    if not all(b in _TEXT_BYTES for b in contents):
        return bytes(contents) if MIN_RAW_KEY_LEN <= len(contents) <= MAX_KEY_LEN else None
    text = contents.strip(_WHITESPACE)
    if not text or any(b in _WHITESPACE for b in text):
        return None
    if len(text) % 2 == 0 and _HEX.match(text):
        return bytes.fromhex(text.decode("ascii"))
    if _hex_typo(text) is not None:
        return None
    # Standard base64, padding optional (but never more than the canonical padding), and no
    # stray bits in the last character (as Rust's base64 crate decodes it).
    body = text.rstrip(b"=")
    padding = len(text) - len(body)
    if not _BASE64.match(body) or len(body) % 4 == 1 or padding > (-len(body)) % 4:
        return None
    try:
        secret = base64.b64decode(body + b"=" * ((-len(body)) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    if base64.b64encode(secret).rstrip(b"=") != body:
        return None
    return secret


def _hex_typo(text: bytes) -> Optional[str]:
    """What is wrong with a line that is nearly a hex key (a digit lost, a letter mistyped),
    which base64 would otherwise take for another key; as the Rust crate judges it."""
    if len(text) < 31:
        return None
    not_hex = [(at, b) for at, b in enumerate(text) if b not in _HEX_DIGITS][:3]
    if not not_hex:
        return f"{len(text)} hex digits, an odd number: one is missing or extra"
    if len(not_hex) > 2 or not all(b in _BASE64_SYMBOLS for _, b in not_hex):
        return None
    # Positions only: a message never shows any of the key's characters.
    if len(not_hex) == 1:
        return f"character {not_hex[0][0] + 1} is not a hex digit (0-9, a-f)"
    return (f"characters {not_hex[0][0] + 1} and {not_hex[1][0] + 1} are not hex digits "
            "(0-9, a-f)")


def _load(path: PathLike, min_len: int, allow_open_permissions: bool,
          key_id: Optional[str]) -> Key:
    path = Path(path)
    if key_id is None:
        key_id = _id_from_path(path)
    else:
        check_key_id(key_id)
    contents = _read(path, allow_open_permissions)
    secret = decode_key(contents)
    if secret is None:
        # As decode_key judges it: only one line of text with no blank inside can be a typo.
        text = contents.strip(_WHITESPACE)
        one_word = all(b in _TEXT_BYTES for b in contents) and not any(
            b in _WHITESPACE for b in text)
        typo = _hex_typo(text) if one_word else None
        if typo is not None:
            raise _problem(path, f"looks like a hex key with a typo: {typo}")
        raise _problem(path, "not a key: expected one line of hex (linkgate keygen), base64, "
                             "or 32 to 64 raw bytes (spiped's format)")
    if not min_len <= len(secret) <= MAX_KEY_LEN:
        raise _problem(path, f"the key is {len(secret)} bytes long; it must be {min_len} to "
                             f"{MAX_KEY_LEN} bytes")
    return Key(key_id, secret)


def load_key(path: PathLike, *, allow_open_permissions: bool = False,
             key_id: Optional[str] = None) -> Key:
    """Loads a key file: a :class:`Key` whose id is the file's stem (or ``key_id``).

    Raises KeyFileError naming the file and what is wrong with it.
    ``allow_open_permissions=True`` skips the permission check (prefer ``chmod 600``).
    """
    return _load(path, MIN_KEY_LEN, allow_open_permissions, key_id)


def load_seed_key(path: PathLike, *, allow_open_permissions: bool = False,
                  key_id: Optional[str] = None) -> Key:
    """Like load_key, but accepts keys of 1 to 64 bytes: for the seed scheme only, whose
    existing deployments use short text keys (``b'secret'`` is the file ``736563726574``)."""
    return _load(path, 1, allow_open_permissions, key_id)


def load_keyring(path: PathLike, *, allow_open_permissions: bool = False) -> Keyring:
    """Every ``*.key`` file of a directory, as a dict of key id (the file's stem) to key; or the
    one key of a key file.

    Hidden files (``.name.key``) are skipped with a warning. Every refused file is listed in one
    KeyFileError (its ``problems`` hold one error per file). On POSIX a directory that group or
    others can write to is refused too (another user could add a key), unless
    ``allow_open_permissions=True``.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as err:
        raise KeyFileError(f"key directory {path}: cannot read: {err.strerror or err}",
                           path=path) from err
    if not stat.S_ISDIR(info.st_mode):
        key = load_key(path, allow_open_permissions=allow_open_permissions)
        return Keyring({key.id: key.secret})
    if os.name == "posix" and not allow_open_permissions and info.st_mode & 0o022:
        raise KeyFileError(
            f"key directory {path}: permissions {stat.S_IMODE(info.st_mode):04o}: group or "
            "others can write to it, so another user could add a key (run: chmod go-w on it)",
            path=path)
    try:
        names = sorted(os.listdir(path))
    except OSError as err:
        raise KeyFileError(f"key directory {path}: cannot read: {err.strerror or err}",
                           path=path) from err
    keyring = Keyring()
    problems: List[KeyFileError] = []
    for name in names:
        if not name.endswith(".key"):
            continue
        if name.startswith("."):
            logger.warning("skipping a hidden *.key file (not loaded): %s", path / name)
            continue
        try:
            key = load_key(path / name, allow_open_permissions=allow_open_permissions)
        except KeyFileError as err:
            problems.append(err)
            continue
        keyring[key.id] = key.secret
    if problems:
        listed = "; ".join(f"{Path(p.path).name}: {p.problem}" for p in problems)
        raise KeyFileError(f"{len(problems)} key file{'s' if len(problems) > 1 else ''} in "
                           f"{path} cannot be used: {listed}", path=path, problems=problems)
    if not keyring:
        raise KeyFileError(f"no *.key files in {path} (create one with: linkgate keygen --out "
                           f"{path}/NAME.key)", path=path)
    return keyring
