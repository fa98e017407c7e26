"""Cross-check Hestia's sessions against implementations nobody on the team wrote.

The PyPI packages `x3dh` and `doubleratchet` (Syndace's python-x3dh / python-doubleratchet)
implement Signal's X3DH and Double Ratchet specifications with pluggable primitives. Here they are
configured with Hestia's parameters and talk to the Rust side (the `xcheck-peer` binary, which
uses only hestia-protocol's public API) in both directions:

  1. Python initiates X3DH from the Rust bundle and sends; Rust replies; several round trips,
     with messages delivered out of order both ways.
  2. Rust initiates X3DH from a Python bundle; the same exchange the other way round.

Where their model forces a difference (documented in docs/protocol.md): `doubleratchet` 1.3
implements the specification's plain variant, without header encryption. This harness adds
header encryption around it and nothing else: Hestia's root KDF yields 96 bytes, of which the
package's root chain consumes the first 64 (identical to a 64-byte HKDF with the same inputs,
since HKDF-Expand is prefix-consistent); the harness's KDF class records the last 32 (the next
header key) as the package steps its root chain, and encrypts/decrypts the 40-byte header with
XChaCha20-Poly1305 under the keys the specification prescribes. Everything else -- X3DH, the root
and chain KDFs, the DH ratchet, skipped message keys, the message AEAD's associated data -- is
the packages' own code with Hestia's parameters.

Usage: crosscheck.py <path to xcheck-peer>. Exits non-zero on the first disagreement.
"""

import asyncio
import json
import os
import subprocess
import sys

try:
    import nacl.bindings as sodium
    import x3dh
    import doubleratchet
    from doubleratchet.recommended import (
        HashFunction as DRHash,
        diffie_hellman_ratchet_curve25519,
        kdf_hkdf,
        kdf_separate_hmacs,
    )
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
except ImportError as e:  # pragma: no cover - reported to the Rust test
    print(f"crosscheck: missing Python package ({e}); run scripts/setup.sh", file=sys.stderr)
    sys.exit(3)

X3DH_INFO = b"Hestia X3DH v1"
ROOT_INFO = b"Hestia DR root v1"
HEADER_KEYS_INFO = b"Hestia DR header keys v1"
MAX_SKIP = 1000
MAX_SKIPPED_PER_SESSION = 2000


def hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


# ---- X3DH: the package's BaseState with Hestia's public key encoding ----------------------------

class State(x3dh.BaseState):
    @staticmethod
    def _encode_public_key(key_format: x3dh.IdentityKeyFormat, pub: bytes) -> bytes:
        # Signal's Encode(PK): one type byte, then the key. 0x05 = Curve25519, 0xED = Ed25519.
        return (b"\x05" if key_format is x3dh.IdentityKeyFormat.CURVE_25519 else b"\xED") + pub


def new_state() -> State:
    state = State.create(x3dh.IdentityKeyFormat.ED_25519, x3dh.HashFunction.SHA_256, X3DH_INFO)
    state.generate_pre_keys(1)
    return state


# ---- Double Ratchet: the package with Hestia's KDFs and AEAD -----------------------------------

ROOT_STEPS = []  # next header keys recorded as the package steps its root chain


class RootKDF(kdf_hkdf.KDF):
    """HKDF-SHA256(salt = root key, ikm = DH output, info = ROOT_INFO), 96 bytes; the package
    gets the first 64 (root key, chain key), the harness records the last 32 (header key)."""

    @staticmethod
    def _get_hash_function() -> DRHash:
        return DRHash.SHA_256

    @staticmethod
    def _get_info() -> bytes:
        return ROOT_INFO

    @classmethod
    async def derive(cls, key: bytes, data: bytes, length: int) -> bytes:
        assert length == 64
        out = hkdf(key, data, ROOT_INFO, 96)
        ROOT_STEPS.append(out[64:])
        return out[:64]


class ChainKDF(kdf_separate_hmacs.KDF):
    @staticmethod
    def _get_hash_function() -> DRHash:
        return DRHash.SHA_256


class Aead(doubleratchet.AEAD):
    """XChaCha20-Poly1305 with the one-use message key and a fixed all-zero nonce (the
    specification's "fixed to a constant" option)."""

    NONCE = b"\x00" * 24

    @staticmethod
    async def encrypt(plaintext: bytes, key: bytes, associated_data: bytes) -> bytes:
        return sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, associated_data, Aead.NONCE, key)

    @staticmethod
    async def decrypt(ciphertext: bytes, key: bytes, associated_data: bytes) -> bytes:
        try:
            return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, associated_data, Aead.NONCE, key)
        except Exception as e:
            raise doubleratchet.AuthenticationFailedException(str(e)) from e


ENC_HEADER = {"current": None}  # the encrypted header the AEAD's associated data binds


class DoubleRatchet(doubleratchet.DoubleRatchet):
    @staticmethod
    def _build_associated_data(associated_data: bytes, header: doubleratchet.Header) -> bytes:
        # Header-encryption variant: AD || encrypted header.
        return associated_data + ENC_HEADER["current"]


