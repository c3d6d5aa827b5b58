#!/usr/bin/env bash
# Side by side over NBD on loopback, the workloads of issues 5 and 15: snapvol, qemu (a qcow2 image
# with internal snapshots, served by qemu-storage-daemon) and nbdkit (file plugin on a raw file,
# no snapshots: the ceiling of serving NBD from a file on this machine), each driven by
# `fio --ioengine=nbd`. See docs/benchmarks.md, "Against the peers".
#
#   ./scripts/bench-peers.sh                      # everything, RUNS=5: about 25 min on 2 cores
#   RUNS=1 ./scripts/bench-peers.sh               # one run per point: about 9 min
#   WORKLOADS="w1 w3" RUNS=3 ./scripts/bench-peers.sh
#   SIZE=256M RUNS=1 W2_PASSES=4 W3_RUNTIME=3 W4_RUNTIME=3 W5_SAMPLES=5 W6_WRITE_S=3 \
#     W7_SIZE=64G W7_CHANGED=1G W7_SNAPS=8 W8_SNAPS=100 ./scripts/bench-peers.sh   # smoke test, 3 min
#
# With the defaults and RUNS=5, each workload takes about (minutes): w1 5, w2 7.5, w3 2.5,
# w4 2.5, w5 3, w6 2.5, w7 2.5 (W7_QEMU=1 adds 5.5), w8 2. The script prints its estimate for the
# chosen settings at the start (from this machine's speeds, measured on 2026-11-26: sequential
# writes with snapshots at about 135 MiB/s for snapvol, 160 for qemu, 550 for nbdkit, and
# 0.45 s to start a fio process), each workload's elapsed time as it ends, and the total.
#
# qemu: qemu-storage-daemon serves the qcow2 image over NBD with writeback caching (the same as
# `qemu-nbd --cache=writeback`: the blockdev defaults) and a QMP socket; internal snapshots are
# taken live with `blockdev-snapshot-internal-sync`, as snapvol's are through its control
# socket, so neither server is stopped for a snapshot (qemu-nbd needs the image closed).
#
# Each server starts with fresh state (a temp dir under /var/tmp, deleted after each workload)
# for each workload, and its volume of SIZE is first filled by one sequential 1 MiB pass
# (untimed). nbdkit takes no snapshots: it runs the figures without them. Every figure is the
# median of RUNS runs; the report gives each one's spread, (max - min) / median over the runs.
#   w1  sequential 1 MiB overwrite of the whole volume, qd 16, --end_fsync=1, after N fresh
#       snapshots taken back to back (W1_SNAPS, default 0 1 8 64). RUNS passes for each N, in
#       that order, on one volume: snapshots accumulate (N counts the ones taken since the
#       previous pass). Passes follow each other at once, so a pass also pays for what the
#       previous one left to destage: sustained throughput. nbdkit: N = 0.
#   w2  a day of hourly snapshots: W2_PASSES (24) passes of sequential 1 MiB overwrites (qd 16,
#       --end_fsync=1), a snapshot before each. A pass overwrites W2_PASS_SIZE (default SIZE/8,
#       128 MiB: the size of snapvol's RAM cache) at rotating offsets (the volume's eighths in
#       turn, each overwritten 3 times a day), which keeps a day near a minute per server
#       (whole-volume passes: about 3 minutes). Per run (a day): the median pass and the
#       last pass.
#   w3  random 4 KiB writes, qd 16, W3_RUNTIME (8) seconds, after W3_SNAPS (8) fresh snapshots.
#   w4  sequential 1 MiB reads (qd 16) of an old snapshot for W4_RUNTIME (6) s while a second
#       fio job writes random 4 KiB blocks (qd 16) to the live volume. The old snapshot is
#       taken after the fill, then the volume is overwritten once and a recent snapshot taken,
#       so the old snapshot's data is all preserved copies and the live writes copy on write.
#       snapvol: the export v@old of the same server. qemu: a second process,
#       `qemu-nbd -l old` read-only on the same qcow2 with force-share (qemu cannot export an
#       internal snapshot from the daemon that writes the image; a snapshot's clusters and
#       tables are never rewritten while it exists, so reading them from a second process is
#       safe). nbdkit: the live file, read while it is written. W4_COLD=1 drops the page
#       cache (sync; drop_caches, needs root) before each run, for every server: the old
#       snapshot is then read from the disk, as a backup of last week's snapshot would be;
#       by default whatever the fill and the overwrite left cached stays.
#   w5  snapshot create latency: W5_SAMPLES (20) snapshots W5_GAP (0.1) s apart per run, idle
#       (after the server's CPU went quiet and a `sync`) and under random 4 KiB writes (qd 16,
#       one fio job for all the runs) to the first W5_FILL (1G), filled first; on volumes of
#       W5_SIZES (1G and a sparse 1T). snapvol: the wall time of each `snapvol snapshot create`
#       (a process that asks the server through its control socket; the report gives the
#       cost of starting a snapvol process alone); qemu: from connecting to the QMP socket
#       to the answer of blockdev-snapshot-internal-sync. Per run p50 and p99 (nearest rank:
#       with 20 samples p99 is the maximum), median over runs; peers.json pools the samples.
#   w6  recovery after SIGKILL: a snapshot, then random 256 KiB writes, qd 16, a FLUSH every
#       16 writes, for W6_WRITE_S (8) s, which leaves the cache journal (SNAPVOL_JOURNAL,
#       512M) anywhere up to full of writes not yet destaged; kill -9 the server mid-write,
#       start it again and time until `nbdinfo --size` answers (polled every 20 ms). snapvol
#       replays its journal before it listens; its log gives the records and bytes replayed.
#       Then a clean restart (SIGTERM, start) is timed as the baseline. qemu: the same kill
#       and restart (no journal).
#   w7  resident memory with a sparse W7_SIZE (1T) volume, W7_SNAPS (64) snapshots and
#       W7_CHANGED (10G) written: each snapshot is followed by W7_CHANGED/W7_SNAPS of random
#       1 MiB writes over the whole volume. VmRSS and VmHWM from /proc/PID/status, against
#       snapvol's RAM cache (a quarter of the journal: 128 MiB). One run (memory, not a
#       timing). snapvol only unless W7_QEMU=1: qcow2 writes there run at about 35 MiB/s.
#   w8  many snapshots: scripts/bench-many-snapshots.py W8_SNAPS (10000) on its own server
#       (port PORT_BASE + 3): snapshot create, delete (freeing a copy) and list at 10 and at
#       W8_SNAPS snapshots, each with a preserved copy only it reads, and the server's VmRSS.
#       snapvol only (qemu's internal snapshots are not made for thousands). One run.
#
# Environment: RUNS (5), WORKLOADS ("w1 w2 w3 w4 w5 w6 w7"), SERVERS ("snapvol qemu nbdkit"),
# SIZE (1G), W1_SNAPS, W2_PASSES, W2_PASS_SIZE, W3_RUNTIME (alias RAND_RUNTIME), W3_SNAPS,
# W4_RUNTIME, W4_COLD, W5_SIZES, W5_SAMPLES, W5_GAP, W5_FILL, W6_WRITE_S, W7_SIZE, W7_CHANGED, W7_SNAPS,
# W7_QEMU (0), W8_SNAPS (10000), SNAPVOL_JOURNAL (512M), SNAPVOL_WRITE_MODE (atomic; throughput labels snapvol's
# rows "snapvol (throughput)"), SNAPVOL_CACHE_DIR (unset; a directory puts snapvol's
# cache journal in a file there, `create --cache`: /dev/shm stands in for NVRAM, but a tmpfs is
# not durable across power loss, so label such rows so), SNAPVOL_BIN (target/release/snapvol: another
# build for an A/B), PORT_BASE (10950; uses 4 ports), OUT (docs/bench when
# every workload and server runs, else /var/tmp/bench-peers-out), KEEP_TMP=1 keeps the temp
# dir (it is also kept when the script fails). Output: OUT/peers.json (settings, medians and
# every run), OUT/peers.md, OUT/peers-seq-write.svg (w1), OUT/peers-hourly.svg (w2).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
ALL_WORKLOADS="w1 w2 w3 w4 w5 w6 w7 w8"
ALL_SERVERS="snapvol qemu nbdkit"
RUNS=${RUNS:-5}
WORKLOADS=${WORKLOADS:-$ALL_WORKLOADS}
SERVERS=${SERVERS:-$ALL_SERVERS}
SIZE=${SIZE:-1G}
W1_SNAPS=${W1_SNAPS:-0 1 8 64}
W2_PASSES=${W2_PASSES:-24}
W2_PASS_SIZE=${W2_PASS_SIZE:-}
W3_RUNTIME=${W3_RUNTIME:-${RAND_RUNTIME:-8}}
W3_SNAPS=${W3_SNAPS:-8}
W4_RUNTIME=${W4_RUNTIME:-6}
W4_COLD=${W4_COLD:-0}
W5_SIZES=${W5_SIZES:-1G 1T}
W5_SAMPLES=${W5_SAMPLES:-20}
W5_GAP=${W5_GAP:-0.1}
W5_FILL=${W5_FILL:-1G}
W6_WRITE_S=${W6_WRITE_S:-8}
W7_SIZE=${W7_SIZE:-1T}
W7_CHANGED=${W7_CHANGED:-10G}
W7_SNAPS=${W7_SNAPS:-64}
W7_QEMU=${W7_QEMU:-0}
W8_SNAPS=${W8_SNAPS:-10000}
SNAPVOL_JOURNAL=${SNAPVOL_JOURNAL:-512M}
SNAPVOL_CACHE_DIR=${SNAPVOL_CACHE_DIR:-}
SNAPVOL_WRITE_MODE=${SNAPVOL_WRITE_MODE:-atomic}
if [ -n "$SNAPVOL_CACHE_DIR" ] && [ ! -d "$SNAPVOL_CACHE_DIR" ]; then
    echo "bench-peers.sh: SNAPVOL_CACHE_DIR=$SNAPVOL_CACHE_DIR is not a directory" >&2
    exit 2
