#!/usr/bin/env bash
# Snapshot create latency through `snapvol snapshot create` (control socket), idle and under
# random 4 KiB writes, on a 1 GiB and a sparse 1 TiB volume.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -q -p snapvol
S=$PWD/target/release/snapvol
PORT=${PORT:-11990}
for size in 1G 1T; do
  d=$(mktemp -d /var/tmp/snaplat.XXXXXX); export SNAPVOL_STORE=$d/store
  $S create v --size $size >/dev/null
  $S serve --listen 127.0.0.1:$PORT > $d/serve.log 2>&1 & P=$!
  sleep 1
  U=nbd://127.0.0.1:$PORT/v
  fio --name=fill --ioengine=nbd --uri=$U --rw=write --bs=1M --iodepth=16 --size=1G --end_fsync=1 >/dev/null 2>&1
  F=""
  for mode in idle load; do
    if [ $mode = load ]; then
      fio --name=r --ioengine=nbd --uri=$U --rw=randwrite --bs=4k --iodepth=16 --size=1G --time_based --runtime=30 >/dev/null 2>&1 & F=$!
      sleep 2
    fi
    : > $d/lat.$mode
    for i in $(seq 1 20); do
      t0=$(date +%s%N); $S snapshot create v@$mode$i >/dev/null; t1=$(date +%s%N)
      echo $(( (t1-t0)/1000 )) >> $d/lat.$mode
      sleep 0.2
    done
    if [ -n "$F" ]; then kill $F 2>/dev/null || true; wait $F 2>/dev/null || true; fi
    python3 - "$size" "$mode" $d/lat.$mode <<'PY'
import sys, statistics
v=sorted(int(x)/1000 for x in open(sys.argv[3]))
p99=v[min(len(v)-1, int(round(0.99*(len(v)-1))))]
print(f"{sys.argv[1]:>3} {sys.argv[2]:>4}: n={len(v)} p50={statistics.median(v):.1f} ms p99={p99:.1f} ms max={v[-1]:.1f} ms")
PY
  done
  kill -TERM $P; wait $P || true
  rm -rf $d
done
