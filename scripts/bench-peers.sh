#!/usr/bin/env bash
# Side by side over NBD on loopback: snapvol, qemu-nbd (qcow2 internal snapshots) and nbdkit
# (file plugin on a raw file, no snapshots: the ceiling). See docs/benchmarks.md, "Against the
# peers".
#
#   ./scripts/bench-peers.sh            # 1 run per point (about 2 minutes on 2 cores)
#   RUNS=3 ./scripts/bench-peers.sh     # median of 3 runs per point (about 5 minutes)
#
# Environment: RUNS (default 1), PORT_BASE (default 10950), SIZE (default 1G),
# RAND_RUNTIME (seconds, default 10), OUT (default docs/bench), KEEP_TMP=1 keeps the temp dir.
#
# Workloads, on a volume pre-filled by one sequential 1 MiB write pass:
#   W1  sequential 1 MiB overwrite of the whole volume, iodepth 16, --end_fsync=1, after N = 0,
#       1, 8 fresh snapshots taken back to back before each measured pass (nbdkit: N = 0 only);
#   W3  random 4 KiB writes, iodepth 16, --time_based --runtime=$RAND_RUNTIME, after 8 fresh
#       snapshots (nbdkit: none).
# Each server gets fresh state (one temp dir under /var/tmp); within a server the points run in
# the order above on the same volume, so snapshots accumulate (the N fresh snapshots are the
# ones taken since the previous pass).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUNS=${RUNS:-1}
PORT_BASE=${PORT_BASE:-10950}
SIZE=${SIZE:-1G}
RAND_RUNTIME=${RAND_RUNTIME:-10}
OUT=${OUT:-$ROOT/docs/bench}
SEQ_SNAPS=(0 1 8)
RAND_SNAPS=8