fi
PORT_BASE=${PORT_BASE:-10950}
if [ -z "${OUT:-}" ]; then
    # shellcheck disable=SC2086,SC2116 # word splitting normalizes the spaces
    if [ "$(echo $WORKLOADS)" = "$ALL_WORKLOADS" ] && [ "$(echo $SERVERS)" = "$ALL_SERVERS" ] &&
        [ "$SNAPVOL_WRITE_MODE" = atomic ] && [ -z "$SNAPVOL_CACHE_DIR" ]; then
        OUT=$ROOT/docs/bench
    else
        OUT=/var/tmp/bench-peers-out   # a partial run does not overwrite the published report
    fi
fi

log() { printf '[bench-peers %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
bytes() { numfmt --from=iec "${1%iB}"; }   # 1G -> 1073741824, 256M, 64K, 1GiB
has() { local x; for x in $2; do [ "$x" = "$1" ] && return 0; done; return 1; }

SIZE_B=$(bytes "$SIZE")
W2_PASS_B=$(bytes "${W2_PASS_SIZE:-$((SIZE_B / 8))}")
W5_FILL_B=$(bytes "$W5_FILL")
W7_SIZE_B=$(bytes "$W7_SIZE")
W7_CHANGED_B=$(bytes "$W7_CHANGED")
SNAPVOL_CACHE_B=$(($(bytes "$SNAPVOL_JOURNAL") / 4))
for w in $WORKLOADS; do has "$w" "$ALL_WORKLOADS" || die "unknown workload $w (have: $ALL_WORKLOADS)"; done
for s in $SERVERS; do has "$s" "$ALL_SERVERS" || die "unknown server $s (have: $ALL_SERVERS)"; done
((RUNS >= 1)) || die "RUNS must be at least 1"
((W2_PASS_B <= SIZE_B && W2_PASS_B % 1048576 == 0)) || die "W2_PASS_SIZE must be whole MiB, at most SIZE"
((SIZE_B % 1048576 == 0)) || die "SIZE must be whole MiB"
((W5_FILL_B <= $(bytes "${W5_SIZES%% *}"))) || die "W5_FILL larger than the first of W5_SIZES"

# ---------------------------------------------------------------- runtime estimate
# Seconds, from this machine's speeds (2 cores, measured 2026-11-26): MiB/s of sequential 1 MiB
# writes without and with snapshots (w1 passes; w2's shorter passes; w7's random 1 MiB writes on
# a sparse volume); a server's start and stop, a fill, a fio process (0.45 s), a snapshot.
estimate() {
    awk -v runs="$RUNS" -v wl=" $WORKLOADS " -v srv=" $SERVERS " -v size="$SIZE_B" \
        -v w1n="$W1_SNAPS" -v w2p="$W2_PASSES" -v w2b="$W2_PASS_B" -v w3t="$W3_RUNTIME" \
        -v w3n="$W3_SNAPS" -v w4t="$W4_RUNTIME" -v w5s="$W5_SIZES" -v w5n="$W5_SAMPLES" \
        -v w5g="$W5_GAP" -v w5f="$W5_FILL_B" -v w6t="$W6_WRITE_S" -v w7b="$W7_CHANGED_B" \
        -v w7n="$W7_SNAPS" -v w7q="$W7_QEMU" -v w8n="$W8_SNAPS" 'BEGIN {
        M = 1048576; fio = 0.45; snap = 0.03; ss = 2
        plain["snapvol"] = 250; cow["snapvol"] = 135; w2r["snapvol"] = 150; w7r["snapvol"] = 100
        plain["qemu"] = 380; cow["qemu"] = 160; w2r["qemu"] = 120; w7r["qemu"] = 35
        plain["nbdkit"] = 550; cow["nbdkit"] = 550; w2r["nbdkit"] = 400
        rec["snapvol"] = 4; rec["qemu"] = 1
        nn = split(w1n, N, " "); nv = split(w5s, V, " ")
        t = 0
        for (s in plain) {
            if (!index(srv, " " s " ")) continue
            snaps = s != "nbdkit"
            fill = size / M / plain[s] + fio + ss
            if (index(wl, " w1 ")) {
                t += fill
                for (i = 1; i <= nn; i++)
                    if (snaps || N[i] == 0)
                        t += runs * (size / M / (N[i] ? cow[s] : plain[s]) + fio + N[i] * snap)
            }
            if (index(wl, " w2 "))
                t += fill + runs * w2p * (w2b / M / w2r[s] + fio + snaps * snap)
            if (index(wl, " w3 "))
                t += fill + runs * (w3t + fio + snaps * w3n * snap)
            if (index(wl, " w4 "))
                t += fill + snaps * (size / M / cow[s] + fio + 2) + runs * (w4t + fio) + 3
            if (snaps && index(wl, " w5 "))
                t += nv * (w5f / M / plain[s] + fio + ss + 5 + 3 \
                           + runs * w5n * (2 * w5g + 0.1))
            if (snaps && index(wl, " w6 "))
                t += fill + runs * (w6t + snap + rec[s] + 2 * ss)
            if (index(wl, " w7 ") && (s == "snapvol" || (s == "qemu" && w7q == 1)))
                t += ss + w7b / M / w7r[s] + w7n * (fio + snap) + 5
            # w8: a snapshot process and a 4 KiB write each, then two measured points
            if (index(wl, " w8 ") && s == "snapvol")
                t += w8n * 0.011 + 30
        }
        printf "%d\n", t
    }'
}
EST_S=$(estimate)
log "workloads: $WORKLOADS; servers: $SERVERS; RUNS=$RUNS, SIZE=$SIZE"
log "estimated runtime: about $((EST_S / 60)) min $((EST_S % 60)) s (plus the build), output in $OUT"

