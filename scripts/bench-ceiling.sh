#!/usr/bin/env bash
# What this machine's storage allows a sequential overwrite to reach, for each number of bytes
# written per byte of volume data, measured with plain fio on files (no NBD, no snapvol).
#
#   ./scripts/bench-ceiling.sh          # RUNS=3, 1 GiB per file, about 1 minute
#
# Each point writes SIZE sequentially in 1 MiB writes to each of its files at once, one fio job
# per file, and fsyncs at the end; the figure is SIZE divided by the slowest job's time.
#   1 write  — one file: what nbdkit's file plugin does with the data;
#   2 writes — cache journal + source: snapvol's work per byte with no snapshot to preserve;
#   3 writes + 1 read — cache journal + target + source, and the source read of the original:
#              snapvol's work per byte when a snapshot needs the originals.
# snapvol cannot beat the ceiling of its own row: the journal write is what makes every request
# all-old or all-new after a crash, the target write is the preserved original.
set -euo pipefail
RUNS=${RUNS:-3}
SIZE=${SIZE:-1G}
command -v fio >/dev/null || { echo "fio is missing (apt-get install -y fio)" >&2; exit 1; }
D=$(mktemp -d /var/tmp/bench-ceiling.XXXXXX)
trap 'rm -rf "$D"' EXIT
cd "$D"
for f in journal target source original; do
    fio --name=prep --filename=$f --size="$SIZE" --rw=write --bs=1M --end_fsync=1 >/dev/null
done
mib_s() { # fio job options...: SIZE / slowest job's runtime
    fio --output-format=json --ioengine=psync --bs=1M --end_fsync=1 --size="$SIZE" "$@" |
        python3 -c '
import json, sys
d = json.load(sys.stdin)
t = max(j["job_runtime"] for j in d["jobs"]) / 1000
size = max(j["write"]["io_bytes"] + j["read"]["io_bytes"] for j in d["jobs"])
print("%.0f" % (size / 2**20 / t))'
}
printf '%-5s %12s %12s %18s\n' run "1 write" "2 writes" "3 writes + 1 read"
for r in $(seq 1 "$RUNS"); do
    one=$(mib_s --name=data --filename=source --rw=write)
    two=$(mib_s --name=j --filename=journal --rw=write --name=s --filename=source --rw=write)
    three=$(mib_s --name=j --filename=journal --rw=write --name=t --filename=target --rw=write \
        --name=s --filename=source --rw=write --name=o --filename=original --rw=read)
    printf '%-5s %8s MiB/s %8s MiB/s %14s MiB/s\n' "$r" "$one" "$two" "$three"
done