log() { printf '[bench-peers %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------- prerequisites
need_apt=()
command -v nbdkit >/dev/null || need_apt+=(nbdkit)
command -v fio >/dev/null || need_apt+=(fio)
command -v nbdinfo >/dev/null || need_apt+=(libnbd-bin)
if ((${#need_apt[@]})); then
    log "installing ${need_apt[*]}"
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update
    $SUDO apt-get install -y nbdkit fio libnbd-bin
fi
for t in qemu-img qemu-nbd python3 nbdkit fio nbdinfo; do
    command -v "$t" >/dev/null || { log "missing $t"; exit 1; }
done
if ! fio --enghelp 2>/dev/null | grep -qw nbd; then
    log "this fio has no nbd ioengine"; exit 1
fi
if ! python3 -c 'import matplotlib' 2>/dev/null; then
    log "installing matplotlib"
    python3 -m pip install matplotlib
fi

log "building snapvol (release)"
cargo build --release -p snapvol
SNAPVOL=$ROOT/target/release/snapvol

# ---------------------------------------------------------------- state and cleanup
TMP=$(mktemp -d /var/tmp/bench-peers.XXXXXX)
RESULTS=$TMP/results.jsonl
: >"$RESULTS"
SERVER_PID=

stop_server() {
    if [ -n "${SERVER_PID:-}" ]; then
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            kill -TERM "$SERVER_PID" 2>/dev/null || true
            for _ in $(seq 1 300); do
                kill -0 "$SERVER_PID" 2>/dev/null || break
                sleep 0.1
            done
            if kill -0 "$SERVER_PID" 2>/dev/null; then
                log "server $SERVER_PID did not stop on SIGTERM in 30 s, killing it"
                kill -KILL "$SERVER_PID" 2>/dev/null || true
            fi
        fi
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}

cleanup() {
    local rc=$?
    stop_server
    if [ "${KEEP_TMP:-0}" = 1 ] || [ $rc -ne 0 ]; then
        log "temp dir kept: $TMP"
    else
        rm -rf "$TMP"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { # PORT: wait until an NBD server answers on it
    local port=$1
    for _ in $(seq 1 200); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            log "server exited before listening on $port"; return 1
        fi
        if nbdinfo --list "nbd://127.0.0.1:$port" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    log "server did not listen on $port"; return 1
}

# fio_run NAME URI OUTJSON ARGS...: one fio job, JSON output
fio_run() {
    local name=$1 uri=$2 out=$3; shift 3
    fio --name="$name" --ioengine=nbd --uri="$uri" --bs=1M --iodepth=16 --size="$SIZE" \
        --output-format=json --output="$out" "$@"
}

# record SERVER WORKLOAD SNAPS RUN FIOJSON: one line of raw results
record() {
    python3 - "$@" >>"$RESULTS" <<'EOF'
import json, sys
server, workload, snaps, run, path = sys.argv[1:]
with open(path) as f:
    text = f.read()
# fio may print notes before the JSON object
d = json.loads(text[text.index("{"):])
w = d["jobs"][0]["write"]
pct = w.get("clat_ns", {}).get("percentile", {})
p99 = pct.get("99.000000")
print(json.dumps({
    "server": server, "workload": workload, "snapshots": int(snaps), "run": int(run),
    "mib_s": w["bw_bytes"] / 2**20, "iops": w["iops"],
    "p99_ms": p99 / 1e6 if p99 is not None else None,
    "runtime_ms": w["runtime"], "io_bytes": w["io_bytes"],
}))
EOF
    tail -n 1 "$RESULTS" | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); print("  %-9s %-9s N=%-2d run %d: %8.1f MiB/s %9.0f IOPS  p99 %.2f ms" % (r["server"], r["workload"], r["snapshots"], r["run"], r["mib_s"], r["iops"], r["p99_ms"] or 0))' >&2
}

SEQ_ARGS=(--rw=write --bs=1M --end_fsync=1)
RAND_ARGS=(--rw=randwrite --bs=4k --time_based --runtime="$RAND_RUNTIME" --randrepeat=0)

# run_suite SERVER URI SNAPFN: fill, then W1 for each N, then W3. SNAPFN N takes N snapshots
# (it may restart the server).
run_suite() {
    local server=$1 uri=$2 snapfn=$3 dir=$TMP/$1 n r
    log "$server: fill (sequential 1 MiB, $SIZE)"
    fio_run fill "$uri" "$dir/fill.json" "${SEQ_ARGS[@]}"
    for n in "${SEQ_SNAPS[@]}"; do
        if [ "$server" = nbdkit ] && [ "$n" -ne 0 ]; then continue; fi
        for r in $(seq 1 "$RUNS"); do
            [ "$n" -eq 0 ] || "$snapfn" "$n"
            log "$server: W1 seq overwrite, $n fresh snapshots, run $r/$RUNS"
            fio_run "w1-n$n-r$r" "$uri" "$dir/w1-n$n-r$r.json" "${SEQ_ARGS[@]}"
            record "$server" seq-write "$n" "$r" "$dir/w1-n$n-r$r.json"
        done
    done
    n=$RAND_SNAPS
    [ "$server" != nbdkit ] || n=0
    for r in $(seq 1 "$RUNS"); do
        [ "$n" -eq 0 ] || "$snapfn" "$n"
        log "$server: W3 random 4 KiB writes ${RAND_RUNTIME}s, $n fresh snapshots, run $r/$RUNS"
        fio_run "w3-n$n-r$r" "$uri" "$dir/w3-n$n-r$r.json" "${RAND_ARGS[@]}"
        record "$server" rand-write "$n" "$r" "$dir/w3-n$n-r$r.json"
    done
}

SNAP_SEQ=0

# ---------------------------------------------------------------- snapvol
PORT=$((PORT_BASE))
mkdir -p "$TMP/snapvol"
export SNAPVOL_STORE=$TMP/snapvol/store
"$SNAPVOL" create v --size "$SIZE" >&2
"$SNAPVOL" serve --listen "127.0.0.1:$PORT" --log-level warn >"$TMP/snapvol/serve.log" 2>&1 &
SERVER_PID=$!
wait_port "$PORT"
snapvol_snaps() {
    local i
    for i in $(seq 1 "$1"); do
        SNAP_SEQ=$((SNAP_SEQ + 1))
        "$SNAPVOL" snapshot create "v@s$SNAP_SEQ" >/dev/null
    done
}
run_suite snapvol "nbd://127.0.0.1:$PORT/v" snapvol_snaps
stop_server
unset SNAPVOL_STORE

# ---------------------------------------------------------------- qemu-nbd (qcow2)
PORT=$((PORT_BASE + 1))
mkdir -p "$TMP/qemu-nbd"
IMG=$TMP/qemu-nbd/v.qcow2
qemu-img create -q -f qcow2 "$IMG" "$SIZE"
# -t (persistent): without it qemu-nbd exits when the first client disconnects.
start_qemu_nbd() {
    qemu-nbd -f qcow2 -p "$PORT" -b 127.0.0.1 -x v --cache=writeback -t "$IMG" \
        >>"$TMP/qemu-nbd/serve.log" 2>&1 &
    SERVER_PID=$!
    wait_port "$PORT"
}
qemu_snaps() { # internal snapshots need the image closed: stop, snapshot, start again
    local i
    stop_server
    for i in $(seq 1 "$1"); do
        SNAP_SEQ=$((SNAP_SEQ + 1))
        qemu-img snapshot -c "s$SNAP_SEQ" "$IMG"
    done
    start_qemu_nbd
}
start_qemu_nbd
SNAP_SEQ=0
run_suite qemu-nbd "nbd://127.0.0.1:$PORT/v" qemu_snaps
stop_server

# ---------------------------------------------------------------- nbdkit (raw file, ceiling)
PORT=$((PORT_BASE + 2))
mkdir -p "$TMP/nbdkit"
truncate -s "$SIZE" "$TMP/nbdkit/v.raw"
# The file plugin serves the same file under any export name; the URI asks for the default ("").
nbdkit -f -p "$PORT" -i 127.0.0.1 file "$TMP/nbdkit/v.raw" >"$TMP/nbdkit/serve.log" 2>&1 &
SERVER_PID=$!
wait_port "$PORT"
run_suite nbdkit "nbd://127.0.0.1:$PORT/" true
stop_server

# ---------------------------------------------------------------- report
mkdir -p "$OUT"
python3 "$ROOT/scripts/bench_peers_report.py" --results "$RESULTS" --out "$OUT" --runs "$RUNS" \
    --size "$SIZE" --rand-runtime "$RAND_RUNTIME"
