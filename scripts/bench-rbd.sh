#!/usr/bin/env bash
# Write throughput through snapvol-rbd's RbdImage against fio's own rbd engine, on one image
# of the cluster CEPH_CONF names (scripts/ceph.sh start DIR): sequential 1 MiB and random
# 4 KiB overwrites, one and eight requests in flight (eight threads for RbdImage, iodepth 8
# for fio), RbdImage both through librbd's aio calls and its synchronous ones. Two passes:
# RBD's client cache as Ceph configures it by default (on; writeback after the first flush,
# which fio and rbd_bench both issue before measuring), then off (a copy of the configuration
# with `rbd cache = false`: every write waits for the OSD).
#
#   CEPH_CONF=DIR/ceph.conf scripts/bench-rbd.sh [SECONDS] [SIZE]
#
# The image (SIZE, 1G by default) is written once whole first, so every run overwrites
# allocated objects; no run flushes while it is timed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${CEPH_CONF:?set CEPH_CONF (scripts/ceph.sh start DIR prints it)}"
SECONDS_PER_RUN=${1:-10}
SIZE=${2:-1G}
IMAGE=bench-rbd-$$
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}

cargo build -q --release -p snapvol-rbd --example rbd_bench
BENCH=$CARGO_TARGET_DIR/release/examples/rbd_bench

rbd create --size "$SIZE" --image-feature layering "rbd/$IMAGE"
trap 'rbd rm --no-progress "rbd/$IMAGE" >/dev/null 2>&1 || true' EXIT
rbd bench --io-type write --io-pattern seq --io-size 4M --io-total "$SIZE" "rbd/$IMAGE" >/dev/null

fio_run() { # rw bs iodepth
    fio --name=bench --ioengine=rbd --pool=rbd --rbdname="$IMAGE" --clientname=admin \
        --rw="$1" --bs="$2" --iodepth="$3" --numjobs=1 --time_based --runtime="$SECONDS_PER_RUN" \
        --invalidate=0 --output-format=json |
        python3 -c '
import json, sys
w = json.load(sys.stdin)["jobs"][0]["write"]
lat = w["clat_ns"]["percentile"]
rw, bs, depth = sys.argv[1:4]
print("fio rbd %s %s iodepth=%s: %.1f MiB/s, %.0f IOPS, latency p50 %.2f ms p99 %.2f ms" % (
    rw, bs, depth, w["bw_bytes"] / 2**20, w["iops"],
    lat["50.000000"] / 1e6, lat["99.000000"] / 1e6))
' "$1" "$2" "$3"
}

pass() {
    for depth in 1 8; do
        fio_run write 1M "$depth"
        "$BENCH" "rbd/$IMAGE" seq1m "$depth" "$SECONDS_PER_RUN" aio
        "$BENCH" "rbd/$IMAGE" seq1m "$depth" "$SECONDS_PER_RUN" sync
        fio_run randwrite 4k "$depth"
        "$BENCH" "rbd/$IMAGE" rand4k "$depth" "$SECONDS_PER_RUN" aio
        "$BENCH" "rbd/$IMAGE" rand4k "$depth" "$SECONDS_PER_RUN" sync
    done
}

echo "== RBD client cache on (Ceph's default)"
pass
echo "== RBD client cache off"
NOCACHE=$(mktemp)
trap 'rm -f "$NOCACHE"; rbd rm --no-progress "rbd/$IMAGE" >/dev/null 2>&1 || true' EXIT
{
    cat "$CEPH_CONF"
    printf '\n[client.admin]\nrbd cache = false\n'
} >"$NOCACHE"
CEPH_CONF=$NOCACHE pass
