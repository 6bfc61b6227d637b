"""TLS with external pre-shared keys (PSK) for the SKIP key providers, on the interpreter's OpenSSL.

IETF draft-cisco-skip-02 §3 (Table 1): SKIP runs HTTP over TLS 1.2 or 1.3; with TLS 1.3 the cipher
suite TLS_AES_256_GCM_SHA384 is REQUIRED, and PSK authentication is RECOMMENDED (it is believed to
resist a quantum adversary, where certificates do not). CPython before 3.13 has no PSK API at all, and
3.13's (``SSLContext.set_psk_server_callback``) wraps OpenSSL's TLS 1.2-style callback, whose TLS 1.3
PSKs are SHA-256 only — so a client offering the required SHA-384 suite could not connect. This
module therefore sets OpenSSL's own server callbacks (public API, through ``ctypes``) on each
connection's ``SSL`` object as its handshake starts:

* TLS 1.3 — ``SSL_set_psk_find_session_callback``: the client's PSK identity is looked up and its key
  handed back as a session for TLS_AES_256_GCM_SHA384, the only TLS 1.3 suite offered (RFC 8446
  §4.2.11 external PSK; OpenSSL accepts only ``psk_dhe_ke`` by default, so every session has
  forward secrecy);
* TLS 1.2 — ``SSL_set_psk_server_callback``: the draft's RECOMMENDED PSK suites
  DHE-PSK-AES256-CBC-SHA384 and DHE-PSK-AES256-CBC-SHA (OpenSSL's built-in RFC 7919 groups, via
  ``SSL_set_dh_auto``), then ECDHE-PSK-AES256-CBC-SHA384 for clients without DHE.

The listener has no certificate: a client whose identity is unknown (or whose PSK differs: the TLS
binder, or the Finished MAC in TLS 1.2, fails) gets no session. The ``SSL *`` pointer comes from
``sslpsk3`` (compiled against this interpreter's headers, the one place that knows where ``_ssl``
keeps it); the identity that authenticated is set on the connection's ``SSLObject``
(``psk_identity``), where the HTTP layer reads it. Identities and keys never reach a log line; a
refused identity is logged as its first 64 characters (``repr``), as any hostile input.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import ssl
import threading
import weakref
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("qkdops.kme")

TLS13_SUITE = b"TLS_AES_256_GCM_SHA384"
TLS13_SUITE_ID = b"\x13\x02"       # RFC 8446 appendix B.4
TLS12_CIPHERS = "DHE-PSK-AES256-CBC-SHA384:DHE-PSK-AES256-CBC-SHA:ECDHE-PSK-AES256-CBC-SHA384"
TLS1_3_VERSION = 0x0304
SSL_CTRL_SET_DH_AUTO = 118         # openssl/ssl.h: SSL_set_dh_auto(s, onoff)
MAX_PSK_BYTES = 64

_FIND_SESSION = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                 ctypes.POINTER(ctypes.c_void_p))
_SERVER_PSK = ctypes.CFUNCTYPE(ctypes.c_uint, ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_ubyte), ctypes.c_uint)


class PskUnavailable(RuntimeError):
    """This interpreter's OpenSSL cannot serve TLS-PSK (no ``sslpsk3``, or an OpenSSL before 1.1.1)."""


@functools.cache
def _libssl() -> ctypes.CDLL:
    """(Once per process) the libssl ``_ssl`` is linked against (already loaded: dlopen by soname returns it), checked by version."""
    try:
        import sslpsk3   # noqa: F401  (its compiled accessor finds each connection's SSL *)
    except ImportError as exc:
        raise PskUnavailable(f"TLS-PSK needs the sslpsk3 package ({exc})") from None
    name = "libssl.so.3" if ssl.OPENSSL_VERSION_INFO >= (3, 0) else "libssl.so.1.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise PskUnavailable(f"TLS-PSK: cannot load {name} ({exc})") from None
    lib.OpenSSL_version_num.restype = ctypes.c_ulong
    if lib.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
        raise PskUnavailable(f"TLS-PSK: {name} is {lib.OpenSSL_version_num():#x}, Python's ssl uses "
                             f"{ssl.OPENSSL_VERSION_NUMBER:#x}")
    lib.SSL_set_psk_find_session_callback.argtypes = [ctypes.c_void_p, _FIND_SESSION]
    lib.SSL_set_psk_server_callback.argtypes = [ctypes.c_void_p, _SERVER_PSK]
    lib.SSL_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.SSL_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    lib.SSL_ctrl.restype = ctypes.c_long
    lib.SSL_CIPHER_find.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.SSL_CIPHER_find.restype = ctypes.c_void_p
    lib.SSL_SESSION_new.restype = ctypes.c_void_p
    lib.SSL_SESSION_free.argtypes = [ctypes.c_void_p]
    for name_, types in (("SSL_SESSION_set1_master_key", [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]),
                         ("SSL_SESSION_set_cipher", [ctypes.c_void_p, ctypes.c_void_p]),
                         ("SSL_SESSION_set_protocol_version", [ctypes.c_void_p, ctypes.c_int])):
        getattr(lib, name_).argtypes = types
    return lib


