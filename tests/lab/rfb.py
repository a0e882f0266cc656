"""A minimal RFB (VNC) client for tests: the version and security handshake, and VNC authentication.

RFB 3.8 (RFC 6143): the server sends its version, the client answers, the server lists its security
types (1 = None, 2 = VNC authentication), the client picks one; for VNC authentication the server
sends a 16-byte challenge that the client encrypts with DES, the key being the password (8 bytes,
zero-padded, each byte's bits reversed); the server answers 0 (OK) or 1 (failed).
"""
from __future__ import annotations

import socket
import struct

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

NONE, VNC_AUTH = 1, 2


def _recv_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"the server closed the connection after {len(out)} of {n} bytes")
        out += chunk
    return out


def vnc_response(password: str, challenge: bytes) -> bytes:
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode()[:8].ljust(8, b"\0"))
    enc = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # the same key three times: single DES
    return enc.update(challenge) + enc.finalize()


def security_types(host: str, port: int, timeout: float = 10) -> list:
    """The security types the server offers (after the version handshake)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        _recv_exact(s, 12)
        s.sendall(b"RFB 003.008\n")
        n = _recv_exact(s, 1)[0]
        if n == 0:
            length = struct.unpack(">I", _recv_exact(s, 4))[0]
            raise ConnectionError(_recv_exact(s, length).decode(errors="replace"))
        return list(_recv_exact(s, n))


def try_password(host: str, port: int, password: str, timeout: float = 10) -> tuple:
    """(True, desktop name) when the password opens a session; (False, reason) otherwise."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        _recv_exact(s, 12)
        s.sendall(b"RFB 003.008\n")
        types = list(_recv_exact(s, _recv_exact(s, 1)[0]))
        if VNC_AUTH not in types:
            return False, f"no VNC authentication offered: {types}"
        s.sendall(bytes([VNC_AUTH]))
        s.sendall(vnc_response(password, _recv_exact(s, 16)))
        if struct.unpack(">I", _recv_exact(s, 4))[0] != 0:
            try:
                length = struct.unpack(">I", _recv_exact(s, 4))[0]
                return False, _recv_exact(s, length).decode(errors="replace").rstrip("\0")
            except (ConnectionError, OSError):
                return False, "authentication failed"
        s.sendall(b"\x01")  # ClientInit: shared
        width, height = struct.unpack(">HH", _recv_exact(s, 4))
        _recv_exact(s, 16)  # pixel format
        name = _recv_exact(s, struct.unpack(">I", _recv_exact(s, 4))[0]).decode(errors="replace")
        return True, f"{name} {width}x{height}"
