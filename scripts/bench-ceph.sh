#!/usr/bin/env bash
# snapvol on Ceph RBD against RBD's own snapshots (issue 13), in one run on the cluster that
# CEPH_CONF names (scripts/ceph.sh start DIR prints it; this script starts no cluster), in a
# pool of its own that it creates and removes (POOL, default snapvol-bench: a pool-store server
# serves every volume of its pool, so the pool must be nobody else's). See docs/benchmarks.md,
# "snapvol on Ceph RBD against RBD's own snapshots (issue 13)".
#
#   CEPH_CONF=/var/tmp/ceph/ceph.conf ./scripts/bench-ceph.sh
#   CEPH_CONF=... SIZE=512M ./scripts/bench-ceph.sh      # when the OSD has no room for 1 GiB
#   CEPH_CONF=... RUNS=1 SIZE=128M W2_RUNTIME=3 TAKEOVERS=1 ./scripts/bench-ceph.sh   # smoke test
#   CEPH_CONF=... RBD=0 ./scripts/bench-ceph.sh          # snapvol's rows only (minutes, not an hour)
#
# Two systems, each on a volume of SIZE (1G) filled once by one sequential 1 MiB pass (untimed):
#   snapvol  `snapvol --store rbd:POOL create v` (its source, target and journal are RBD images
#            in POOL, default features of snapvol: 4 MiB objects, layering), served by
#            `snapvol serve`, driven by `fio --ioengine=nbd` over loopback. Snapshots are taken
#            live with `snapvol snapshot create v@...`, which reaches the server through its
#            control socket.
#   rbd      `rbd create POOL/img` (Ceph's default features) driven directly by
#            `fio --ioengine=rbd` (librbd in fio's process, no NBD hop). Snapshots: `rbd snap
#            create POOL/img@...` between runs (fio has closed the image).
# Workloads, each a median of RUNS (3) runs, each run after N fresh snapshots (N in 0 1 8,
# untimed, taken after the fill and after the previous run, so that every run overwrites data
# the newest snapshot holds):
#   W1  sequential 1 MiB overwrite of the whole volume, iodepth 16, --end_fsync=1: MiB/s, p99.
#   W2  random 4 KiB writes, iodepth 8, W2_RUNTIME (10) s over the whole volume: IOPS, p99.
# After each run its snapshots are deleted (a 4 GiB test OSD cannot hold one more copy of the
# volume per run), and the next run starts once that is done: snapvol deletes them at once and
# discards the freed chunks of its target; RBD's are removed with `rbd snap purge` and the
# script waits until the OSD has trimmed them (a PG query per PG until no snapshot is left to
# trim), so that no trimming runs under a measurement. That wait is the longest part of the
# run: osd_snap_trim_sleep_hdd (5 s) applies to an OSD on a file, and the OSD trims about one
# 4 MiB object's clone per second. Before each snapvol run the server is left to finish
# destaging (until it uses under 2 % of a CPU for a second). The report gives that background
# work after each run (snapvol's destaging and snapshot deletion, RBD's trim): none of it is in
# the fio figures.
#
# Takeover (TAKEOVERS, 3): a holder and a standby `snapvol serve` on two ports; W3_SIZE (64M)
# of random 4 KiB writes (iodepth 16, --end_fsync=1) through the holder, `kill -9` of the
# holder, and the time until `qemu-io -r -c 'read 0 4k' nbd://127.0.0.1:PORT2/v` first
# succeeds against the standby (polled every 0.2 s). The split comes from the standby's log:
# kill -> "fencing it with a blocklist entry" is the wait for the dead holder's lease (15 s
# after its last renewal) and the standby's next try; fence -> "volume opened for serving" is
# the open (images, metadata, journal scan, replay); the "took the volume over" line gives
# seconds= for the open when the standby's own 2 s round opened it (a poll's connection can be
# first: a server opens a volume that a client asks for). The new holder then gets a new
# standby on the freed port, and so on. Blocklist entries of the killed holders are removed
# at the end.
#
# Environment: CEPH_CONF (required), POOL (snapvol-bench), SIZE (1G), RUNS (3), W2_RUNTIME (10),
# W3_SIZE (64M), TAKEOVERS (3), RBD (1; 0 skips RBD's rows and their trim waits), PORT_BASE (10970; uses 2 ports), OUT (/var/tmp/bench-ceph-out:
# results.jsonl and table.md), KEEP_TMP=1 keeps the temp dir (also kept on failure).
# The Markdown table goes to stdout, progress to stderr.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