DR_CONFIG = dict(
    diffie_hellman_ratchet_class=diffie_hellman_ratchet_curve25519.DiffieHellmanRatchet,
    root_chain_kdf=RootKDF,
    message_chain_kdf=ChainKDF,
    message_chain_constant=b"\x02\x01",  # chain key = HMAC(ck, 0x02), message key = HMAC(ck, 0x01)
    dos_protection_threshold=MAX_SKIP,
    max_num_skipped_message_keys=MAX_SKIPPED_PER_SESSION,
    aead=Aead,
)


# ---- Header encryption (the part the package does not implement) ------------------------------

def header_bytes(h: doubleratchet.Header) -> bytes:
    return h.ratchet_pub + h.previous_sending_chain_length.to_bytes(4, "big") + h.sending_chain_length.to_bytes(4, "big")


def hencrypt(hk: bytes, h: doubleratchet.Header, ad: bytes) -> bytes:
    nonce = os.urandom(24)
    return nonce + sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(header_bytes(h), ad, nonce, hk)


def hdecrypt(hk, enc: bytes, ad: bytes):
    if hk is None or len(enc) != 80:
        return None
    try:
        plain = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(enc[24:], ad, enc[:24], hk)
    except Exception:
        return None
    return doubleratchet.Header(plain[:32], int.from_bytes(plain[32:36], "big"), int.from_bytes(plain[36:40], "big"))


class Peer:
    """One side of a session: the packages' X3DH state and Double Ratchet, plus header keys."""

    def __init__(self):
        self.state = new_state()
        self.dr = None
        self.ad = None
        self.hks = self.hkr = self.nhks = self.nhkr = None
        self.old_hkr = []  # receiving header keys of earlier chains (for late messages)
        self.prekey = None  # X3DH header to attach until the first reply

    def bundle_json(self):
        b = self.state.bundle
        return {
            "identity": b.identity_key.hex(),
            "signed_prekey": b.signed_pre_key.hex(),
            "signature": b.signed_pre_key_sig.hex(),
            "one_time": next(iter(b.pre_keys)).hex(),
        }

    async def initiate(self, rust_bundle, first_text: bytes):
        bundle = x3dh.Bundle(
            identity_key=bytes.fromhex(rust_bundle["identity"]),
            signed_pre_key=bytes.fromhex(rust_bundle["signed_prekey"]),
            signed_pre_key_sig=bytes.fromhex(rust_bundle["signature"]),
            pre_keys=frozenset([bytes.fromhex(rust_bundle["one_time"])]),
        )
        shared, ad, header = await self.state.get_shared_secret_active(bundle)
        self.ad = ad
        hk = hkdf(b"\x00" * 32, shared, HEADER_KEYS_INFO, 64)
        self.hks, self.nhkr = hk[:32], hk[32:]
        self.prekey = {
            "identity": header.identity_key.hex(),
            "ephemeral": header.ephemeral_key.hex(),
            "signed_prekey": header.signed_pre_key.hex(),
            "one_time": header.pre_key.hex() if header.pre_key else None,
        }
        ROOT_STEPS.clear()
        pending = {}

        class Capture(DoubleRatchet):
            @staticmethod
            def _build_associated_data(associated_data, h):
                pending["enc"] = hencrypt(self.hks, h, self.ad)
                return associated_data + pending["enc"]

        dr, msg = await Capture.encrypt_initial_message(
            shared_secret=shared, recipient_ratchet_pub=bundle.signed_pre_key,
            message=first_text, associated_data=ad, **DR_CONFIG)
        (self.nhks,) = ROOT_STEPS
        # Keep the package's state, under the class that reads the header from ENC_HEADER.
        self.dr = DoubleRatchet.from_model(dr.model, **DR_CONFIG)
        return self.wire(pending["enc"], msg.ciphertext)

    def wire(self, enc_header, ciphertext):
        return {"prekey": self.prekey, "header": enc_header.hex(), "ciphertext": ciphertext.hex()}

    async def encrypt(self, text: bytes):
        pending = {}
        peer = self

        class Capture(DoubleRatchet):
            @staticmethod
            def _build_associated_data(associated_data, header):
                pending["enc"] = hencrypt(peer.hks, header, peer.ad)
                return associated_data + pending["enc"]

        dr = Capture.from_model(self.dr.model, **DR_CONFIG)
        msg = await dr.encrypt_message(text, self.ad)
        self.dr = DoubleRatchet.from_model(dr.model, **DR_CONFIG)
        return self.wire(pending["enc"], msg.ciphertext)

    async def decrypt(self, wire):
        enc = bytes.fromhex(wire["header"])
        ct = bytes.fromhex(wire["ciphertext"])
        ENC_HEADER["current"] = enc
        ROOT_STEPS.clear()
        if self.dr is None:
            # Responder: X3DH from the prekey header, then the package's initial decryption.
            p = wire["prekey"]
            xh = x3dh.Header(
                identity_key=bytes.fromhex(p["identity"]),
                ephemeral_key=bytes.fromhex(p["ephemeral"]),
                signed_pre_key=bytes.fromhex(p["signed_prekey"]),
                pre_key=bytes.fromhex(p["one_time"]) if p["one_time"] else None,
            )
            shared, ad, spk = await self.state.get_shared_secret_passive(xh)
            self.ad = ad
            hk = hkdf(b"\x00" * 32, shared, HEADER_KEYS_INFO, 64)
            hka, nhkb = hk[:32], hk[32:]
            h = hdecrypt(hka, enc, ad)
            assert h is not None, "initial header does not open under the initiator's header key"
            self.dr, plain = await DoubleRatchet.decrypt_initial_message(
                shared_secret=shared, own_ratchet_priv=spk.priv,
                message=doubleratchet.EncryptedMessage(h, ct), associated_data=ad, **DR_CONFIG)
            self.state.delete_pre_key(xh.pre_key)
            self.hks, self.hkr = nhkb, hka
            self.nhkr, self.nhks = ROOT_STEPS
            return plain
        for hk in [self.hkr] + self.old_hkr:
            h = hdecrypt(hk, enc, self.ad)
            if h is not None:
                plain = await self.dr.decrypt_message(doubleratchet.EncryptedMessage(h, ct), self.ad)
                assert not ROOT_STEPS, "no DH ratchet step within a chain"
                return plain
        h = hdecrypt(self.nhkr, enc, self.ad)
        assert h is not None, "header opens under no header key"
        plain = await self.dr.decrypt_message(doubleratchet.EncryptedMessage(h, ct), self.ad)
        # The package stepped its DH ratchet: receiving chain, then sending chain.
        if self.hkr is not None:
            self.old_hkr.append(self.hkr)
        self.hks, self.hkr = self.nhks, self.nhkr
        self.nhkr, self.nhks = ROOT_STEPS
        self.prekey = None
        return plain


