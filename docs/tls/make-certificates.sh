#!/usr/bin/env bash
# Make a private CA, a server certificate and a client certificate with openssl, for routee-callbacks' TLS
# options. The end-to-end tests run this very script (tests/e2e/test_tls.py).
#
#   docs/tls/make-certificates.sh DIR [SERVER_NAME ...]
#
# DIR gets ca.crt/ca.key (the CA), server.crt/server.key (for --http-tls-cert/--http-tls-key and
# --grpc-tls-cert/--grpc-tls-key; valid for localhost, 127.0.0.1 and every SERVER_NAME), and client.crt/
# client.key (for clients when the service runs with --grpc-client-ca DIR/ca.crt). Run it again with
# ROTATE=1 to renew only the server certificate (same CA, new key), as cert-manager or certbot would.
set -euo pipefail
dir=${1:?usage: make-certificates.sh DIR [SERVER_NAME ...]}
shift
mkdir -p "$dir"
cd "$dir"
umask 077  # Private keys readable by their owner only.

names="DNS:localhost,IP:127.0.0.1,IP:::1"
for name in "$@"; do names="$names,DNS:$name"; done

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [[ -z "${ROTATE:-}" ]]; then
    key ca.key
    openssl req -x509 -new -key ca.key -out ca.crt -days 825 -subj "/CN=routee-callbacks private CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
fi

sign() {  # sign NAME SUBJECT EXTENSIONS
    key "$1.key.new"
    openssl req -new -key "$1.key.new" -out "$1.csr" -subj "$2"
    printf '%s\n' "$3" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 90 -out "$1.crt.new" \
        -extfile "$1.ext" 2>/dev/null
    mv "$1.key.new" "$1.key"  # Key first, then the certificate: the service reloads when both match.
    mv "$1.crt.new" "$1.crt"
    rm -f "$1.csr" "$1.ext"
}

sign server "/CN=routee-callbacks" "subjectAltName=$names
extendedKeyUsage=serverAuth"
if [[ -z "${ROTATE:-}" ]]; then
    sign client "/CN=routee-callbacks client" "extendedKeyUsage=clientAuth"
fi
chmod 644 ./*.crt
echo "certificates in $dir"
