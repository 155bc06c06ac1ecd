"""A server written the way the original recipe writes it (no linkgate import): 32 random
bytes, their HMAC back (SHA-256, or MD5), hmac.compare_digest, then an echo that upper-cases.

usage: recipe_server.py KEY_HEX COUNT [DIGEST]
DIGEST is sha256 (the default) or md5 (the published recipe's default before Python 3.8).
Prints "listening PORT", then "authenticated" or "rejected" per connection.
"""
import hmac
import os
import sys
from socket import AF_INET, SOCK_STREAM, socket


def server_authenticate(connection, secret_key):
    message = os.urandom(32)
    connection.send(message)
    hash = hmac.new(secret_key, message, DIGEST)
    digest = hash.digest()
    response = connection.recv(len(digest))
    return hmac.compare_digest(digest, response)


def echo_handler(client_sock, secret_key):
    if not server_authenticate(client_sock, secret_key):
        print("rejected", flush=True)
        client_sock.close()
        return
    print("authenticated", flush=True)
    while True:
        msg = client_sock.recv(8192)
        if not msg:
            break
        client_sock.sendall(msg.upper())
    client_sock.close()


secret_key = bytes.fromhex(sys.argv[1])
DIGEST = sys.argv[3] if len(sys.argv) > 3 else "sha256"
s = socket(AF_INET, SOCK_STREAM)
s.bind(("127.0.0.1", 0))
s.listen(5)
print("listening", s.getsockname()[1], flush=True)
for _ in range(int(sys.argv[2])):
    c, a = s.accept()
    echo_handler(c, secret_key)
