"""A Python server for the cross-language tests.

usage: server.py MODE KEYS_DIR COUNT
  admit     linkgate/1 with linkgate.admit(), then an echo; prints "admitted ID" or
            "refused <ExceptionName>: <message>" per connection
  impostor  holds its own (wrong) keys: runs the handshake without checking the client and
            "proves" with its key; prints "fooled?" per connection
Prints "listening PORT" first; serves COUNT connections, then exits.
"""
import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "python"))
import linkgate  # noqa: E402

mode, keys_dir, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
keyring = linkgate.load_keyring(keys_dir)
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
print("listening", listener.getsockname()[1], flush=True)

for _ in range(count):
    conn, _ = listener.accept()
    with conn:
        if mode == "impostor":
            nonce = os.urandom(32)
            conn.sendall(linkgate.MAGIC + nonce)
            mode_byte, n = conn.recv(2)
            rest = conn.recv(n + 64, socket.MSG_WAITALL)
            key_id, client_nonce = rest[:n].decode(), rest[n:n + 32]
            proof = linkgate.server_proof(keyring[key_id], nonce, client_nonce, key_id)
            conn.sendall(b"\x00" + proof)
            print("fooled?", key_id, flush=True)
            conn.recv(1)
            continue
        try:
            key_id = linkgate.admit(conn, keyring, timeout=5.0)
        except linkgate.LinkgateError as err:
            print(f"refused {type(err).__name__}: {err}", flush=True)
            continue
        print("admitted", key_id, flush=True)
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)
