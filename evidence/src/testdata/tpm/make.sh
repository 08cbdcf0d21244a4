#!/bin/sh
# Makes the TPM2_Certify fixtures of keybridge-evidence's tpm.rs tests (and
# of the differential test against tss-esapi in keybridge-backends'
# tpm/attestation.rs, which reads them from here) on two software TPMs
# (swtpm 0.7, tpm2-tools 5.4), then stops them:
#   plain/  a TPM without EK certificate (like most firmware TPMs); its AK
#           is the restricted P-256 primary in the endorsement hierarchy
#           that keybridge's backend makes;
#   ek/     a TPM with EK certificates from a private swtpm-localca (RSA
#           2048 EK cert at 0x01c00002, ECC P-384 at 0x01c00016); its AK is
#           tpm2_createak's child of an ECC EK. roots.pem is that CA (root
#           and intermediate), foreign-roots.pem another one with the same
#           names.
# tpm2_certify 5.4 cannot pass qualifying data, so certify.py sends
# TPM2_Certify itself through tpm2_send; kid.py computes the kid (RFC 9679
# thumbprint) that goes in it. Usage: sh make.sh (from this directory).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d /tmp/keybridge-attest.XXXXXX)
PIDS=""
trap 'for p in $PIDS; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"' EXIT

# A private CA for swtpm_setup, so nothing under /var/lib is touched.
ca_config() { # dir
  mkdir -p "$1/ca"
  cat > "$1/localca.conf" <<CONF
statedir = $1/ca
signingkey = $1/ca/signkey.pem
issuercert = $1/ca/issuercert.pem
certserial = $1/ca/certserial
CONF
  cat > "$1/setup.conf" <<CONF
create_certs_tool = /usr/bin/swtpm_localca
create_certs_tool_config = $1/localca.conf
create_certs_tool_options = /etc/swtpm-localca.options
active_pcr_banks = sha256
CONF
}
start() { # state dir, port
  swtpm socket --tpm2 --server type=tcp,port=$2,bindaddr=127.0.0.1 \
    --ctrl type=tcp,port=$(($2 + 1)),bindaddr=127.0.0.1 \
    --tpmstate dir="$1" --flags not-need-init,startup-clear &
  PIDS="$PIDS $!"
  sleep 1
  export TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port=$2
}
# The key keybridge makes (no PIN here), under the owner primary, made
# persistent at $1 so that certify.py can name it.
make_key() { # handle, name, attributes
  tpm2_create -C o.ctx -G ecc256:ecdsa-sha256:null -a "$3" -u "$2.pub" -r "$2.priv" >/dev/null
  tpm2_flushcontext -t
  tpm2_load -C o.ctx -u "$2.pub" -r "$2.priv" -c "$2.ctx" >/dev/null
  tpm2_evictcontrol -C o -c "$2.ctx" "$1" >/dev/null
  tpm2_flushcontext -t
  tail -c +3 "$2.pub" > "$2-public.bin" # TPM2B_PUBLIC → TPMT_PUBLIC
}
KEY_ATTRS='fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign'

# plain/
mkdir -p "$W/plain" "$HERE/plain" && cd "$W/plain"
start "$W/plain" 47431
tpm2_createprimary -C e -g sha256 -G ecc256:ecdsa-sha256:null \
  -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|sign' -c ak.ctx >/dev/null
tpm2_readpublic -c ak.ctx -o ak.pub -n ak.name >/dev/null
tail -c +3 ak.pub > ak-public.bin
tpm2_evictcontrol -C o -c ak.ctx 0x81000010 >/dev/null
tpm2_flushcontext -t
tpm2_createprimary -C o -g sha256 -G ecc -c o.ctx >/dev/null
tpm2_flushcontext -t
make_key 0x81000011 key "$KEY_ATTRS"
make_key 0x81000012 movable 'sensitivedataorigin|userwithauth|sign' # may be duplicated
KID=$("$HERE/kid.py" key.pub)
MKID=$("$HERE/kid.py" movable.pub)
"$HERE/certify.py" 0x81000011 0x81000010 "$KID" attest.bin signature.bin
"$HERE/certify.py" 0x81000012 0x81000010 "$MKID" movable-attest.bin movable-signature.bin
# the right key, certified for another key record
"$HERE/certify.py" 0x81000011 0x81000010 "$MKID" other-kid-attest.bin other-kid-signature.bin
cp attest.bin signature.bin ak-public.bin ak.name key-public.bin movable-attest.bin \
  movable-signature.bin movable-public.bin other-kid-attest.bin other-kid-signature.bin "$HERE/plain/"

# ek/
mkdir -p "$W/ek/state" "$HERE/ek" && cd "$W/ek"
ca_config "$W/ek"
swtpm_setup --tpm2 --create-ek-cert --ecc --tpmstate "$W/ek/state" --config "$W/ek/setup.conf" >/dev/null
start "$W/ek/state" 47441
tpm2_nvread 0x01c00002 -o ek-rsa.der 2>/dev/null
tpm2_nvread 0x01c00016 -o ek-ecc384.der 2>/dev/null
tpm2_createek -G ecc -c ek.ctx
tpm2_flushcontext -t
tpm2_createak -C ek.ctx -G ecc -g sha256 -s ecdsa -c ak.ctx -u ak.pub -n ak.name >/dev/null
tpm2_flushcontext -t
tpm2_flushcontext -s
tail -c +3 ak.pub > ak-public.bin
tpm2_evictcontrol -C o -c ak.ctx 0x81000020 >/dev/null
tpm2_flushcontext -t
tpm2_createprimary -C o -g sha256 -G ecc -c o.ctx >/dev/null
tpm2_flushcontext -t
make_key 0x81000021 key "$KEY_ATTRS"
"$HERE/certify.py" 0x81000021 0x81000020 "$("$HERE/kid.py" key.pub)" attest.bin signature.bin
cp attest.bin signature.bin ak-public.bin ak.name key-public.bin ek-rsa.der ek-ecc384.der "$HERE/ek/"
cat ca/swtpm-localca-rootca-cert.pem ca/issuercert.pem > "$HERE/ek/roots.pem"

# foreign-roots.pem: another swtpm-localca, same names, other keys.
mkdir -p "$W/foreign/state"
ca_config "$W/foreign"
swtpm_setup --tpm2 --create-ek-cert --tpmstate "$W/foreign/state" --config "$W/foreign/setup.conf" >/dev/null
cat "$W/foreign/ca/swtpm-localca-rootca-cert.pem" "$W/foreign/ca/issuercert.pem" > "$HERE/ek/foreign-roots.pem"
chmod 644 "$HERE"/plain/* "$HERE"/ek/*
