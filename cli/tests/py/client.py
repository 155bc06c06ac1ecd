"""linkgate/1 client with python/linkgate.py: connect, send MESSAGE, print the echo.

usage: client.py HOST PORT KEY_FILE KEY_ID MESSAGE
Prints "admitted", then "echo <text>"; or "<ExceptionName>: <message>" and exits 3.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "python"))
import linkgate  # noqa: E402

host, port, key_file, key_id, message = sys.argv[1:6]
try:
    sock = linkgate.connect((host, int(port)), key_id, linkgate.load_key(key_file))
except linkgate.LinkgateError as err:
    print(f"{type(err).__name__}: {err}", flush=True)
    sys.exit(3)
print("admitted", flush=True)
sock.sendall(message.encode())
reply = b""
while len(reply) < len(message):
    chunk = sock.recv(4096)
    if not chunk:
        break
    reply += chunk
print("echo", reply.decode(), flush=True)
sock.close()
