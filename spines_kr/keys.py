"""Overlay key files: ``load_key_file(path) -> ({id: secret}, send_id)``, ``new_key_file_text()``.

Format (TOML)::

    [[key]]            # the first key signs; every key listed verifies (rotation)
    id = 1             # 1..65535, carried in each packet's trailer
    secret = "64 hex digits"   # at least 16 bytes

The file must not be readable by group or others (mode 0600 or stricter): a readable key lets
anyone on the host forge routes.  ``spines-kr keygen FILE`` writes a fresh one.

WireGuard keys (``load_wireguard_key(path) -> (private, public)``, ``new_wireguard_key()``):
one node's own key for its WireGuard tunnels (``wireguard_key_file``), in the format of
``wg genkey`` -- one line, the 32-byte private key in base64 -- so either tool can make it;
``spines-kr keygen --wireguard FILE`` writes one and prints the public key.  The same mode rule
applies (0600 or stricter).  The public key is derived with ``wire.x25519``; peers learn it at
first contact over the overlay's authenticated control plane (``daemon.tunnels``), so it is
never written in another node's configuration.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
import tomllib


class KeyFileError(ValueError):
    """A key file problem; the message names the file and what is wrong."""


def load_key_file(path: str) -> tuple[dict[int, bytes], int]:
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise KeyFileError(f"key_file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise KeyFileError(f"key_file {path}: {e}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise KeyFileError(f"key_file {path}: mode {stat.S_IMODE(st.st_mode):04o} lets others read "
                        f"it; chmod 600 {path}")
    keys: dict[int, bytes] = {}
    entries = data.get("key")
    if not isinstance(entries, list) or not entries or set(data) - {"key"}:
        raise KeyFileError(f"key_file {path}: expected one or more [[key]] tables (id, secret)")
    for i, k in enumerate(entries):
        if not isinstance(k, dict) or set(k) != {"id", "secret"}:
            raise KeyFileError(f"key_file {path}: key[{i}]: expected exactly id and secret")
        kid, secret = k["id"], k["secret"]
        if isinstance(kid, bool) or not isinstance(kid, int) or not 1 <= kid <= 0xFFFF:
            raise KeyFileError(f"key_file {path}: key[{i}].id: expected 1..65535")
        try:
            raw = bytes.fromhex(secret)
        except (TypeError, ValueError):
            raise KeyFileError(f"key_file {path}: key[{i}].secret: expected hex") from None
        if len(raw) < 16:
            raise KeyFileError(f"key_file {path}: key[{i}].secret: at least 16 bytes (32 hex digits)")
        if kid in keys:
            raise KeyFileError(f"key_file {path}: key[{i}].id: {kid} appears twice")
        keys[kid] = raw
    return keys, entries[0]["id"]


def new_key_file_text(key_id: int = 1) -> str:
    return f"# spines-kr overlay key (keep mode 0600)\n[[key]]\nid = {key_id}\nsecret = \"{os.urandom(32).hex()}\"\n"




def _check_mode(path: str, st: os.stat_result, what: str) -> None:
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise KeyFileError(f"{what} {path}: mode {stat.S_IMODE(st.st_mode):04o} lets others read "
                           f"it; chmod 600 {path}")


def load_wireguard_key(path: str) -> tuple[bytes, bytes]:
    """(private key, public key) of a WireGuard key file (``wg genkey`` format, mode 0600)."""
    from spines_kr.wire.x25519 import clamp, public_key

    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            text = f.read(4096)
    except OSError as e:
        raise KeyFileError(f"wireguard_key_file {path}: {e.strerror}") from None
    _check_mode(path, st, "wireguard_key_file")
    lines = [l.strip() for l in text.decode(errors="replace").splitlines()
             if l.strip() and not l.strip().startswith("#")]
    try:
        if len(lines) != 1:
            raise ValueError
        raw = base64.b64decode(lines[0], validate=True)
        if len(raw) != 32:
            raise ValueError
    except (ValueError, binascii.Error):
        raise KeyFileError(f"wireguard_key_file {path}: expected one line, a WireGuard private "
                           f"key in base64 (as 'wg genkey' or 'spines-kr keygen --wireguard' "
                           f"writes it)") from None
    private = clamp(raw)
    return private, public_key(private)


def new_wireguard_key() -> tuple[str, str]:
    """(file text, public key in base64) of a fresh WireGuard private key."""
    from spines_kr.wire.x25519 import clamp, public_key

    private = clamp(os.urandom(32))
    return (base64.b64encode(private).decode() + "\n",
            base64.b64encode(public_key(private)).decode())
