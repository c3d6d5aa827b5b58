#!/usr/bin/env bash
# Snapshot create latency (issue 5, workload 5): snapvol through `snapvol snapshot create` (the
# control socket) and qemu-storage-daemon through QMP, idle and under random 4 KiB writes, on a
# 1 GiB and a sparse 1 TiB volume. Now part of scripts/bench-peers.sh (see its header for the
# method and the knobs W5_SIZES, W5_SAMPLES, W5_GAP, W5_FILL, RUNS); this runs that workload
# alone, with snapvol and qemu, and writes its report to OUT (default /var/tmp/bench-peers-out,
# not the published docs/bench).
#
#   ./scripts/bench-snapshot-latency.sh               # RUNS=5: about 3 minutes
#   RUNS=1 SERVERS=snapvol ./scripts/bench-snapshot-latency.sh
set -euo pipefail
export WORKLOADS=w5
export SERVERS=${SERVERS:-snapvol qemu}
exec "$(dirname "${BASH_SOURCE[0]}")/bench-peers.sh" "$@"
