"""Every kind of host object this system makes, from the builder modules that define them.

The builders (``qcow_manager``, ``vm_launcher``, ``vlan_manager``, ``hosts.snapshots`` and the
modules they import) register their ``Kind`` subclasses with
``resources.register`` when imported; this module imports them, so that
reading the registry never depends on who imported what first.  The
dependency goes one way: kinds -> builders -> resources.
"""
from __future__ import annotations

from typing import Optional

import qcow_manager  # noqa: F401  (registers its kinds)
import vlan_manager  # noqa: F401
import vm_launcher  # noqa: F401
from hosts import (  # noqa: F401
    capture,
    impairments,
    snapshots,  # noqa: F401
)
from hosts.resources import KINDS, Kind


def kinds(role: Optional[str] = None) -> list:
    """Every registered kind (of one role: "worker" or "node"), in registration order."""
    return [k for k in KINDS.values() if role is None or k.role == role]


def kind(name: str) -> Kind:
    """The kind called ``name`` (KeyError for an unknown one)."""
    return KINDS[name]
