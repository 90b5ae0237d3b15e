"""Overlay key files: ``load_key_file(path) -> ({id: secret}, send_id)``, ``new_key_file_text()``.

Format (TOML)::

    [[key]]            # the first key signs; every key listed verifies (rotation)
    id = 1             # 1..65535, carried in each packet's trailer
    secret = "64 hex digits"   # at least 16 bytes

The file must not be readable by group or others (mode 0600 or stricter): a readable key lets
anyone on the host forge routes.  ``spines-kr keygen FILE`` writes a fresh one.
"""

from __future__ import annotations

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