# ---------------------------------------------------------------- prerequisites
need_apt=()
command -v nbdkit >/dev/null || need_apt+=(nbdkit)
command -v fio >/dev/null || need_apt+=(fio)
command -v nbdinfo >/dev/null || need_apt+=(libnbd-bin)
command -v qemu-storage-daemon >/dev/null || need_apt+=(qemu-utils)
# w8's client: Debian's Python with its libnbd bindings (not whatever python3 is first in PATH)
! has w8 "$WORKLOADS" || /usr/bin/python3 -c 'import nbd' 2>/dev/null || need_apt+=(python3-libnbd)
if ((${#need_apt[@]})); then
    log "installing ${need_apt[*]}"
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update
    $SUDO apt-get install -y "${need_apt[@]}"
fi
for t in qemu-img qemu-nbd qemu-storage-daemon python3 nbdkit fio nbdinfo numfmt; do
    command -v "$t" >/dev/null || die "missing $t"
done
fio --enghelp 2>/dev/null | grep -qw nbd || die "this fio has no nbd ioengine"
if ! python3 -c 'import matplotlib' 2>/dev/null; then
    log "installing matplotlib"
    python3 -m pip install matplotlib
fi

log "building snapvol (release)"
cargo build --release -p snapvol
SNAPVOL=${SNAPVOL_BIN:-$ROOT/target/release/snapvol}
REPORT=$ROOT/scripts/bench_peers_report.py

# ---------------------------------------------------------------- state and cleanup
TMP=$(mktemp -d /var/tmp/bench-peers.XXXXXX)
RESULTS=$TMP/results.jsonl
: >"$RESULTS"
T_START=$(date +%s)
SERVER='' SERVER_PID='' READER_PID='' LOAD_PID='' DIR='' URI=''
declare -A PORT=([snapvol]=$PORT_BASE [qemu]=$((PORT_BASE + 1)) [nbdkit]=$((PORT_BASE + 2)))
READER_PORT=$((PORT_BASE + 3))

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
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$LOAD_PID" INT; LOAD_PID=
    stop_pid "$READER_PID"; READER_PID=
    stop_pid "$SERVER_PID"; SERVER_PID=
    [ -z "$SNAPVOL_CACHE_DIR" ] || rm -f "$SNAPVOL_CACHE_DIR/bench-peers-v.journal"
    if [ "${KEEP_TMP:-0}" = 1 ]; then
        log "temp dir kept: $TMP (rm -rf it when done)"
    elif [ $rc -ne 0 ]; then
        # keep the logs and fio outputs to look at, not the volumes (W7's hold gigabytes)
        find "$TMP" -type f \( -name '*.raw' -o -name '*.qcow2' -o -name '*.svt' \
            -o -name '*.svj' \) -delete 2>/dev/null || true
        log "failed (exit $rc); logs and results kept in $TMP (rm -rf it when done)"
    else
        rm -rf "$TMP"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- QMP client (qemu snapshots)
QMP_PY=$TMP/qmp.py
cat >"$QMP_PY" <<'EOF'
"""qmp.py SOCKET NODE [--gap S] [--each] NAME...: take internal snapshots NAME... of NODE live
with blockdev-snapshot-internal-sync; print the milliseconds each took. --each: a fresh
connection per snapshot, timed from connect (like a management command); else one connection."""
import json, socket, sys, time

def read(f):
    while True:
        line = f.readline()
        if not line:
            sys.exit("qmp: connection closed")
        m = json.loads(line)
        if "event" not in m:
            return m

def cmd(f, command, **args):
    f.write(json.dumps({"execute": command, "arguments": args}) + "\n")
    f.flush()
    m = read(f)
    if "error" in m:
        sys.exit(f"qmp: {command}: {m['error'].get('desc')}")
    return m["return"]

def connect(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(120)  # never hang the benchmark on a wedged monitor
    s.connect(path)
    f = s.makefile("rw")
    read(f)  # greeting
    cmd(f, "qmp_capabilities")
    return s, f

args = sys.argv[1:]
path, node, gap, each = args.pop(0), args.pop(0), 0.0, False
while args and args[0].startswith("--"):
    opt = args.pop(0)
    if opt == "--gap":
        gap = float(args.pop(0))
    elif opt == "--each":
        each = True
conn = None if each else connect(path)
for i, name in enumerate(args):
    if i and gap:
        time.sleep(gap)
    t0 = time.perf_counter()
    s, f = connect(path) if each else conn
    cmd(f, "blockdev-snapshot-internal-sync", device=node, name=name)
    if each:
        f.close()  # the monitor serves one connection at a time: close it for the next
        s.close()
    print(f"{(time.perf_counter() - t0) * 1e3:.3f}", flush=True)
EOF

# ---------------------------------------------------------------- servers
# wait_ready URI PID LOG: until the server answers nbdinfo --size on URI (about a minute at most)
wait_ready() {
    local uri=$1 pid=$2 log=$3 i
    for i in $(seq 1 1500); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "server exited before serving $uri; the end of $log:"
            tail -n 20 "$log" >&2
            return 1
        fi
        nbdinfo --size "$uri" >/dev/null 2>&1 && return 0
        sleep 0.02
    done
    log "server did not serve $uri in a minute; the end of $log:"
    tail -n 20 "$log" >&2
    return 1
}

# port_free PORT: nothing listens on it (else we would measure someone else's server)
port_free() {
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
        die "port $1 is in use: set PORT_BASE to a free range of 4 ports"
    fi
}

# srv_start SERVER SIZE_BYTES DIR [reuse]: start SERVER on its port with its state in DIR
# (created fresh with a volume of SIZE_BYTES unless reuse); sets SERVER, SERVER_PID, DIR, URI.
srv_start() {
    local server=$1 size=$2 reuse=${4:-}
    SERVER=$server DIR=$3
    if [ -z "$reuse" ]; then rm -rf "$DIR"; mkdir -p "$DIR"; fi
    local port=${PORT[$server]}
    port_free "$port"
    case $server in
    snapvol)
        export SNAPVOL_STORE=$DIR/store
        if [ -z "$reuse" ]; then
            local cache=()
            if [ -n "$SNAPVOL_CACHE_DIR" ]; then
                rm -f "$SNAPVOL_CACHE_DIR/bench-peers-v.journal"
                cache=(--cache "$SNAPVOL_CACHE_DIR/bench-peers-v.journal")
            fi
            "$SNAPVOL" create v --size "$size" --journal-size "$SNAPVOL_JOURNAL" \
                --write-mode "$SNAPVOL_WRITE_MODE" "${cache[@]}" >/dev/null
        fi
        # info: the recovery lines of w6; a snapshot logs one line
        "$SNAPVOL" serve --listen "127.0.0.1:$port" --log-level info >>"$DIR/serve.log" 2>&1 &
        URI=nbd://127.0.0.1:$port/v
        ;;
    qemu)
        [ -n "$reuse" ] || qemu-img create -q -f qcow2 "$DIR/v.qcow2" "$size"
        rm -f "$DIR/qmp.sock"
        # Same caching as qemu-nbd --cache=writeback (the blockdev default: cache.direct=off,
        # cache.no-flush=off) and its default aio=threads.
        qemu-storage-daemon \
            --blockdev "driver=file,node-name=file0,filename=$DIR/v.qcow2" \
            --blockdev driver=qcow2,node-name=disk0,file=file0 \
            --nbd-server "addr.type=inet,addr.host=127.0.0.1,addr.port=$port" \
            --export type=nbd,id=exp0,node-name=disk0,name=v,writable=on \
            --chardev "socket,path=$DIR/qmp.sock,server=on,wait=off,id=qmp0" \
            --monitor chardev=qmp0 >>"$DIR/serve.log" 2>&1 &
        URI=nbd://127.0.0.1:$port/v
        ;;
    nbdkit)
        [ -n "$reuse" ] || truncate -s "$size" "$DIR/v.raw"
        # The file plugin serves the same file under any export name; the URI asks for "".
        nbdkit -f -p "$port" -i 127.0.0.1 file "$DIR/v.raw" >>"$DIR/serve.log" 2>&1 &
        URI=nbd://127.0.0.1:$port/
        ;;
    esac
    SERVER_PID=$!
    wait_ready "$URI" "$SERVER_PID" "$DIR/serve.log"
}

srv_stop() { stop_pid "$SERVER_PID"; SERVER_PID=; }
srv_done() { srv_stop; rm -rf "$DIR"; }   # stop and free the disk

# settle: wait (at most 60 s) until the server has used at most 2 % of a CPU for a second,
# i.e. its background work (snapvol's destager) is done
settle() {
    local hz prev now i t0=$EPOCHREALTIME
    hz=$(getconf CLK_TCK)
    prev=$(awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat")
    for i in $(seq 1 60); do
        sleep 1
        now=$(awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat")
        (((now - prev) * 50 > hz)) || break
        prev=$now
    done
    log "$SERVER: settled in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"
}

# snap NAME...: take snapshots back to back on the running server
snap() {
    local n
    case $SERVER in
    snapvol) for n in "$@"; do "$SNAPVOL" snapshot create "v@$n" >/dev/null; done ;;
    qemu) python3 "$QMP_PY" "$DIR/qmp.sock" disk0 "$@" >/dev/null ;;
    *) die "$SERVER takes no snapshots" ;;
    esac
}
SNAP_SEQ=0
snap_n() { # N: take N fresh snapshots named s1, s2, ...
    local names=() i
    for ((i = 0; i < $1; i++)); do SNAP_SEQ=$((SNAP_SEQ + 1)); names+=("s$SNAP_SEQ"); done
    ((${#names[@]} == 0)) || snap "${names[@]}"
}

# snap_timed OUTFILE GAP NAME...: one snapshot at a time, GAP s apart; OUTFILE gets the
# milliseconds of each
snap_timed() {
    local out=$1 gap=$2 n t0 t1 first=1; shift 2
    case $SERVER in
    snapvol)
        : >"$out"
        for n in "$@"; do
            [ -n "$first" ] || sleep "$gap"
            first=
            t0=$EPOCHREALTIME
            "$SNAPVOL" snapshot create "v@$n" >/dev/null
            t1=$EPOCHREALTIME
            awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", (b - a) * 1000 }' >>"$out"
        done
        ;;
    qemu) python3 "$QMP_PY" "$DIR/qmp.sock" disk0 --each --gap "$gap" "$@" >"$out" ;;
    esac
}

# ---------------------------------------------------------------- fio and results
# fio_run OUTJSON ARGS...: one or more fio jobs (each job's options after its --name), JSON out
fio_run() {
    local out=$1; shift
    fio --output-format=json --output="$out" "$@" >/dev/null
}
# job NAME URI: the options every job shares
job() { echo "--name=$1 --ioengine=nbd --uri=$2 --iodepth=16"; }
# record FIOJSON KEY=VALUE...: one line of results from a fio run (summary on stderr)
record() { python3 "$REPORT" fio "$@" >>"$RESULTS"; }
# emit KEY=VALUE...: one line of results (KEY=@FILE: the numbers in FILE, one a line)
emit() { python3 "$REPORT" emit "$@" >>"$RESULTS"; }

fill() { # the whole volume (or the first $1 bytes), sequential 1 MiB, untimed
    log "$SERVER: fill ($(numfmt --to=iec "${1:-$SIZE_B}"))"
    # shellcheck disable=SC2046
    fio_run "$DIR/fill.json" $(job fill "$URI") --rw=write --bs=1M --size="${1:-$SIZE_B}" --end_fsync=1
}
seq_args() { echo "--rw=write --bs=1M --end_fsync=1"; }

phase_start() { PHASE=$1; PHASE_T0=$(date +%s); log "=== $1: $2"; }
phase_end() {
    local s=$(($(date +%s) - PHASE_T0))
    log "=== $PHASE done in $((s / 60)) min $((s % 60)) s"
    emit workload=timing phase="$PHASE" seconds="$s"
}

# ---------------------------------------------------------------- w1
w1() {
    local server n r d
    phase_start w1 "sequential 1 MiB overwrite after N = $W1_SNAPS snapshots, $RUNS runs each"
    for server in $SERVERS; do
        srv_start "$server" "$SIZE_B" "$TMP/w1-$server"
        SNAP_SEQ=0
        fill
        for n in $W1_SNAPS; do
            if [ "$server" = nbdkit ] && [ "$n" -ne 0 ]; then continue; fi
            for r in $(seq 1 "$RUNS"); do
                snap_n "$n"
                d=$DIR/w1-n$n-r$r.json
                # shellcheck disable=SC2046
                fio_run "$d" $(job "w1-n$n" "$URI") $(seq_args) --size="$SIZE_B"
                record "$d" workload=w1 server="$server" snapshots="$n" run="$r"
            done
        done
        srv_done
    done
    phase_end
}

# ---------------------------------------------------------------- w2
w2_summary() { # SERVER RUN: one log line for a day
    python3 - "$RESULTS" "$@" <<'EOF' >&2
import json, statistics, sys
path, server, run = sys.argv[1], sys.argv[2], int(sys.argv[3])
ps = [r for r in map(json.loads, open(path))
      if r.get("workload") == "w2" and r["server"] == server and r["run"] == run]
xs = [p["mib_s"] for p in sorted(ps, key=lambda p: p["pass"])]
print(f"  w2  {server:<8} run {run}: {len(xs)} passes, median {statistics.median(xs):.1f} MiB/s, "
      f"last {xs[-1]:.1f}, min {min(xs):.1f}, max {max(xs):.1f}")
EOF
}
w2() {
    local server r p off d regions=$((SIZE_B / W2_PASS_B))
    phase_start w2 "$W2_PASSES passes of $(numfmt --to=iec "$W2_PASS_B"), a snapshot before each, $RUNS runs"
    for server in $SERVERS; do
        srv_start "$server" "$SIZE_B" "$TMP/w2-$server"
        SNAP_SEQ=0
        fill
        for r in $(seq 1 "$RUNS"); do
            log "$server: w2 run $r/$RUNS"
            for p in $(seq 1 "$W2_PASSES"); do
                [ "$server" = nbdkit ] || snap_n 1
                off=$((((p - 1) % regions) * W2_PASS_B))
                d=$DIR/w2-r$r-p$p.json
                # shellcheck disable=SC2046
                fio_run "$d" $(job "w2-p$p" "$URI") $(seq_args) --offset="$off" --size="$W2_PASS_B"
                record "$d" workload=w2 server="$server" run="$r" pass="$p" quiet=1
            done
            w2_summary "$server" "$r"
        done
        srv_done
    done
    phase_end
}

# ---------------------------------------------------------------- w3
w3() {
    local server r n d
    phase_start w3 "random 4 KiB writes for $W3_RUNTIME s after $W3_SNAPS snapshots, $RUNS runs"
    for server in $SERVERS; do
        srv_start "$server" "$SIZE_B" "$TMP/w3-$server"
        SNAP_SEQ=0
        fill
        n=$W3_SNAPS
        [ "$server" != nbdkit ] || n=0
        for r in $(seq 1 "$RUNS"); do
            snap_n "$n"
            d=$DIR/w3-r$r.json
            # shellcheck disable=SC2046
            fio_run "$d" $(job w3 "$URI") --rw=randwrite --bs=4k --size="$SIZE_B" \
                --time_based --runtime="$W3_RUNTIME" --randrepeat=0
            record "$d" workload=w3 server="$server" snapshots="$n" run="$r"
        done
        srv_done
    done
    phase_end
}

# ---------------------------------------------------------------- w4
w4() {
    local server r d read_uri reads
    phase_start w4 "sequential read of an old snapshot for $W4_RUNTIME s under random 4 KiB writes, $RUNS runs"
    for server in $SERVERS; do
        srv_start "$server" "$SIZE_B" "$TMP/w4-$server"
        fill
        case $server in
        snapvol | qemu)
            snap old
            log "$server: overwrite once (untimed), so the old snapshot's data is preserved copies"
            # shellcheck disable=SC2046
            fio_run "$DIR/overwrite.json" $(job overwrite "$URI") $(seq_args) --size="$SIZE_B"
            snap recent
            ;;
        esac
        case $server in
        snapvol)
            read_uri=nbd://127.0.0.1:${PORT[snapvol]}/v@old
            reads="snapshot v@old, an export of the same server"
            ;;
        qemu)
            port_free "$READER_PORT"
            qemu-nbd --image-opts \
                "driver=qcow2,force-share=on,read-only=on,file.driver=file,file.filename=$DIR/v.qcow2" \
                -r -l old -p "$READER_PORT" -b 127.0.0.1 -x old -t >>"$DIR/reader.log" 2>&1 &
            READER_PID=$!
            read_uri=nbd://127.0.0.1:$READER_PORT/old
            wait_ready "$read_uri" "$READER_PID" "$DIR/reader.log"
            reads="internal snapshot old, qemu-nbd -l old (a second process, force-share)"
            ;;
        nbdkit)
            read_uri=$URI
            reads="the live file (no snapshots), a second connection"
            ;;
        esac
        for r in $(seq 1 "$RUNS"); do
            d=$DIR/w4-r$r.json
            if [ "$W4_COLD" = 1 ]; then
                sync
                echo 3 >/proc/sys/vm/drop_caches ||
                    die "W4_COLD=1 drops the page cache, which needs root"
            fi
            # shellcheck disable=SC2046
            fio_run "$d" \
                $(job read "$read_uri") --rw=read --bs=1M --size="$SIZE_B" \
                --time_based --runtime="$W4_RUNTIME" \
                $(job write "$URI") --rw=randwrite --bs=4k --size="$SIZE_B" \
                --time_based --runtime="$W4_RUNTIME" --randrepeat=0
            record "$d" workload=w4 server="$server" run="$r" reads="$reads"
        done
        stop_pid "$READER_PID"; READER_PID=
        srv_done
    done
    phase_end
}

