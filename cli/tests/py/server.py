"""A Python linkgate/1 server for the cross-language tests, with the linkgate Python package.

usage: server.py KIND KEYS_DIR [--allow-plain] [--require-forward-secrecy] [--timeout SECONDS]
                 [--key-update-interval N]
  threaded  linkgate.serve(...) with an echo handler
  asyncio   linkgate.aio.start_server(...) with an echo handler
  impostor  holds its own (wrong) keys: runs the handshake without checking the client and
            "proves" with its key, in the mode the client asks for; prints "fooled? ID MODE"

Prints "listening PORT" first, then the linkgate logger's lines ("admitted ...", "connection
rejected ... reason=...", "closed after an error ... reason=..."), and per admitted connection
"handler key_id=ID mode=MODE", then "handler done key_id=ID received=N sha256=HEX" after the
client's clean end, or "handler failed key_id=ID <ExceptionName> reason=R received=N
sha256=HEX". The echo handler echoes until the client's end and then ends cleanly (close_notify
in the sealed modes), as `linkgate check` expects. Runs until killed.
"""
import argparse
import asyncio
import hashlib
import logging
import os
import socket
import sys
import threading

import linkgate
import linkgate.record
from linkgate import protocol

parser = argparse.ArgumentParser()
parser.add_argument("kind", choices=["threaded", "asyncio", "impostor"])
parser.add_argument("keys_dir")
parser.add_argument("--allow-plain", action="store_true")
parser.add_argument("--require-forward-secrecy", action="store_true")
parser.add_argument("--timeout", type=float, default=5.0)
parser.add_argument("--key-update-interval", type=int)
args = parser.parse_args()

logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
if args.key_update_interval:
    linkgate.record.KEY_UPDATE_INTERVAL = args.key_update_interval
keyring = linkgate.load_keyring(args.keys_dir)
options = dict(timeout=args.timeout, allow_plain=args.allow_plain,
               require_forward_secrecy=args.require_forward_secrecy)


def report_failure(key_id, received, digest, err):
    print(f"handler failed key_id={key_id} {type(err).__name__} "
          f"reason={getattr(err, 'reason', 'io')} received={received} "
          f"sha256={digest.hexdigest()}", flush=True)


def echo(stream, key_id):
    print(f"handler key_id={key_id} mode={getattr(stream, 'mode', 'plain')}", flush=True)
    received, digest = 0, hashlib.sha256()
    try:
        while True:
            data = stream.recv(65536)
            if not data:
                break
            received += len(data)
            digest.update(data)
            stream.sendall(data)
    except (linkgate.LinkgateError, OSError) as err:
        report_failure(key_id, received, digest, err)
        raise
    print(f"handler done key_id={key_id} received={received} sha256={digest.hexdigest()}",
          flush=True)
    # Returning ends the connection cleanly: close_notify in the sealed modes.


async def aio_echo(reader, writer, key_id):
    print(f"handler key_id={key_id} mode={getattr(writer, 'mode', 'plain')}", flush=True)
    received, digest = 0, hashlib.sha256()
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            received += len(data)
            digest.update(data)
            writer.write(data)
            await writer.drain()
    except (linkgate.LinkgateError, OSError) as err:
        report_failure(key_id, received, digest, err)
        raise
    print(f"handler done key_id={key_id} received={received} sha256={digest.hexdigest()}",
          flush=True)
    writer.close()  # close_notify in the sealed modes
    await writer.wait_closed()


def impostor(conn):
    with conn:
        nonce = os.urandom(32)
        conn.sendall(linkgate.MAGIC + nonce)
        mode_byte, n = conn.recv(2, socket.MSG_WAITALL)
        mode = protocol.MODES[mode_byte]
        share_len = 32 if mode == "sealed-fs" else 0
        rest = conn.recv(n + 64 + share_len, socket.MSG_WAITALL)
        key_id, client_nonce = rest[:n].decode(), rest[n:n + 32]
        client_share = rest[n + 32:n + 32 + share_len]
        server_share = os.urandom(32) if share_len else b""
        proof = linkgate.server_proof(keyring[key_id], nonce, client_nonce, key_id, mode,
                                      client_share, server_share)
        conn.sendall(b"\x00" + server_share + proof)
        print("fooled?", key_id, mode, flush=True)
        conn.recv(1)


if args.kind == "threaded":
    server = linkgate.serve(echo, "127.0.0.1", 0, keyring, **options)
    print("listening", server.port, flush=True)
    server.serve_forever()
elif args.kind == "asyncio":
    async def main():
        server = await linkgate.aio.start_server(aio_echo, "127.0.0.1", 0, keyring, **options)
        print("listening", server.sockets[0].getsockname()[1], flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())
else:
    listener = socket.create_server(("127.0.0.1", 0))
    print("listening", listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=impostor, args=(conn,), daemon=True).start()
