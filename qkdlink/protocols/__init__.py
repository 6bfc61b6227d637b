"""Protocol models, looked up by their CLI/config name."""

from __future__ import annotations

import importlib

from qkdlink.protocols.base import Protocol

_MODULES = {
    "bb84-decoy": "qkdlink.protocols.bb84",
    "mdi": "qkdlink.protocols.mdi",
    "tf": "qkdlink.protocols.tf",
}

PROTOCOL_NAMES: tuple[str, ...] = tuple(_MODULES)


def get_protocol(name: str) -> Protocol:
    """The model for ``name`` (one of PROTOCOL_NAMES); each module exposes a ``PROTOCOL`` instance."""
    if name not in _MODULES:
        raise ValueError(f"unknown protocol '{name}' (known: {', '.join(PROTOCOL_NAMES)})")
    return importlib.import_module(_MODULES[name]).PROTOCOL