# ---------------------------------------------------------------- w5
w5() {
    local server vsize vb r d i names
    phase_start w5 "snapshot create latency, $W5_SAMPLES samples a run, idle and under random writes, on $W5_SIZES"
    # what a snapvol process costs by itself, to read the snapvol figures against
    d=$TMP/w5-exec.txt
    : >"$d"
    for i in $(seq 1 20); do
        t0=$EPOCHREALTIME; "$SNAPVOL" --version >/dev/null; t1=$EPOCHREALTIME
        awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", (b - a) * 1000 }' >>"$d"
    done
    emit workload=w5-exec server=snapvol samples_ms=@"$d"
    for server in $SERVERS; do
        [ "$server" != nbdkit ] || continue
        for vsize in $W5_SIZES; do
            vb=$(bytes "$vsize")
            srv_start "$server" "$vb" "$TMP/w5-$server-$vsize"
            fill "$W5_FILL_B"
            snap warmup   # waits for the fill's data to reach the journal; untimed
            settle        # idle means idle: the destager done with the fill,
            sync          # and no dirty page cache for a snapshot's syncs to write out
            for mode in idle load; do
                if [ $mode = load ]; then # one load for every run's samples
                    # shellcheck disable=SC2046
                    fio --output-format=json --output="$DIR/load.json" \
                        $(job load "$URI") --rw=randwrite --bs=4k --size="$W5_FILL_B" \
                        --time_based --runtime=3600 --randrepeat=0 >/dev/null &
                    LOAD_PID=$!
                    sleep 2
                fi
                for r in $(seq 1 "$RUNS"); do
                    names=()
                    for i in $(seq 1 "$W5_SAMPLES"); do names+=("$mode-r$r-$i"); done
                    snap_timed "$DIR/lat-$mode-r$r.txt" "$W5_GAP" "${names[@]}"
                    emit workload=w5 server="$server" volume="$vsize" mode=$mode run="$r" \
                        samples_ms=@"$DIR/lat-$mode-r$r.txt"
                done
                if [ $mode = load ]; then
                    stop_pid "$LOAD_PID" INT; LOAD_PID=
                    record "$DIR/load.json" workload=w5-load server="$server" volume="$vsize"
                fi
            done
            srv_done
        done
    done
    phase_end
}

