"""A client written the way the original recipe writes it (no linkgate import).

usage: recipe_client.py HOST PORT KEY_HEX MESSAGE
Prints "reply <text>", or "closed" if the server hung up after our answer.
"""
import hmac
import sys
from socket import AF_INET, SOCK_STREAM, socket


def client_authenticate(connection, secret_key):
    message = connection.recv(32)
    hash = hmac.new(secret_key, message, "sha256")
    digest = hash.digest()
    connection.send(digest)


host, port, key_hex, message = sys.argv[1:5]
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
