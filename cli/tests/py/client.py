"""A linkgate/1 client for the cross-language tests, with the linkgate Python package.

usage: client.py HOST PORT KEY_FILE [--mode MODE] [--id ID] [--message TEXT | --size N]
                 [--key-update-interval N] [--timeout SECONDS]

Prints "admitted ID mode=MODE", then:
  --message TEXT  sends TEXT, prints "echo <what came back>", half-closes (close_notify in the
                  sealed modes) and prints "clean end" once the server has ended too;
  --size N        sends N pattern bytes from a second thread and half-closes, while reading the
                  echo until the server's end; prints "sent N sha256=HEX", "received M
                  sha256=HEX" and "clean end".
A handshake failure prints "<ExceptionName>: <message>" and exits 3; a failure afterwards prints
"stream failed <ExceptionName> reason=<reason> received=M sha256=HEX: <message>" and exits 4.
The pattern is byte i = (31 * i + 7) % 251, so the Rust side can compute it too.
"""
import argparse
import hashlib
import socket
import sys
import threading

import linkgate
import linkgate.record

parser = argparse.ArgumentParser()
parser.add_argument("host")
parser.add_argument("port", type=int)
parser.add_argument("key_file")
parser.add_argument("--mode", default="sealed-fs")
parser.add_argument("--id")
parser.add_argument("--message")
parser.add_argument("--size", type=int)
parser.add_argument("--key-update-interval", type=int)
parser.add_argument("--timeout", type=float, default=5.0)
args = parser.parse_args()

if args.key_update_interval:
    linkgate.record.KEY_UPDATE_INTERVAL = args.key_update_interval


def pattern(n):
    return bytes((31 * i + 7) % 251 for i in range(n))


key = linkgate.load_key(args.key_file, key_id=args.id)
try:
    stream = linkgate.connect((args.host, args.port), key, mode=args.mode, timeout=args.timeout)
except linkgate.LinkgateError as err:
    print(f"{type(err).__name__}: {err}", flush=True)
    sys.exit(3)
print(f"admitted {key.id} mode={getattr(stream, 'mode', 'plain')}", flush=True)

received = bytearray()
try:
    if args.message is not None:
        stream.sendall(args.message.encode())
        while len(received) < len(args.message):
            chunk = stream.recv(4096)
            if not chunk:
                break
            received += chunk
        print("echo", received.decode(), flush=True)
        stream.shutdown(socket.SHUT_WR)
        rest = stream.recv(4096)
        print("clean end" if rest == b"" else f"unexpected {rest!r}", flush=True)
    elif args.size is not None:
        data = pattern(args.size)
        sender_error = []

        def send():
            try:
                stream.sendall(data)
                stream.shutdown(socket.SHUT_WR)
            except (linkgate.LinkgateError, OSError) as err:
                sender_error.append(err)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        while True:
            chunk = stream.recv(65536)
            if not chunk:
                break
            received += chunk
        sender.join(30)
        if sender_error:
            raise sender_error[0]
        print(f"sent {len(data)} sha256={hashlib.sha256(data).hexdigest()}", flush=True)
        print(f"received {len(received)} sha256={hashlib.sha256(received).hexdigest()}",
              flush=True)
        print("clean end", flush=True)
except (linkgate.LinkgateError, OSError) as err:
    print(f"stream failed {type(err).__name__} reason={getattr(err, 'reason', 'io')} "
          f"received={len(received)} sha256={hashlib.sha256(received).hexdigest()}: {err}",
          flush=True)
    sys.exit(4)
stream.close()