# ---------------------------------------------------------------- w6
w6() {
    local server r d wpid t0 t1 rec_ms clean_ms line records rbytes
    phase_start w6 "recovery after kill -9 under writes ($W6_WRITE_S s of writes), $RUNS runs"
    for server in $SERVERS; do
        [ "$server" != nbdkit ] || continue
        srv_start "$server" "$SIZE_B" "$TMP/w6-$server"
        SNAP_SEQ=0
        fill
        for r in $(seq 1 "$RUNS"); do
            snap_n 1   # the destager has originals to preserve: the journal fills faster
            # shellcheck disable=SC2046
            fio --output-format=json --output="$DIR/w6-r$r.json" \
                $(job w6 "$URI") --rw=randwrite --bs=256k --size="$SIZE_B" --fsync=16 \
                --time_based --runtime=3600 --randrepeat=0 >/dev/null 2>&1 &
            wpid=$!
            sleep "$W6_WRITE_S"
            log "$server: kill -9 under writes, run $r/$RUNS"
            kill -KILL "$SERVER_PID"
            { wait "$SERVER_PID"; } 2>/dev/null || true   # no "Killed" line from the shell
            SERVER_PID=
            wait "$wpid" 2>/dev/null || true   # fio fails when the server goes away
            [ "$server" != snapvol ] || echo "--- restart after kill -9, run $r" >>"$DIR/serve.log"
            line=$(wc -l <"$DIR/serve.log")
            t0=$EPOCHREALTIME
            srv_start "$server" "$SIZE_B" "$DIR" reuse
            t1=$EPOCHREALTIME
            rec_ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) * 1000 }')
            records=0 rbytes=0
            if [ "$server" = snapvol ]; then
                # "recovering writes from the cache journal volume=v records=N bytes=B"
                read -r records rbytes < <(tail -n +"$((line + 1))" "$DIR/serve.log" |
                    sed 's/\x1b\[[0-9;]*m//g' |
                    sed -n 's/.*recovering writes.*records=\([0-9]*\) bytes=\([0-9]*\).*/\1 \2/p' |
                    head -n 1 | grep . || echo "0 0")
            fi
            srv_stop
            t0=$EPOCHREALTIME
            srv_start "$server" "$SIZE_B" "$DIR" reuse
            t1=$EPOCHREALTIME
            clean_ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) * 1000 }')
            emit workload=w6 server="$server" run="$r" recovery_ms="$rec_ms" clean_start_ms="$clean_ms" \
                records="$records" replayed_bytes="$rbytes" journal_bytes="$(bytes "$SNAPVOL_JOURNAL")"
        done
        srv_done
    done
    phase_end
}

