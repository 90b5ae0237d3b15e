"""X25519 (wire.x25519) against RFC 7748's test vectors, and against wg's own keys."""

import base64
import shutil
import subprocess

import pytest

from spines_kr.wire.x25519 import clamp, public_key, x25519


def h(s: str) -> bytes:
    return bytes.fromhex(s)


def test_rfc7748_section_5_2_vectors():
    assert x25519(h("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"),
                  h("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")) == \
        h("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")
    assert x25519(h("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d"),
                  h("e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493")) == \
        h("95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957")


def test_rfc7748_iterations():
    k = u = (9).to_bytes(32, "little")
    k, u = x25519(k, u), k
    assert k == h("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")


def test_rfc7748_section_6_1_exchange():
    a = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    b = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    assert public_key(a) == h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert public_key(b) == h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert x25519(a, public_key(b)) == x25519(b, public_key(a)) == shared


def test_clamp_and_lengths():
    assert clamp(bytes(32))[0] == 0 and clamp(bytes(32))[31] == 64
    assert clamp(b"\xff" * 32)[0] == 248 and clamp(b"\xff" * 32)[31] == 127
    with pytest.raises(ValueError):
        public_key(bytes(31))


@pytest.mark.skipif(shutil.which("wg") is None, reason="wireguard-tools not installed")
def test_agrees_with_wg_pubkey():
    priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
    pub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert base64.b64encode(public_key(base64.b64decode(priv))).decode() == pub
