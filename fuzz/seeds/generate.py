#!/usr/bin/env python3
"""Writes the seed inputs in fuzz/seeds/<target>/ (python3, standard library only).

Seeds are a starting corpus: well-formed inputs that put the fuzzer past the first checks at
once (key ids the `judge` target's keyring knows, PROXY headers with a valid CRC32C, key files of
each format). None of them is a valid proof or sealed record: the targets assert that nothing
without the key is ever admitted or opened. Run from anywhere: python3 fuzz/seeds/generate.py
"""

import base64
import hashlib
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def pattern(label, n):
    """n deterministic bytes (not secrets: just varied input)."""
    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{label}/{counter}".encode()).digest()
        counter += 1
    return out[:n]


def write(target, name, data):
    folder = os.path.join(HERE, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


# judge: RESPONSE = mode || n || key_id || client_nonce(32) [|| e_C(32)] || client_proof(32)
JUDGE_IDS = [
    "a",
    "alice",
    "k-0123456789.abcdefghijklmnopqrstuvwxyz_ABCDEFGHIJKLMNOPQRSTUVWX",
    "bob",
]


def response(mode, key_id, label):
    body = key_id.encode() + pattern(label + "/nonce", 32)
    if mode == 2:
        body += pattern(label + "/share", 32)
    return bytes([mode, len(key_id)]) + body + pattern(label + "/proof", 32)


for i, key_id in enumerate(JUDGE_IDS):
    for mode in (0, 1, 2):
        write("judge", f"response-{i}-mode{mode}", response(mode, key_id, f"judge/{i}/{mode}"))
write("judge", "bad-id-characters", response(1, "al/ce", "judge/bad"))
write("judge", "reserved-mode", bytes([3, 5]) + b"alice")

# client_verdict: selector (mode = byte % 3) || VERDICT; the first bytes are also a CHALLENGE.
write("client_verdict", "challenge", b"LGATE/1\n" + pattern("challenge", 32))
for mode, length in ((0, 33), (1, 33), (2, 65)):
    write("client_verdict", f"admitted-mode{mode}", bytes([mode, 0]) + pattern(f"v/{mode}", length - 1))
    write("client_verdict", f"denied-mode{mode}", bytes([mode, 1]))
    write("client_verdict", f"malformed-mode{mode}", bytes([mode, 2]))
write("client_verdict", "unknown-verdict", bytes([0, 0x17]))

# record_open: a record header (17 03 03 || be16(L)) and a body that cannot verify.
for length in (17, 18, 100):
    body = pattern(f"record/{length}", length)
    write("record_open", f"record-{length}", bytes([0x17, 3, 3]) + struct.pack(">H", length) + body)
# The longest record's header, cut short (a whole 16 KiB record would raise libFuzzer's -max_len
# for every input, and slow the target down for little gain).
write("record_open", "longest-header-cut-short", bytes([0x17, 3, 3, 0x40, 0x11]) + bytes(64))
two = b""
for length in (22, 23):
    two += bytes([0x17, 3, 3]) + struct.pack(">H", length) + pattern(f"two/{length}", length)
write("record_open", "two-records", two)


# proxy_header
def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def tlv(kind, value):
    return bytes([kind]) + struct.pack(">H", len(value)) + value


def v2(command, family, addresses, tlvs, with_crc=True):
    crc_tlv = tlv(0x03, b"\0\0\0\0") if with_crc else b""
    rest = addresses + crc_tlv + tlvs
    header = SIG + bytes([command, family]) + struct.pack(">H", len(rest)) + rest
    if with_crc:
        at = 16 + len(addresses) + 3
        header = header[:at] + struct.pack(">I", crc32c(header)) + header[at + 4:]
    return header


ipv4 = bytes([192, 0, 2, 10, 198, 51, 100, 1]) + struct.pack(">HH", 51234, 7700)
ipv6 = bytes.fromhex("20010db8000000000000000000000001" "20010db8000000000000000000000002")
ipv6 += struct.pack(">HH", 443, 7700)
key_tlvs = tlv(0xE0, b"alice") + tlv(0x02, b"alice") + tlv(0x05, b"conn-42")

write("proxy_header", "v1-tcp4", b"PROXY TCP4 192.0.2.10 198.51.100.1 51234 7700\r\n")
write("proxy_header", "v1-tcp6", b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.1 443 7700\r\nLGATE")
write("proxy_header", "v1-unknown", b"PROXY UNKNOWN\r\n")
write("proxy_header", "v1-unknown-fields", b"PROXY UNKNOWN ::1 ::2 1 2\r\n")
write("proxy_header", "v2-ipv4-tlvs", v2(0x21, 0x11, ipv4, key_tlvs) + b"\x00\x01")
write("proxy_header", "v2-ipv6", v2(0x21, 0x21, ipv6, b""))
write("proxy_header", "v2-ipv4-no-crc", v2(0x21, 0x11, ipv4, tlv(0x05, b"id"), with_crc=False))
write("proxy_header", "v2-local", v2(0x20, 0x00, b"", b""))
write("proxy_header", "v2-unix", v2(0x21, 0x31, bytes(216), b""))

# key_decode: key file contents in each format.
key32 = pattern("key", 32)
write("key_decode", "hex-32", key32.hex().encode() + b"\n")
write("key_decode", "hex-16-upper", pattern("key16", 16).hex().upper().encode())
write("key_decode", "base64-32", base64.b64encode(key32) + b"\n")
write("key_decode", "base64-unpadded", base64.b64encode(pattern("k20", 20)).rstrip(b"="))
write("key_decode", "raw-32", b"\x00\xff" + key32[2:])
write("key_decode", "short-text", b"secret\n")
write("key_decode", "hex-crlf", b"  " + key32.hex().encode() + b"\r\n")

# sealed_stream: the input is read as a plan (steps, chunk sizes, pendings, flips) by `arbitrary`,
# so varied bytes of a few lengths are varied plans: short ones with few steps, longer ones with
# more records, partial reads and writes.
for length in (16, 64, 256, 1024, 4096):
    write("sealed_stream", f"plan-{length}", pattern(f"plan/{length}", length))
