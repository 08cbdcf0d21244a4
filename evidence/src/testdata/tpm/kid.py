#!/usr/bin/env python3
"""kid (RFC 9679 COSE_Key thumbprint) of the P-256 key in a TPM2B_PUBLIC file:
SHA-256 of the deterministic CBOR {1:2, -1:1, -2:x, -3:y}."""
import hashlib, struct, sys
b = open(sys.argv[1], "rb").read()[2:]          # TPMT_PUBLIC
# type, nameAlg, attributes, authPolicy
off = 2 + 2 + 4
(n,) = struct.unpack(">H", b[off:off + 2]); off += 2 + n
# TPMS_ECC_PARMS: symmetric (alg[,keybits,mode]), scheme (alg[,hash]), curve, kdf (alg[,hash])
(sym,) = struct.unpack(">H", b[off:off + 2]); off += 2 + (4 if sym != 0x0010 else 0)
(sch,) = struct.unpack(">H", b[off:off + 2]); off += 2 + (2 if sch != 0x0010 else 0)
off += 2
(kdf,) = struct.unpack(">H", b[off:off + 2]); off += 2 + (2 if kdf != 0x0010 else 0)
(n,) = struct.unpack(">H", b[off:off + 2]); x = b[off + 2:off + 2 + n]; off += 2 + n
(n,) = struct.unpack(">H", b[off:off + 2]); y = b[off + 2:off + 2 + n]
x, y = x.rjust(32, b"\0"), y.rjust(32, b"\0")
cose = bytes.fromhex("a401022001215820") + x + bytes.fromhex("225820") + y
print(hashlib.sha256(cose).hexdigest())
