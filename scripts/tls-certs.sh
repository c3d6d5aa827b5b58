#!/usr/bin/env bash
# Makes the certificates for NBD over TLS with openssl, in the layout qemu, libnbd and nbdkit
# read from a directory: ca-cert.pem in every directory, server-cert.pem and server-key.pem in
# the server's, client-cert.pem and client-key.pem in a client's. The tests use it too.
#
#   scripts/tls-certs.sh ca DIR [NAME]           a CA: DIR/ca-cert.pem, DIR/ca-key.pem (keep
#                                                ca-key.pem away from the servers and clients)
#   scripts/tls-certs.sh server DIR CADIR SAN    a server certificate signed by the CA in CADIR,
#                                                for the names in SAN, such as
#                                                IP:192.0.2.10,DNS:storage1.example.com
#   scripts/tls-certs.sh client DIR CADIR [NAME] a client certificate signed by the CA in CADIR
#
# server and client also copy the CA's certificate into DIR as ca-cert.pem. Keys are ECDSA
# P-256 and readable by their owner only; certificates are valid for $TLS_DAYS days (3650).
# Then: snapvol serve --tls-cert DIR/server-cert.pem --tls-key DIR/server-key.pem \
#           [--tls-ca DIR/ca-cert.pem]
set -euo pipefail

days=${TLS_DAYS:-3650}

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

new_key() {
    (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1")
}

# signed DIR CADIR NAME KEY CERT EXTENSIONS...: a certificate for NAME signed by the CA.
signed() {
    local dir=$1 ca=$2 name=$3 key=$4 cert=$5
    shift 5
    [[ -f "$ca/ca-cert.pem" && -f "$ca/ca-key.pem" ]] ||
        { echo "tls-certs.sh: no CA in $ca (make one with: $0 ca $ca)" >&2; exit 1; }
    mkdir -p "$dir"
    new_key "$dir/$key"
    local ext=()
    # qemu also wants keyEncipherment in the key usage of the certificates it is given.
    for e in basicConstraints=critical,CA:FALSE keyUsage=critical,digitalSignature,keyEncipherment "$@"; do
        ext+=(-addext "$e")
    done
    openssl req -x509 -new -key "$dir/$key" -CA "$ca/ca-cert.pem" -CAkey "$ca/ca-key.pem" \
        -days "$days" -subj "/CN=$name" "${ext[@]}" -out "$dir/$cert"
    if [[ ! "$ca/ca-cert.pem" -ef "$dir/ca-cert.pem" ]]; then
        cp "$ca/ca-cert.pem" "$dir/ca-cert.pem"
    fi
}

[[ $# -ge 2 ]] || usage
kind=$1 dir=$2
case "$kind" in
ca)
    [[ $# -le 3 ]] || usage
    mkdir -p "$dir"
    new_key "$dir/ca-key.pem"
    openssl req -x509 -new -key "$dir/ca-key.pem" -days "$days" -subj "/CN=${3:-snapvol CA}" \
        -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign \
        -out "$dir/ca-cert.pem"
    ;;
server)
    [[ $# -eq 4 ]] || usage
    san=$4
    # The common name is the first name of the SAN list, without its IP:/DNS: prefix.
    first=${san%%,*}
    signed "$dir" "$3" "${first#*:}" server-key.pem server-cert.pem \
        "subjectAltName=$san" extendedKeyUsage=serverAuth
    ;;
client)
    [[ $# -ge 3 && $# -le 4 ]] || usage
    signed "$dir" "$3" "${4:-snapvol client}" client-key.pem client-cert.pem \
        extendedKeyUsage=clientAuth
    ;;
*)
    usage
    ;;
esac
