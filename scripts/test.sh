#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, and the whole test suite (release build, because
# the property tests are heavy). Installs what is missing first. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Tools the tests need besides the Rust toolchain, as "command:debian-package": the real NBD
# clients the server is tested with, and what the TLS tests make certificates with.
NEEDED=(
    "qemu-img:qemu-utils" "qemu-io:qemu-utils"
    "nbdinfo:libnbd-bin" "nbdcopy:libnbd-bin" "nbdfuse:libnbd-bin"
    "fio:fio"
    # The TLS tests: certificates made with openssl (scripts/tls-certs.sh), fio run as nobody.
    "openssl:openssl" "setpriv:util-linux"
    # contrib/snapvol.service is checked with systemd-analyze verify (systemd need not run).
    "systemd-analyze:systemd"
)

step() { printf '\n==> %s\n' "$*"; }
current="setup"
trap 'echo "test.sh: FAILED during: $current" >&2' ERR

install_missing() {
    local entry missing=()
    for entry in "${NEEDED[@]}"; do
        command -v "${entry%%:*}" >/dev/null 2>&1 || missing+=("${entry#*:}")
    done
    # The scripted NBD clients of the serve tests: Debian's Python with its libnbd bindings.
    /usr/bin/python3 -c 'import nbd' >/dev/null 2>&1 || missing+=(python3-libnbd)
    # serve --metrics output is checked with the official Prometheus client's parser.
    /usr/bin/python3 -c 'import prometheus_client.parser' >/dev/null 2>&1 ||
        missing+=(python3-prometheus-client)
    if ((${#missing[@]} > 0)); then
        step "installing ${missing[*]}"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
    fi
}

require() {
    if ! "$@" >/dev/null 2>&1; then
        echo "test.sh: '$*' does not work: install the Rust toolchain with rustfmt and clippy" >&2
        exit 1
    fi
}

current="installing tools"
install_missing
require cargo --version
require cargo fmt --version
require cargo clippy --version

current="cargo fmt --all -- --check"
step "$current"
cargo fmt --all -- --check

current="cargo clippy --workspace --all-targets -- -D warnings"
step "$current"
cargo clippy --workspace --all-targets -- -D warnings

# The Ceph tests run against a real single-node cluster (mon + one OSD on a file), started
# here and stopped at the end; one that CEPH_CONF already points at and that answers is used
# as it is. SNAPVOL_REQUIRE_CEPH turns the tests' "no cluster: skipped" into a failure.
current="starting a single-node Ceph cluster (scripts/ceph.sh)"
step "$current"
if [[ -n "${CEPH_CONF:-}" ]] && timeout 20 ceph -s >/dev/null 2>&1; then
    echo "using the cluster of CEPH_CONF=$CEPH_CONF"
else
    ceph_dir=$(mktemp -d /var/tmp/snapvol-test-ceph.XXXXXX)
    trap 'scripts/ceph.sh stop "$ceph_dir" >/dev/null 2>&1 || true; rm -rf "$ceph_dir"' EXIT
    # Assigned first, so that a cluster that does not come up stops the run here.
    ceph_env=$(scripts/ceph.sh start "$ceph_dir")
    eval "$ceph_env"
fi
export CEPH_CONF SNAPVOL_REQUIRE_CEPH=1

current="cargo test --workspace --release"
step "$current"
cargo test --workspace --release -- --show-output

# A short run of every fuzz target: the parsers of bytes from sockets and disks.
current="fuzzing (${FUZZ_SECONDS:-20} s per target)"
step "$current"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo +nightly install cargo-fuzz --locked
fi
for target in nbd_handshake nbd_request engine_format rbd_diff http_request; do
    mkdir -p "fuzz/corpus/$target"
    seeds=()
    [[ -d "fuzz/seeds/$target" ]] && seeds=("fuzz/seeds/$target")
    cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "${seeds[@]}" -- \
        -max_total_time="${FUZZ_SECONDS:-20}" -print_final_stats=0
done

echo
echo "test.sh: all checks passed (fmt, clippy, tests, fuzzing)"
