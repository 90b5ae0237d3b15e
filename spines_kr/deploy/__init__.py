"""Deployment generators: daemon configuration files for labs of virtual machines and for OpenWrt.

Modules (pure: values in, text out; no I/O except reading the input file in their ``main``):
    vagrant   lab topology file -> per-VM plan (networks, files, daemon TOML), for
              vagrant/Vagrantfile
    uci       OpenWrt UCI configuration (/etc/config/spines-kr) -> one daemon TOML per section

Shared here: ``toml_text(values, header)``, the writer of the flat TOML files the daemon reads
(``spines_kr.config.load_file``): strings, integers, floats, booleans and lists of those, one
``key = value`` line each, in the order given.  Keys must be fields of ``spines_kr.config.Config``.
"""

from __future__ import annotations

import math


def _toml_string(s: str) -> str:
    """A TOML basic string: backslash and quote escaped, control characters as \\uXXXX."""
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def toml_text(values: dict, header: str = "") -> str:
    """``key = value`` lines (after ``header``, each of its lines made a comment)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"
