"""Cross-check of keybridge signed commands with independent COSE code.

Driven by protocol/tests/crosscheck.rs: reads one JSON request on stdin,
writes one JSON answer on stdout. Byte strings travel as hex.

Request:
    {"verify": [CASE...], "sign": [JOB...]}

    CASE  {"name", "envelope", "cose_key", "spki_pem", "kid", "alg",
           "claims", "device", "batch": [device ids] | null}
          An envelope keybridge (Rust) made. Checked here with pycose
          (Sign1Message.decode, verify_signature), with cbor2 (deterministic
          encoding, payload claims, RFC 9679 thumbprint), with `cryptography`
          (the SPKI PEM export, and the signature once more), and, for batch
          envelopes, with the RFC 6962/9162 Merkle tree written below.

    JOB   {"name", "alg", "secret", "cose_key", "claims", "batch": [ids] | null}
          An envelope to make here with pycose for keybridge to verify:
          protected header alg, content type, kid (in that order, so the
          encoding is deterministic), payload built with cbor2 canonical=True,
          for a batch one envelope per device with its "kbp" proof.

    In "claims", "devs" is {"size": n, "root": hex} | null. On the wire it is
    the CBOR array [size, root]: the batch size is signed with the root,
    because the proof's own tree_size is in the unsigned header.

Answer:
    {"verified": [name...], "errors": [text...],
     "signed": [{"name", "envelopes": {device: hex}, "root": hex | null,
                 "size": n | null}]}

Nothing here imports or mirrors the Rust code: the claim encoding, the
thumbprint and the Merkle tree follow DESIGN.md and the RFCs directly.
"""

import hashlib
import json
import sys
from collections.abc import Mapping

import cbor2
import pycose.messages.cosemessage
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pycose.algorithms import EdDSA, Es256
from pycose.headers import KID, Algorithm, ContentType
from pycose.keys import CoseKey
from pycose.messages import Sign1Message

CONTENT_TYPE = "application/keybridge-command+cbor"
PROOF_LABEL = "kbp"
# Order of the P-256 group, for the low-S check.
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def unhex(s):
    return bytes.fromhex(s)


def thaw(v):
    """Tuples back to lists and frozen maps back to dicts, recursively."""
    if isinstance(v, cbor2.CBORTag):
        return cbor2.CBORTag(v.tag, thaw(v.value))
    if isinstance(v, (tuple, list)):
        return [thaw(x) for x in v]
    if isinstance(v, Mapping):
        return {k: thaw(x) for k, x in v.items()}
    return v


# cbor2 6 decodes what is inside a tag as immutable tuples and frozen maps,
# and pycose 1.1 then refuses every tagged message ("Bytes cannot be decoded
# as COSE message", pycose issue #141; the fix is cbor2<6). Until the venv
# pins it, give pycose the cbor2 5 shapes. Nothing else changes: the bytes,
# the signature check and the header parsing are all still pycose's.
if isinstance(cbor2.loads(b"\xd2\x80").value, tuple):

    class _Cbor2Lists:
        def __getattr__(self, name):
            return getattr(cbor2, name)

        @staticmethod
        def loads(data, **kwargs):
            return thaw(cbor2.loads(data, **kwargs))

    pycose.messages.cosemessage.cbor2 = _Cbor2Lists()


# --- claims (DESIGN.md §2) ---------------------------------------------------