# ---------------------------------------------------------------- w7
rss_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
w7() {
    local server i per t0 rss0 d trace
    per=$((W7_CHANGED_B / W7_SNAPS / 1048576 * 1048576))
    phase_start w7 "memory: $W7_SIZE sparse, $W7_SNAPS snapshots, $(numfmt --to=iec "$W7_CHANGED_B") written"
    for server in $SERVERS; do
        [ "$server" != nbdkit ] || continue
        [ "$server" != qemu ] || [ "$W7_QEMU" = 1 ] || continue
        srv_start "$server" "$W7_SIZE_B" "$TMP/w7-$server"
        SNAP_SEQ=0
        rss0=$(rss_kib "$SERVER_PID" VmRSS)
        trace=$DIR/rss.txt
        : >"$trace"
        t0=$(date +%s)
        for i in $(seq 1 "$W7_SNAPS"); do
            snap_n 1
            d=$DIR/w7-$i.json
            # shellcheck disable=SC2046
            fio_run "$d" $(job "w7-$i" "$URI") --rw=randwrite --bs=1M --size="$W7_SIZE_B" \
                --io_size="$per" --randrepeat=0 --end_fsync=1
            rss_kib "$SERVER_PID" VmRSS >>"$trace"
            ((i % 16)) || log "$server: w7 $i/$W7_SNAPS snapshots, VmRSS $(tail -n 1 "$trace") KiB"
        done
        t0=$(($(date +%s) - t0))
        settle   # the end figure once the background work is done (VmHWM has the peak)
        emit workload=w7 server="$server" volume="$W7_SIZE" snapshots="$W7_SNAPS" \
            written_bytes=$((per * W7_SNAPS)) seconds="$t0" \
            rss_start_kib="$rss0" rss_end_kib="$(rss_kib "$SERVER_PID" VmRSS)" \
            hwm_kib="$(rss_kib "$SERVER_PID" VmHWM)" rss_anon_kib="$(rss_kib "$SERVER_PID" RssAnon)" \
            cache_bytes="$([ "$server" = snapvol ] && echo "$SNAPVOL_CACHE_B" || echo 0)" \
            rss_trace_kib=@"$trace"
        srv_done
    done
    phase_end
}

