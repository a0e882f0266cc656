"""Who is at the other end of a Unix socket, as the kernel says (SO_PEERCRED).

The credentials are those of the process that called ``connect()``; the
client cannot choose them.  ``struct ucred`` is ``{pid_t pid; uid_t uid;
gid_t gid;}``: pid signed, uid and gid unsigned (``"=iII"``; ``"3i"`` would
misread a uid of 2**31 or more).  The buffer is read as the kernel filled it
and a uid or gid of ``(uid_t) -1`` or the overflow id 65534 ("nobody" when
the peer lives in another user namespace) is reported as unknown, never
taken for a real account.
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Optional

_UCRED = struct.Struct("=iII")
_UNKNOWN_IDS = (0xFFFFFFFF, 65534)


@dataclass(frozen=True)
class Peer:
    """The caller of a connection: its pid, uid and gid (None when the kernel could not say)."""

    pid: Optional[int]
    uid: Optional[int]
    gid: Optional[int]

    def describe(self) -> str:
        return f"uid={self.uid if self.uid is not None else '?'} pid={self.pid if self.pid is not None else '?'}"


def peer_of(sock: socket.socket) -> Peer:
    """The kernel's credentials of the process that connected ``sock`` (a connected AF_UNIX socket)."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except (OSError, AttributeError):
        return Peer(None, None, None)
    if len(raw) != _UCRED.size:
        return Peer(None, None, None)
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(pid if pid > 0 else None, None if uid in _UNKNOWN_IDS else uid,
                None if gid in _UNKNOWN_IDS else gid)