def arg_value(v):
    """JSON argument value -> CBOR-ready Python value ({"$bytes": hex} is bytes)."""
    if isinstance(v, dict):
        if set(v) == {"$bytes"}:
            return unhex(v["$bytes"])
        return {k: arg_value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [arg_value(x) for x in v]
    return v  # str, int, bool


def claims_map(c):
    """The claims as the CBOR map DESIGN.md §2 describes (CWT labels 1-7)."""
    m = {
        1: c["iss"],
        2: c["sub"],
        4: c["exp"],
        5: c["nbf"],
        6: c["iat"],
        7: unhex(c["cti"]),
        "cmd": c["cmd"],
    }
    if c.get("aud") is not None:
        m[3] = c["aud"]
    if c.get("args"):
        m["args"] = arg_value(c["args"])
    if c.get("body") is not None:
        m["body"] = unhex(c["body"])
    if c.get("devs") is not None:
        m["devs"] = [c["devs"]["size"], unhex(c["devs"]["root"])]
    return m


# --- keys (RFC 9679) -----------------------------------------------------------


def thumbprint_input(cose_key):
    """RFC 9679 §3: only the required parameters, deterministically encoded."""
    d = cbor2.loads(cose_key)
    kty = d[1]
    required = {1: kty, -1: d[-1], -2: d[-2]}
    if kty == 2:  # EC2 also needs y
        required[-3] = d[-3]
    return cbor2.dumps(required, canonical=True)


def thumbprint(cose_key):
    return hashlib.sha256(thumbprint_input(cose_key)).digest()


# --- Merkle tree (RFC 6962 §2.1, RFC 9162 §2.1.3.2) ---------------------------


def leaf_hash(device_id):
    return hashlib.sha256(b"\x00" + device_id.encode()).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def split(n):
    """Largest power of two strictly smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves):
    """MTH(D[n]) of RFC 6962 §2.1, as stated there."""
    if len(leaves) == 1:
        return leaves[0]
    k = split(len(leaves))
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def path(m, leaves):
    """PATH(m, D[n]) of RFC 6962 §2.1.1, as stated there."""
    if len(leaves) == 1:
        return []
    k = split(len(leaves))
    if m < k:
        return path(m, leaves[:k]) + [mth(leaves[k:])]
    return path(m - k, leaves[k:]) + [mth(leaves[:k])]


def root_from_proof(index, size, proof, leaf):
    """RFC 9162 §2.1.3.2: the root an inclusion proof leads to, or None."""
    if index >= size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return None
        if fn % 2 == 1 or fn == sn:
            r = node_hash(p, r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def batch_ids(ids):
    """Sorted (by UTF-8 bytes, which is code point order), unique."""
    return sorted(set(ids))


# --- direction (a): check what Rust made --------------------------------------


def check(case):
    """Every check of one Rust-made envelope; returns a list of failures."""
    errors = []

    def expect(ok, what):
        if not ok:
            errors.append(f"{case['name']}: {what}")

    env = unhex(case["envelope"])
    cose_key = unhex(case["cose_key"])

    # The whole envelope is deterministic CBOR: tag 18 over a 4-array.
    outer = thaw(cbor2.loads(env))
    expect(isinstance(outer, cbor2.CBORTag) and outer.tag == 18, "tag 18")
    expect(cbor2.dumps(outer, canonical=True) == env, "envelope not deterministic")
    phdr_bytes, uhdr, payload, signature = outer.value

    # pycose: decode and verify with the key from our COSE_Key bytes.
    msg = Sign1Message.decode(env)
    key = CoseKey.decode(cose_key)
    msg.key = key
    expect(msg.verify_signature(), "pycose: signature does not verify")
    alg = msg.phdr.get(Algorithm)
    expect(alg is not None and alg.identifier == case["alg"], f"alg {alg}")
    expect(msg.phdr.get(ContentType) == CONTENT_TYPE, "content type")
    expect(len(msg.phdr) == 3, f"protected header has {len(msg.phdr)} parameters")
    expect(
        cbor2.dumps(cbor2.loads(phdr_bytes), canonical=True) == phdr_bytes,
        "protected header not deterministic",
    )

    # kid: recomputed here as the RFC 9679 thumbprint of the COSE_Key.
    kid = thumbprint(cose_key)
    expect(msg.phdr.get(KID) == kid, "kid is not the RFC 9679 thumbprint")
    expect(kid.hex() == case["kid"], "kid differs from PublicKey::kid")
    expect(cose_key == thumbprint_input(cose_key), "COSE_Key has extra parameters")

    # Payload: the claims Rust was given, deterministically encoded.
    decoded = thaw(cbor2.loads(payload))
    expect(payload == cbor2.dumps(decoded, canonical=True), "payload not canonical")
    expected = claims_map(case["claims"])
    expect(decoded == expected, f"claims differ: {decoded!r} != {expected!r}")
    expect(payload == cbor2.dumps(expected, canonical=True), "payload bytes differ")

    # cryptography: the SPKI PEM export is the same key and verifies too.
    pem = serialization.load_pem_public_key(case["spki_pem"].encode())
    tbs = cbor2.dumps(["Signature1", phdr_bytes, b"", payload])
    try:
        if case["alg"] == -8:
            expect(isinstance(pem, ed25519.Ed25519PublicKey), "PEM is not Ed25519")
            raw = pem.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            expect(raw == key.x, "PEM and COSE_Key differ")
            pem.verify(signature, tbs)
        else:
            expect(
                isinstance(pem, ec.EllipticCurvePublicKey) and pem.curve.name == "secp256r1",
                "PEM is not P-256",
            )
            nums = pem.public_numbers()
            expect(
                nums.x.to_bytes(32, "big") == key.x and nums.y.to_bytes(32, "big") == key.y,
                "PEM and COSE_Key differ",
            )
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            expect(s <= P256_N // 2, "ES256 signature is not low-S")
            pem.verify(encode_dss_signature(r, s), tbs, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        expect(False, "cryptography: signature does not verify")

    # Batch: the proof in the unprotected header against "devs".
    if case["batch"] is None:
        expect(uhdr == {}, f"unprotected header {uhdr!r}")
        expect(decoded.get(3) == case["device"], "aud")
    else:
        # devs is [size, root], both recomputed here from the ids alone.
        ids = batch_ids(case["batch"])
        leaves = [leaf_hash(i) for i in ids]
        root = mth(leaves)
        devs = decoded.get("devs")
        shaped = isinstance(devs, list) and len(devs) == 2
        expect(shaped, f"devs is not a [size, root] array: {devs!r}")
        signed_size, signed_root = devs if shaped else (None, None)
        expect(signed_root == root, "devs root is not the MTH of the ids")
        expect(
            type(signed_size) is int and signed_size == len(ids),
            f"devs size {signed_size!r} is not the number of ids ({len(ids)})",
        )
        expect(set(uhdr) == {PROOF_LABEL}, f"unprotected header {uhdr!r}")
        index, size, proof = uhdr[PROOF_LABEL]
        m = ids.index(case["device"])
        expect((index, size) == (m, len(ids)), f"proof index/size {index}/{size}")
        expect(size == signed_size, f"proof tree_size {size} is not the signed size")
        expect(proof == path(m, leaves), "proof is not PATH(m, D[n])")
        own = root_from_proof(index, size, proof, leaf_hash(case["device"]))
        expect(own == root, "proof does not lead to devs")
    return errors


# --- direction (b): make envelopes for Rust ------------------------------------


def signing_key(job):
    cose = cbor2.loads(unhex(job["cose_key"]))
    secret = unhex(job["secret"])
    if job["alg"] == "ed25519":
        return CoseKey.from_dict({1: 1, -1: 6, -2: cose[-2], -4: secret}), EdDSA
    return CoseKey.from_dict({1: 2, -1: 1, -2: cose[-2], -3: cose[-3], -4: secret}), Es256


def sign(job):
    key, alg = signing_key(job)
    kid = thumbprint(unhex(job["cose_key"]))
    claims = claims_map(job["claims"])
    devices = {}
    root = None
    size = None
    if job["batch"] is None:
        targets = [(job["claims"]["aud"], {})]
    else:
        ids = batch_ids(job["batch"])
        leaves = [leaf_hash(i) for i in ids]
        root = mth(leaves)
        size = len(ids)
        claims["devs"] = [size, root]
        targets = [
            (d, {PROOF_LABEL: [m, len(ids), path(m, leaves)]}) for m, d in enumerate(ids)
        ]
    payload = cbor2.dumps(claims, canonical=True)
    for device, uhdr in targets:
        # Insertion order alg (1), content type (3), kid (4) is the
        # deterministic order; pycose encodes the dict as it is.
        phdr = {Algorithm: alg, ContentType: CONTENT_TYPE, KID: kid}
        msg = Sign1Message(phdr=phdr, uhdr=uhdr, payload=payload, key=key)
        devices[device] = msg.encode().hex()
    return {
        "name": job["name"],
        "envelopes": devices,
        "root": root.hex() if root else None,
        "size": size,
    }


def main():
    request = json.load(sys.stdin)
    verified, errors = [], []
    for case in request["verify"]:
        try:
            problems = check(case)
        except Exception as e:  # a crash is a failed check, not a crash of the run
            problems = [f"{case['name']}: {type(e).__name__}: {e}"]
        errors.extend(problems)
        if not problems:
            verified.append(case["name"])
    signed = [sign(job) for job in request["sign"]]
    json.dump({"verified": verified, "errors": errors, "signed": signed}, sys.stdout)


if __name__ == "__main__":
    main()
