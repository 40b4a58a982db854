#!/usr/bin/env bash
# A test CA and certificates for the TLS suites, made with openssl in DIR:
#   ca.pem            the CA the servers' and client's certificates are signed by
#   server.pem/.key   the servers' certificate, valid for localhost and 127.0.0.1
#   client.pem/.key   a client certificate for mutual TLS
#   other-ca.pem      a second CA that signed nothing here (a client trusting only it
#                     must refuse the servers)
# Usage: scripts/tls-certs.sh DIR   (existing files are replaced)
set -euo pipefail
dir=${1:?usage: scripts/tls-certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
days=30
ssl() { openssl "$@" 2>/dev/null; }

ca() { # name subject
  ssl req -x509 -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.pem" -days "$days" \
    -subj "/CN=$2" -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}
leaf() { # name subject extensions
  ssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2"
  printf '%s\n' "$3" >"$1.ext"
  ssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.pem" \
    -days "$days" -extfile "$1.ext"
  rm -f "$1.csr" "$1.ext"
}

ca ca "sluice test CA"
ca other-ca "sluice other test CA"
leaf server localhost "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth
keyUsage=critical,digitalSignature,keyEncipherment"
leaf client sluice-test-client "extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature,keyEncipherment"
# RabbitMQ and Redis run as this user and read the keys; the suites' processes too.
chmod 600 ./*.key
rm -f other-ca.key ca.srl
echo "tls-certs: CA and certificates in $dir"
