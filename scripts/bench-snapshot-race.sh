#!/usr/bin/env bash
# Random 4 KiB writes from four NBD connections (qd 16 each) while a snapshot is taken every
# second: what landing requests whole under their cache shards' locks and closing the epoch
# gate for each snapshot cost the data path. Prints IOPS and completion-latency percentiles.
#
# usage: scripts/bench-snapshot-race.sh [SNAPVOL_BINARY] [PORT]
# Needs fio and nc (netcat-openbsd). Uses /var/tmp/snapvol-bench-race (removed first).
set -euo pipefail
B=${1:-$(dirname "$0")/../target/release/snapvol}
PORT=${2:-10951}
D=/var/tmp/snapvol-bench-race
rm -rf "$D"; mkdir -p "$D"
"$B" --store "$D/store" create v --size 1G >/dev/null
"$B" --store "$D/store" serve --listen "127.0.0.1:$PORT" 2>"$D/serve.log" & P=$!
trap 'kill -TERM $P 2>/dev/null; wait $P 2>/dev/null || true' EXIT
for _ in $(seq 200); do nc -z 127.0.0.1 "$PORT" 2>/dev/null && break; sleep 0.05; done
U=nbd://127.0.0.1:$PORT/v
fio --name=fill --ioengine=nbd --uri="$U" --rw=write --bs=1M --iodepth=16 --size=1G --end_fsync=1 >/dev/null
( for i in $(seq 20); do sleep 1; "$B" --store "$D/store" snapshot create "v@s$i" >/dev/null; done ) & S=$!
fio --name=rand --ioengine=nbd --uri="$U" --rw=randwrite --bs=4k --iodepth=16 --numjobs=4 \
    --group_reporting --size=1G --time_based --runtime=20 --output-format=json >"$D/rand.json" 2>/dev/null
wait $S
python3 - "$D/rand.json" <<'PY'
import json, sys
t = open(sys.argv[1]).read()
w = json.loads(t[t.index('{'):])['jobs'][0]['write']
p = w['clat_ns']['percentile']
print(f"randwrite 4k, qd 16 x 4 connections, a snapshot every second: {w['iops']:.0f} IOPS, "
      f"p50 {p['50.000000']/1e3:.0f} us, p99 {p['99.000000']/1e3:.0f} us, p99.9 {p['99.900000']/1e3:.0f} us")
PY