# ---------------------------------------------------------------- w8
w8() {
    phase_start w8 "many snapshots: create, delete and list at 10 and at $W8_SNAPS"
    if has snapvol "$SERVERS"; then
        local out=$TMP/w8.jsonl
        # The binary the other workloads ran (the script would build the working tree's).
        SNAPVOL_BIN=$SNAPVOL PORT=$((PORT_BASE + 3)) /usr/bin/python3 "$ROOT/scripts/bench-many-snapshots.py" \
            "$W8_SNAPS" >"$out"
        local line
        while read -r line; do
            # shellcheck disable=SC2046 # one KEY=VALUE word per field of the script's JSON line
            emit workload=w8 server=snapvol $(python3 -c 'import json, sys
print(" ".join(f"{k}={v}" for k, v in json.loads(sys.argv[1]).items()))' "$line")
        done <"$out"
    fi
    phase_end
}

# ---------------------------------------------------------------- run
for w in $ALL_WORKLOADS; do
    has "$w" "$WORKLOADS" && "$w"
done
unset SNAPVOL_STORE

T_TOTAL=$(($(date +%s) - T_START))
log "all workloads done in $((T_TOTAL / 60)) min $((T_TOTAL % 60)) s (estimate was $((EST_S / 60)) min $((EST_S % 60)) s)"
mkdir -p "$OUT"
python3 "$REPORT" report --results "$RESULTS" --out "$OUT" \
    --meta runs="$RUNS" size="$SIZE" workloads="$WORKLOADS" servers="$SERVERS" \
    w1_snaps="$W1_SNAPS" w2_passes="$W2_PASSES" w2_pass_bytes="$W2_PASS_B" \
    w3_runtime_s="$W3_RUNTIME" w3_snaps="$W3_SNAPS" w4_runtime_s="$W4_RUNTIME" w4_cold="$W4_COLD" \
    w5_sizes="$W5_SIZES" w5_samples="$W5_SAMPLES" w5_gap_s="$W5_GAP" w5_fill="$W5_FILL" \
    w6_write_s="$W6_WRITE_S" w7_size="$W7_SIZE" w7_changed="$W7_CHANGED" w7_snaps="$W7_SNAPS" \
    w8_snaps="$W8_SNAPS" \
    snapvol_journal="$SNAPVOL_JOURNAL" snapvol_cache_bytes="$SNAPVOL_CACHE_B" \
    snapvol_write_mode="$SNAPVOL_WRITE_MODE" snapvol_cache_dir="$SNAPVOL_CACHE_DIR" \
    total_seconds="$T_TOTAL" estimate_seconds="$EST_S"
