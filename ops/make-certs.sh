#!/usr/bin/env bash
# Makes a development certificate authority and one certificate per name, for ShardPipe's mutual TLS
# (Akka.Remote and both side channels use the same node certificate; peers must present one the CA issued).
#
#   SHARDPIPE_TLS_PASSWORD=secret ops/make-certs.sh OUT_DIR node-1 node-2 node-3 client
#
# Writes OUT_DIR/ca.crt (PEM: what every node and client trusts), OUT_DIR/ca.key (keep it off the nodes), and for
# each name OUT_DIR/NAME.p12 (PKCS#12: certificate + private key, encrypted with $SHARDPIPE_TLS_PASSWORD). Each
# certificate is valid for client and server authentication, for the name, localhost and 127.0.0.1 (add more with
# SHARDPIPE_TLS_SAN="DNS:host.example,IP:10.0.0.5"). An existing ca.crt/ca.key in OUT_DIR is reused, so more nodes
# can be added later. Needs openssl (Debian: apt-get install openssl).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: SHARDPIPE_TLS_PASSWORD=… $0 OUT_DIR NAME [NAME…]" >&2
  exit 2
fi
: "${SHARDPIPE_TLS_PASSWORD:?set SHARDPIPE_TLS_PASSWORD: it encrypts each .p12 and nodes read it from there}"
command -v openssl >/dev/null || { echo "openssl not found (apt-get install openssl)" >&2; exit 2; }
out=$1; shift
days=${SHARDPIPE_TLS_DAYS:-825}
mkdir -p "$out"
umask 077
if [ ! -f "$out/ca.key" ] || [ ! -f "$out/ca.crt" ]; then
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days "$days" \
    -subj "/CN=ShardPipe development CA" -keyout "$out/ca.key" -out "$out/ca.crt" \
    -addext "basicConstraints=critical,CA:true" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  echo "CA: $out/ca.crt" >&2
fi
for name in "$@"; do
  tmp=$(mktemp -d)
  san="DNS:$name,DNS:localhost,IP:127.0.0.1${SHARDPIPE_TLS_SAN:+,$SHARDPIPE_TLS_SAN}"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -subj "/CN=$name" \
    -keyout "$tmp/key.pem" -out "$tmp/req.csr" 2>/dev/null
  printf 'basicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature,keyAgreement\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$san" > "$tmp/ext.cnf"
  openssl x509 -req -in "$tmp/req.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial -sha256 -days "$days" \
    -extfile "$tmp/ext.cnf" -out "$tmp/cert.pem" 2>/dev/null
  openssl pkcs12 -export -inkey "$tmp/key.pem" -in "$tmp/cert.pem" -name "$name" \
    -passout env:SHARDPIPE_TLS_PASSWORD -out "$out/$name.p12"
  rm -rf "$tmp"
  echo "$name: $out/$name.p12" >&2
done
chmod 644 "$out/ca.crt"
