#!/usr/bin/env python3
"""TPM2_Certify through tpm2_send (tpm2_certify 5.4 has no qualifying-data
option). usage: certify.py OBJECT_HANDLE SIGN_HANDLE QUALIFYING_HEX ATTEST_OUT SIG_OUT"""
import struct, subprocess, sys
obj, sign, qd_hex, attest_out, sig_out = sys.argv[1:]
qd = bytes.fromhex(qd_hex)
# TPM_RS_PW, empty nonce, continueSession, empty password: one per handle.
auth = struct.pack(">IHBH", 0x40000009, 0, 0x01, 0)
area = auth * 2
# qualifyingData TPM2B_DATA; inScheme TPMT_SIG_SCHEME = ECDSA (0x0018), SHA256 (0x000B)
params = struct.pack(">H", len(qd)) + qd + struct.pack(">HH", 0x0018, 0x000B)
body = struct.pack(">II", int(obj, 16), int(sign, 16)) + struct.pack(">I", len(area)) + area + params
cmd = struct.pack(">HII", 0x8002, 10 + len(body), 0x00000148) + body
rsp = subprocess.run(["tpm2_send"], input=cmd, capture_output=True, check=True).stdout
tag, size, rc = struct.unpack(">HII", rsp[:10])
if rc != 0:
    sys.exit(f"TPM2_Certify: rc {rc:#x}")
(psize,) = struct.unpack(">I", rsp[10:14])
p = rsp[14:14 + psize]
(asize,) = struct.unpack(">H", p[:2])
open(attest_out, "wb").write(p[2:2 + asize])   # TPMS_ATTEST, no TPM2B size
open(sig_out, "wb").write(p[2 + asize:])        # TPMT_SIGNATURE