def _ssl_pointer(obj: ssl.SSLObject) -> int:
    """The ``SSL *`` of a connection (sslpsk3's compiled accessor; also puts it in the accept state)."""
    from sslpsk3 import sslpsk3 as _psk
    accessor: Any = _psk._sslpsk3
    return int(accessor.sslpsk3_set_accept_state(_psk.get_ssl_socket(obj)))


class PskKeys:
    """Who may connect to one key provider: PSK identity → key, and the OpenSSL callbacks that check it.

    One instance per listener; its callbacks find the connection by its ``SSL *`` among the handshakes
    in progress (a weak map: a connection's pointer cannot be reused while its object lives)."""

    def __init__(self, keys: Mapping[str, bytes], name: str) -> None:
        for identity, key in keys.items():
            if not 16 <= len(key) <= MAX_PSK_BYTES:
                raise ValueError(f"{name}: the PSK of identity {identity!r} has {len(key)} bytes (expected 16 to {MAX_PSK_BYTES})")
        self.name = name
        self._keys = dict(keys)
        self._lib = _libssl()
        self._handshakes: weakref.WeakValueDictionary[int, ssl.SSLObject] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        # the ctypes thunks must live as long as any SSL that may call them: as long as this object
        self._find = _FIND_SESSION(self._find_session)
        self._tls12 = _SERVER_PSK(self._server_psk)

    def context(self, handshake: type[ssl.SSLObject] = ssl.SSLObject) -> ssl.SSLContext:
        """A server context that accepts only these PSKs: TLS 1.2 (PSK suites) or 1.3 (external PSK).
        ``handshake``: the ``SSLObject`` class to extend (the server's, which logs refused handshakes)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(TLS12_CIPHERS)
        # no resumption: a resumed session calls no PSK callback, so its caller would be unknown — every
        # connection authenticates with its PSK
        context.num_tickets = 0
        context.options |= ssl.OP_NO_TICKET
        context.sslobject_class = type("PskHandshake", (_PskHandshake, handshake), {"keys": self})
        return context

    def attach(self, obj: ssl.SSLObject) -> None:
        """(Event loop, first handshake step of a connection) set the callbacks on its ``SSL``."""
        pointer = _ssl_pointer(obj)
        lib = self._lib
        if lib.SSL_set_ciphersuites(pointer, TLS13_SUITE) != 1:
            raise ssl.SSLError(f"{self.name}: OpenSSL refused the TLS 1.3 suite {TLS13_SUITE.decode()}")
        lib.SSL_ctrl(pointer, SSL_CTRL_SET_DH_AUTO, 1, None)
        lib.SSL_set_psk_find_session_callback(pointer, self._find)
        lib.SSL_set_psk_server_callback(pointer, self._tls12)
        with self._lock:
            self._handshakes[pointer] = obj

    def _known(self, pointer: int | None, identity: str) -> bytes | None:
        key = self._keys.get(identity)
        with self._lock:
            obj = self._handshakes.get(pointer or 0)
        if key is None:
            if obj is None or getattr(obj, "psk_refused", None) != identity:   # a retried ClientHello: logged once
                log.info("%s: TLS handshake refused: unknown PSK identity %s", self.name, repr(identity)[:64])
            if obj is not None:
                obj.psk_refused = identity   # type: ignore[attr-defined]
            return None
        if obj is not None:
            obj.psk_identity = identity   # type: ignore[attr-defined]
        return key

    def _find_session(self, pointer: int | None, identity: int | None, length: int, session: Any) -> int:
        """OpenSSL's TLS 1.3 callback: 1 with ``*session`` set (or NULL: no such PSK); 0 aborts."""
        try:
            session[0] = None
            key = self._known(pointer, ctypes.string_at(identity, length).decode("utf-8", "replace") if identity else "")
            if key is None:
                return 1
            lib = self._lib
            cipher = lib.SSL_CIPHER_find(pointer, TLS13_SUITE_ID)
            new = lib.SSL_SESSION_new()
            if not cipher or not new:
                return 0
            if not (lib.SSL_SESSION_set1_master_key(new, key, len(key)) and lib.SSL_SESSION_set_cipher(new, cipher)
                    and lib.SSL_SESSION_set_protocol_version(new, TLS1_3_VERSION)):
                lib.SSL_SESSION_free(new)
                return 0
            session[0] = new   # OpenSSL takes the reference
            return 1
        except Exception:   # an exception must not cross into C: refuse the handshake
            log.exception("%s: TLS 1.3 PSK callback failed", self.name)
            return 0

    def _server_psk(self, pointer: int | None, identity: bytes | None, out: Any, capacity: int) -> int:
        """OpenSSL's TLS 1.2 callback: the PSK's length after copying it to ``out``; 0 refuses."""
        try:
            key = self._known(pointer, (identity or b"").decode("utf-8", "replace"))
            if key is None or len(key) > capacity:
                return 0
            ctypes.memmove(out, key, len(key))
            return len(key)
        except Exception:
            log.exception("%s: TLS 1.2 PSK callback failed", self.name)
            return 0


class _PskHandshake(ssl.SSLObject):
    """The event loop's TLS object for one connection of a PSK listener: attaches the callbacks at its
    first handshake step, and keeps the identity that authenticated (``psk_identity``)."""

    keys: PskKeys
    psk_identity: str | None = None
    _attached = False

    def do_handshake(self) -> None:
        if not self._attached:
            self._attached = True
            self.keys.attach(self)
        super().do_handshake()