# ---- Driving the Rust side ---------------------------------------------------------------------

class Rust:
    def __init__(self, exe):
        self.p = subprocess.Popen([exe], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def call(self, **req):
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()
        resp = json.loads(self.p.stdout.readline())
        if "error" in resp:
            raise SystemExit(f"crosscheck: Rust side refused {req['op']}: {resp['error']}")
        return resp

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=10)


def check(got: bytes, want: bytes, what: str):
    if got != want:
        raise SystemExit(f"crosscheck: {what}: got {got!r}, want {want!r}")


async def exchange(py: Peer, rust: Rust, label: str, rounds: int = 4):
    """Round trips in both directions; each batch is delivered out of order."""
    for r in range(rounds):
        texts = [f"{label} py->rs {r}.{i}".encode() for i in range(3)]
        msgs = [await py.encrypt(t) for t in texts]
        for i in (2, 0, 1):
            got = bytes.fromhex(rust.call(op="decrypt", message=msgs[i])["plaintext"])
            check(got, texts[i], f"Rust decrypting Python's message {r}.{i}")
        if r == 1:
            rust.call(op="stored")  # the Rust session survives its stored form mid-conversation
        texts = [f"{label} rs->py {r}.{i}".encode() for i in range(3)]
        msgs = [rust.call(op="encrypt", text=t.hex()) for t in texts]
        for i in (1, 2, 0):
            check(await py.decrypt(msgs[i]), texts[i], f"Python decrypting Rust's message {r}.{i}")


async def main(exe):
    # 1. Python initiates from Rust's bundle.
    rust = Rust(exe)
    py = Peer()
    first = await py.initiate(rust.call(op="bundle"), b"hello from python")
    check(bytes.fromhex(rust.call(op="decrypt", message=first)["plaintext"]), b"hello from python",
          "Rust decrypting Python's X3DH-initial message")
    await exchange(py, rust, "A")
    rust.close()

    # 2. Rust initiates from Python's bundle.
    rust = Rust(exe)
    py = Peer()
    rust.call(op="initiate", bundle=py.bundle_json())
    first = rust.call(op="encrypt", text=b"hello from rust".hex())
    second = rust.call(op="encrypt", text=b"second before any reply".hex())
    check(await py.decrypt(first), b"hello from rust", "Python decrypting Rust's X3DH-initial message")
    check(await py.decrypt(second), b"second before any reply", "Python decrypting Rust's second message")
    # Python answers; Rust must accept it and stop sending the X3DH header.
    reply = await py.encrypt(b"reply from python")
    check(bytes.fromhex(rust.call(op="decrypt", message=reply)["plaintext"]), b"reply from python",
          "Rust decrypting Python's first reply")
    after = rust.call(op="encrypt", text=b"after reply".hex())
    if after["prekey"] is not None:
        raise SystemExit("crosscheck: Rust still attaches the X3DH header after a reply")
    check(await py.decrypt(after), b"after reply", "Python decrypting after reply")
    await exchange(py, rust, "B")
    rust.close()
    print("crosscheck: x3dh %s + doubleratchet %s agree with Hestia in both directions"
          % (x3dh.__version__, doubleratchet.__version__))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
