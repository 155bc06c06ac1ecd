"""A client written the way the original recipe writes it (no linkgate import).

usage: recipe_client.py HOST PORT KEY_HEX MESSAGE [DIGEST]
DIGEST is sha256 (the default) or md5, which the published recipe's hmac.new(key, msg) meant
before Python 3.8 made the digest a required argument.
Prints "reply <text>", or "closed" if the server hung up after our answer.
"""
import hmac
import sys
from socket import AF_INET, SOCK_STREAM, socket


def client_authenticate(connection, secret_key):
    message = connection.recv(32)
    hash = hmac.new(secret_key, message, DIGEST)
    digest = hash.digest()
    connection.send(digest)


host, port, key_hex, message = sys.argv[1:5]
DIGEST = sys.argv[5] if len(sys.argv) > 5 else "sha256"
s = socket(AF_INET, SOCK_STREAM)
s.connect((host, int(port)))
client_authenticate(s, bytes.fromhex(key_hex))
try:
    s.send(message.encode())
    reply = s.recv(1024)
except ConnectionError:
    reply = b""
if reply:
    print("reply", reply.decode(), flush=True)
else:
    print("closed", flush=True)