log() { printf '[bench-ceph %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [ -z "${CEPH_CONF:-}" ]; then
    die "CEPH_CONF is not set: point it at the cluster's ceph.conf (scripts/ceph.sh start DIR prints it); this script starts no cluster"
fi
[ -r "$CEPH_CONF" ] || die "CEPH_CONF=$CEPH_CONF: no such file"
export CEPH_CONF
POOL=${POOL:-snapvol-bench}
SIZE=${SIZE:-1G}
RUNS=${RUNS:-3}
W2_RUNTIME=${W2_RUNTIME:-10}
W3_SIZE=${W3_SIZE:-64M}
TAKEOVERS=${TAKEOVERS:-3}
RBD_ROWS=${RBD:-1}
PORT_BASE=${PORT_BASE:-10970}
OUT=${OUT:-/var/tmp/bench-ceph-out}
SNAPS="0 1 8"
JOURNAL=512M # snapvol create's default --journal-size
MIB=1048576
SIZE_B=$(numfmt --from=iec "$SIZE")
JOURNAL_B=$(numfmt --from=iec "$JOURNAL")
((SIZE_B % MIB == 0)) || die "SIZE must be whole MiB"
((RUNS >= 1)) || die "RUNS must be at least 1"

for t in fio qemu-io python3 ceph rbd cargo numfmt timeout; do
    command -v "$t" >/dev/null || die "missing $t (apt-get install fio qemu-utils ceph-common)"
done
fio --enghelp 2>/dev/null | grep -qw nbd || die "this fio has no nbd ioengine"
fio --enghelp 2>/dev/null | grep -qw rbd || die "this fio has no rbd ioengine"
timeout 30 ceph osd stat >/dev/null 2>&1 || die "no Ceph cluster answers at CEPH_CONF=$CEPH_CONF"
if ceph osd pool ls | grep -qx -- "$POOL"; then
    die "pool $POOL exists already (a leftover? ceph osd pool rm $POOL $POOL --yes-i-really-really-mean-it), or set POOL"
fi
P1=$PORT_BASE
P2=$((PORT_BASE + 1))
for p in $P1 $P2; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        die "port $p is in use: set PORT_BASE to a free pair of ports"
    fi
done

# ---------------------------------------------------------------- room on the OSDs
# Free, total and BlueFS bytes of the OSDs (BlueStore with its DB on the main device, as
# scripts/ceph.sh makes them; `ceph osd df` needs a mgr, which that cluster has not).
osd_space() {
    local id free=0 total=0 bluefs=0 f t b
    for id in $(ceph osd ls); do
        read -r f t b < <(timeout 20 ceph tell "osd.$id" bluestore bluefs device info 2>/dev/null |
            python3 -c 'import json, sys; d = json.load(sys.stdin)["dev"]; print(d["free"], d["total"], d["bluefs_used"])') ||
            return 1
        free=$((free + f)) total=$((total + t)) bluefs=$((bluefs + b))
    done
    echo "$free $total $bluefs"
}
# need_room BYTES WHAT: the OSDs must hold BYTES more and stay under 85 % full (Ceph's
# nearfull ratio; at 95 % an OSD stops every pool's writes, other users' too). BlueFS is counted
# at 1.5 GiB per OSD or what it holds now if more: on an HDD-class OSD every write under 64 KiB
# goes through RocksDB's WAL first, and on scripts/ceph.sh's 4 GiB OSD BlueFS swings between
# 0.6 and 1.45 GiB under such writes.
need_room() {
    local need=$1 what=$2 free total bluefs copies allowance
    copies=$(ceph osd pool get "$POOL" size -f json | python3 -c 'import json, sys; print(json.load(sys.stdin)["size"])')
    need=$((need * copies))
    if ! read -r free total bluefs < <(osd_space); then
        log "warning: cannot read the OSDs' free space; $what needs $((need / MIB)) MiB of it"
        return 0
    fi
    allowance=$(($(ceph osd ls | wc -l) * 1536 * MIB))
    ((bluefs > allowance)) && allowance=$bluefs
    log "OSDs: $((free / MIB)) MiB free of $((total / MIB)) MiB (BlueFS $((bluefs / MIB)) MiB, counted as $((allowance / MIB))); $what needs up to $((need / MIB)) MiB"
    if (((total - free - bluefs + allowance + need) * 100 > total * 85)); then
        die "not enough room on the OSDs for $what: $((need / MIB)) MiB more, with BlueFS at $((allowance / MIB)) MiB, would fill them past 85 % ($((free / MIB)) MiB free of $((total / MIB)) MiB); try a smaller SIZE"
    fi
}

# ---------------------------------------------------------------- build
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
log "building snapvol (release)"
cargo build -q --release -p snapvol
SNAPVOL=$(cd "$CARGO_TARGET_DIR" && pwd)/release/snapvol

# ---------------------------------------------------------------- state and cleanup
TMP=$(mktemp -d /var/tmp/bench-ceph.XXXXXX)
RESULTS=$TMP/results.jsonl
: >"$RESULTS"
mkdir -p "$TMP/run" "$TMP/fio"
export SNAPVOL_RUN_DIR=$TMP/run # control sockets: this run's servers only
POOL_CREATED=0
SERVER_PIDS=()
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(date +%s)

# stop_pid PID [SIGNAL]: signal it (default TERM), wait up to 30 s, then SIGKILL
stop_pid() {
    local pid=$1 sig=${2:-TERM} i
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill "-$sig" "$pid" 2>/dev/null || true
        for i in $(seq 1 300); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "process $pid did not stop on SIG$sig in 30 s, killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${SERVER_PIDS[@]}"; do
        stop_pid "$pid"
    done
    # The fenced (killed) holders' blocklist entries: theirs only, others' stay.
    grep -h 'fencing it with a blocklist entry' "$TMP"/*.log 2>/dev/null |
        sed -n 's/.* address=\([^ ]*\).*/\1/p' | sort -u | while read -r addr; do
        ceph osd blocklist rm "$addr" >/dev/null 2>&1 || true
    done
    if [ "$POOL_CREATED" = 1 ]; then
        ceph osd pool rm "$POOL" "$POOL" --yes-i-really-really-mean-it >/dev/null 2>&1 ||
            log "warning: could not remove pool $POOL"
    fi
    if [ "${KEEP_TMP:-0}" = 1 ] || [ $rc -ne 0 ]; then
        log "$([ $rc -ne 0 ] && echo "failed (exit $rc); ")logs and fio outputs kept in $TMP (rm -rf it when done)"
    else
        rm -rf "$TMP"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ceph osd pool create "$POOL" 8 >/dev/null 2>&1 || die "cannot create pool $POOL"
POOL_CREATED=1
rbd pool init "$POOL"
POOL_ID=$(ceph osd dump -f json | python3 -c '
import json, sys
print(next(p["pool"] for p in json.load(sys.stdin)["pools"] if p["pool_name"] == sys.argv[1]))' "$POOL")
PG_NUM=$(ceph osd pool get "$POOL" pg_num -f json | python3 -c 'import json, sys; print(json.load(sys.stdin)["pg_num"])')
TRIM_EST=$((RBD_ROWS * RUNS * 4 * SIZE_B / MIB / 3))
log "pool $POOL (id $POOL_ID); SIZE=$SIZE, RUNS=$RUNS, W2 ${W2_RUNTIME} s, load average $LOAD_START"
log "estimated runtime: about $(((TRIM_EST + RUNS * 6 * (W2_RUNTIME + 4) + RUNS * 6 * SIZE_B / MIB / 60 + TAKEOVERS * 60 + 120) / 60)) min, of which about $((TRIM_EST / 60)) min wait for the OSD to trim RBD's deleted snapshots"

# ---------------------------------------------------------------- fio and results
# record SYSTEM WORKLOAD N RUN FIO_JSON [KEY=VALUE...]: one line of results.jsonl
record() {
    python3 - "$@" >>"$RESULTS" <<'EOF'
import json, sys
system, workload, n, run, path = sys.argv[1:6]
job = json.load(open(path))["jobs"][0]
w = job["write"]
row = {"kind": "perf", "system": system, "workload": workload, "n": int(n), "run": int(run),
       "mib_s": w["bw_bytes"] / 2**20, "iops": w["iops"],
       "p50_ms": w["clat_ns"]["percentile"]["50.000000"] / 1e6,
       "p99_ms": w["clat_ns"]["percentile"]["99.000000"] / 1e6,
       "bytes": w["io_bytes"], "elapsed_s": job["elapsed"]}
for kv in sys.argv[6:]:
    k, v = kv.split("=", 1)
    row[k] = float(v)
print(json.dumps(row))
EOF
}

# fio_run NAME ENGINE-ARGS... -- WORKLOAD-ARGS...: JSON to $TMP/fio/NAME.json (the nbd engine
# prints to stdout, so the JSON goes to a file of its own)
fio_run() {
    local name=$1
    shift
    fio --name="$name" "$@" --numjobs=1 --output-format=json --output="$TMP/fio/$name.json" \
        >"$TMP/fio/$name.out" 2>&1 || {
        cat "$TMP/fio/$name.out" >&2
        die "fio $name failed"
    }
}
W1_ARGS=(--rw=write --bs=1M --iodepth=16 --size="$SIZE_B" --end_fsync=1)
W2_ARGS=(--rw=randwrite --bs=4k --iodepth=8 --size="$SIZE_B" --time_based --runtime="$W2_RUNTIME")
FILL_ARGS=(--rw=write --bs=1M --iodepth=16 --size="$SIZE_B" --end_fsync=1)

summary() { # SYSTEM WORKLOAD N RUN: the last record, for the progress log
    tail -n 1 "$RESULTS" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
fig = "%.0f MiB/s" % r["mib_s"] if r["workload"] == "W1" else "%.0f IOPS" % r["iops"]
print("%s %s N=%d run %d: %s, p99 %.1f ms%s; snapshots deleted in %.1f s" % (r["system"],
      r["workload"], r["n"], r["run"], fig, r["p99_ms"],
      ", destaged %.1f s after" % r["settle_s"] if "settle_s" in r else "", r["delete_s"]))'
}

# ---------------------------------------------------------------- snapvol servers
SV=("$SNAPVOL" --store "rbd:$POOL")

# start_server PORT LOG: snapvol serve on 127.0.0.1:PORT, logging to LOG; sets SRV_PID
start_server() {
    local port=$1 logf=$2 i
    "${SV[@]}" serve --listen "127.0.0.1:$port" </dev/null >"$logf" 2>&1 &
    SRV_PID=$!
    SERVER_PIDS+=("$SRV_PID")
    for i in $(seq 1 600); do
        kill -0 "$SRV_PID" 2>/dev/null || {
            tail -n 20 "$logf" >&2
            die "snapvol serve on port $port exited"
        }
        if grep -q "on nbd://127.0.0.1:$port/" "$logf" && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    die "snapvol serve did not listen on port $port within 60 s"
}

# settle PID: wait (at most 120 s) until PID has used at most 2 % of a CPU for a second (the
# destager done); prints the seconds waited
settle() {
    local pid=$1 hz prev now i t0=$EPOCHREALTIME
    hz=$(getconf CLK_TCK)
    prev=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
    for i in $(seq 1 120); do
        sleep 1
        now=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
        (((now - prev) * 50 > hz)) || break
        prev=$now
    done
    awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a - 1 }'
}

sv_snaps() { # CREATE|DELETE N TAG
    local k
    for ((k = 1; k <= $2; k++)); do
        "${SV[@]}" snapshot "$1" "v@$3-s$k" >/dev/null
    done
}

# ---------------------------------------------------------------- (a) snapvol on RBD over NBD
need_room $((2 * SIZE_B + JOURNAL_B + 64 * MIB)) "snapvol (source, journal, and a target that holds one full copy)"
log "snapvol: create v ($SIZE) in rbd:$POOL, serve on port $P1, fill"
"${SV[@]}" create v --size "$SIZE" >/dev/null
start_server "$P1" "$TMP/serve-perf.log"
PERF_PID=$SRV_PID
URI=nbd://127.0.0.1:$P1/v
NBD=(--ioengine=nbd --uri="$URI")
fio_run sv-fill "${NBD[@]}" "${FILL_ARGS[@]}"
settle "$PERF_PID" >/dev/null
for w in W1 W2; do
    for n in $SNAPS; do
        for ((r = 1; r <= RUNS; r++)); do
            tag=${w,,}-n$n-r$r
            sv_snaps create "$n" "$tag"
            if [ "$w" = W1 ]; then args=("${W1_ARGS[@]}"); else args=("${W2_ARGS[@]}"); fi
            fio_run "sv-$tag" "${NBD[@]}" "${args[@]}"
            s=$(settle "$PERF_PID")
            t0=$EPOCHREALTIME
            sv_snaps delete "$n" "$tag"
            settle "$PERF_PID" >/dev/null
            d=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a - 1 }')
            record snapvol "$w" "$n" "$r" "$TMP/fio/sv-$tag.json" settle_s="$s" delete_s="$d"
            log "$(summary)"
        done
    done
done
stop_pid "$PERF_PID" # graceful: destages everything, so the takeovers start with an empty journal

# ---------------------------------------------------------------- (c) takeover after kill -9
log "takeover: $TAKEOVERS kill -9 of the holder, $W3_SIZE written and flushed before each"
HOLD_PORT=$P1 STBY_PORT=$P2
start_server "$HOLD_PORT" "$TMP/serve-t0.log"
HOLD_PID=$SRV_PID
grep -q 'serving v ' "$TMP/serve-t0.log" || die "the first server does not serve v: $(cat "$TMP/serve-t0.log")"
start_standby() { # PORT LOG
    start_server "$1" "$2"
    grep -q 'standing by' "$2" || die "the server on port $1 is not standing by: $(cat "$2")"
}
start_standby "$STBY_PORT" "$TMP/serve-t1.log"
STBY_PID=$SRV_PID
for ((i = 1; i <= TAKEOVERS; i++)); do
    stby_log=$TMP/serve-t$i.log
    fio_run "takeover-$i" --ioengine=nbd --uri="nbd://127.0.0.1:$HOLD_PORT/v" \
        --rw=randwrite --bs=4k --iodepth=16 --size="$W3_SIZE" --end_fsync=1
    offset=$(stat -c %s "$stby_log")
    t_kill=$EPOCHREALTIME
    kill -KILL "$HOLD_PID"
    wait "$HOLD_PID" 2>/dev/null || true
    polls=0
    until timeout 60 qemu-io -f raw -r -c 'read 0 4k' "nbd://127.0.0.1:$STBY_PORT/v" >/dev/null 2>&1; do
        polls=$((polls + 1))
        (($(awk -v a="$t_kill" -v b="$EPOCHREALTIME" 'BEGIN { print int(b - a) }') < 300)) ||
            die "the standby did not serve v within 300 s of the kill; its log: $stby_log"
        sleep 0.2
    done
    t_ok=$EPOCHREALTIME
    python3 - "$i" "$t_kill" "$t_ok" "$polls" "$stby_log" "$offset" >>"$RESULTS" <<'EOF'
import datetime, json, re, sys
i, t_kill, t_ok, polls, path, offset = sys.argv[1:]
t_kill, t_ok = float(t_kill), float(t_ok)
with open(path, errors="replace") as f:
    f.seek(int(offset))
    lines = f.read().splitlines()
def ts(line):
    stamp = line.split()[0].rstrip("Z")
    return datetime.datetime.fromisoformat(stamp).replace(tzinfo=datetime.timezone.utc).timestamp()
def first(needle):
    return next((l for l in lines if needle in l), None)
row = {"kind": "takeover", "run": int(i), "total_s": t_ok - t_kill, "polls": int(polls)}
fence = first("fencing it with a blocklist entry")
scan = first("recovering writes from the cache journal")
done = first("recovery complete")
opened = first("volume opened for serving")
took = first("took the volume over")
if fence:
    row["lease_s"] = ts(fence) - t_kill
if fence and opened:
    row["open_s"] = ts(opened) - ts(fence)
if fence and scan:
    row["to_replay_s"] = ts(scan) - ts(fence)
if scan and done:
    row["replay_s"] = ts(done) - ts(scan)
if opened:
    row["served_after_open_s"] = t_ok - ts(opened)
if scan:
    m = re.search(r"records=(\d+) bytes=(\d+)", scan)
    if m:
        row["records"], row["bytes"] = int(m[1]), int(m[2])
if took:
    m = re.search(r"seconds=([0-9.]+)", took)
    row["took_over_line_s"] = float(m[1]) if m else None
row["opened_by"] = "standby round" if took else "client connect"
print(json.dumps(row))
EOF
    tail -n 1 "$RESULTS" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
print("takeover %d: served %.1f s after kill -9 (lease %.1f s, open %.1f s: %s records replayed; opened by %s)" % (
    r["run"], r["total_s"], r.get("lease_s", float("nan")), r.get("open_s", float("nan")),
    r.get("records", "?"), r["opened_by"]))' | while read -r line; do log "$line"; done
    # The standby holds v now; a new standby on the freed port.
    HOLD_PID=$STBY_PID
    tmp_port=$HOLD_PORT HOLD_PORT=$STBY_PORT STBY_PORT=$tmp_port
    if ((i < TAKEOVERS)); then
        start_standby "$STBY_PORT" "$TMP/serve-t$((i + 1)).log"
        STBY_PID=$SRV_PID
    fi
done
"${SV[@]}" check v >"$TMP/check.txt" 2>&1 || die "snapvol check v failed after the takeovers: $(cat "$TMP/check.txt")"
grep -q 'is clean' "$TMP/check.txt" || die "snapvol check v: $(cat "$TMP/check.txt")"
for pid in "${SERVER_PIDS[@]}"; do
    stop_pid "$pid"
done
SERVER_PIDS=()

if ((RBD_ROWS)); then
    # Room for the RBD image: snapvol's images and objects go.
    for img in source target journal; do
        rbd rm --no-progress "$POOL/snapvol.v.$img" >/dev/null 2>&1 || true
    done
    for obj in $(rados -p "$POOL" ls | grep '^snapvol\.' || true); do
        rados -p "$POOL" rm "$obj"
    done

    # ---------------------------------------------------------------- (b) RBD with its own snapshots
    need_room $((2 * SIZE_B + 64 * MIB)) "the RBD image and one snapshot's copy of it"
    # wait_trim: until no PG of the pool has snapshots left to trim (at most 30 min)
    trim_left() {
        local pg s=0
        for ((pg = 0; pg < PG_NUM; pg++)); do
            s=$((s + $(ceph tell "$POOL_ID.$(printf %x "$pg")" query | python3 -c '
    import json, sys
    d = json.load(sys.stdin)
    print(d.get("snap_trimq_len", 0) + ("snaptrim" in d.get("state", "")))')))
        done
        echo "$s"
    }
    wait_trim() {
        local t0=$EPOCHREALTIME left i
        for i in $(seq 1 8); do # the OSDs learn of the removal with the next map
            [ "$(trim_left)" -gt 0 ] && break
            sleep 1
        done
        while left=$(trim_left) && [ "$left" -gt 0 ]; do
            (($(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { print int(b - a) }') < 1800)) ||
                die "the OSD did not trim the deleted snapshots in 30 min"
            sleep 5
        done
    }
    log "rbd: create $POOL/img ($SIZE), fill"
    rbd create "$POOL/img" --size "$SIZE"
    RBD=(--ioengine=rbd --clientname=admin --pool="$POOL" --rbdname=img --invalidate=0)
    fio_run rbd-fill "${RBD[@]}" "${FILL_ARGS[@]}"
    for w in W1 W2; do
        for n in $SNAPS; do
            for ((r = 1; r <= RUNS; r++)); do
                tag=${w,,}-n$n-r$r
                for ((k = 1; k <= n; k++)); do
                    rbd snap create --no-progress "$POOL/img@$tag-s$k" >/dev/null
                done
                if [ "$w" = W1 ]; then args=("${W1_ARGS[@]}"); else args=("${W2_ARGS[@]}"); fi
                sleep 2
                fio_run "rbd-$tag" "${RBD[@]}" "${args[@]}"
                d=0
                if ((n > 0)); then
                    t0=$EPOCHREALTIME
                    rbd snap purge --no-progress "$POOL/img" >/dev/null
                    wait_trim
                    d=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
                fi
                record rbd "$w" "$n" "$r" "$TMP/fio/rbd-$tag.json" delete_s="$d"
                log "$(summary)"
            done
        done
    done
fi

# ---------------------------------------------------------------- report
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
mkdir -p "$OUT"
cp "$RESULTS" "$OUT/results.jsonl"
python3 - "$RESULTS" "$SIZE" "$RUNS" "$W2_RUNTIME" "$W3_SIZE" "$LOAD_START" "$LOAD_END" \
    "$(($(date +%s) - T_START))" <<'EOF' | tee "$OUT/table.md"
import json, statistics, sys
path, size, runs, w2s, w3, load0, load1, secs = sys.argv[1:]
rows = [json.loads(l) for l in open(path)]
perf = [r for r in rows if r["kind"] == "perf"]
take = [r for r in rows if r["kind"] == "takeover"]
med = statistics.median

def cell(rs, key, fmt):
    if not rs:
        return "–"
    v = [r[key] for r in rs]
    p99 = med([r["p99_ms"] for r in rs])
    spread = " (%s–%s)" % (fmt % min(v), fmt % max(v)) if len(v) > 1 else ""
    return "%s%s, p99 %.1f ms" % (fmt % med(v), spread, p99)

print("| workload | snapshots N | snapvol on RBD, over NBD | RBD + RBD snapshots, fio rbd | snapvol / RBD |")
print("| --- | ---: | --- | --- | ---: |")
for w, key, unit, what in (("W1", "mib_s", "%.0f MiB/s", "W1 seq 1 MiB overwrite, qd 16"),
                           ("W2", "iops", "%.0f IOPS", "W2 random 4 KiB, qd 8")):
    for n in sorted({r["n"] for r in perf if r["workload"] == w}):
        sv = [r for r in perf if r["workload"] == w and r["n"] == n and r["system"] == "snapvol"]
        rb = [r for r in perf if r["workload"] == w and r["n"] == n and r["system"] == "rbd"]
        ratio = "%.2f" % (med([r[key] for r in sv]) / med([r[key] for r in rb])) if sv and rb else "–"
        print("| %s | %d | %s | %s | %s |" % (what, n, cell(sv, key, unit), cell(rb, key, unit), ratio))
print()
print("Background work after a run, not in the figures above (median s):")
print()
print("| workload | N | snapvol: destaging after fio ended | snapvol: deleting the snapshots | RBD: `rbd snap purge` until the OSD trimmed them |")
print("| --- | ---: | ---: | ---: | ---: |")
keys = sorted({(r["workload"], r["n"]) for r in perf})
for w, n in keys:
    sv = [r for r in perf if (r["workload"], r["n"]) == (w, n) and r["system"] == "snapvol"]
    rb = [r for r in perf if (r["workload"], r["n"]) == (w, n) and r["system"] == "rbd"]
    f = lambda rs, k: "%.1f" % med([r[k] for r in rs]) if rs else "–"
    print("| %s | %d | %s | %s | %s |" % (w, n, f(sv, "settle_s"), f(sv, "delete_s") if n else "–",
                                          f(rb, "delete_s") if n else "–"))
print()
if take:
    print("| takeover after kill -9 (%s written + flushed first) | run %s | median |" % (
        w3, " | run ".join(str(r["run"]) for r in take)))
    print("| --- |" + " ---: |" * (len(take) + 1))
    def line(label, key, fmt="%.1f s"):
        v = [r.get(key) for r in take]
        ok = [x for x in v if x is not None]
        print("| %s | %s | %s |" % (label, " | ".join(fmt % x if x is not None else "–" for x in v),
                                    fmt % med(ok) if ok else "–"))
    line("kill -9 → first successful read on the standby", "total_s")
    line("kill -9 → fencing (lease + the standby's next try)", "lease_s")
    line("fencing → volume opened for serving (open)", "open_s")
    line("  of it: fencing → journal replay starts (images, metadata, journal scan)", "to_replay_s")
    line("  of it: replay and destage", "replay_s")
    line("opened → the poll's read answered", "served_after_open_s")
    line("journal records replayed", "records", "%d")
    line("\"took the volume over\" seconds=", "took_over_line_s")
    print()
    print("opened by: " + ", ".join("run %d %s" % (r["run"], r["opened_by"]) for r in take))
    print()
print("SIZE=%s, RUNS=%s (median, min–max), W2 %s s; load average at start %s, at end %s; %d min" % (
    size, runs, w2s, load0, load1, int(secs) // 60))
EOF
log "done in $((($(date +%s) - T_START) / 60)) min; results in $OUT"
