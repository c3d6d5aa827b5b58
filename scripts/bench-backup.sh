#!/usr/bin/env bash
# Backup and restore with the release `snapvol` CLI (issue 12): diff, incremental export and
# import-diff, rollback. See docs/benchmarks.md, "Diff, incremental export and rollback".
#
#   ./scripts/bench-backup.sh                  # RUNS=3: about 5 minutes, up to ~21 GiB in /var/tmp
#   RUNS=1 BIG_SIZE=64G BIG_CHANGED=1G BIG_SNAPS=8 ./scripts/bench-backup.sh   # smoke test
#
# Every figure is the wall time of one `snapvol` process (EPOCHREALTIME around it: process
# start, volume open and the work; `sync` before each, untimed), as the median of RUNS runs
# with their range, and for offline commands the median CPU time (user + system) of that
# process, which contention from other processes leaves alone. Markdown tables go to standard
# output, progress to standard error.
#
#   1. diff. A 1 GiB volume (filled with random data) with 8 snapshots, 4 MiB written after
#      each, and a sparse BIG_SIZE (1T) volume with BIG_SNAPS (64) snapshots and BIG_CHANGED
#      (10G) written, BIG_CHANGED/BIG_SNAPS after each. The writes are 1 MiB, through
#      `snapvol serve` with qemu-io, at distinct offsets spread over the whole volume (write k
#      after snapshot i at slot k*SNAPS+i), so the expected changed bytes of every span are
#      known. Timed: `snapvol --version` (process start), `info VOL` (the open, plus one pass
#      over the preserved chunks for the per-snapshot accounting), `diff` of two
#      adjacent snapshots, of the first and last snapshots, and from the first to the live
#      volume; offline (each command opens the volume, which builds the in-memory index of
#      every preserved chunk) and through the running server (the control socket, volume
#      already open). Each diff's changed_bytes and extent count (--json) are checked.
#   2. incremental export. A 1 GiB volume (random data), snapshot s0, then 1 MiB writes to
#      every 100th MiB (snapshot c1, 11 MiB), every 10th (c10, 103 MiB), every 2nd (c50,
#      512 MiB). Timed offline: `export VOL@cN FILE --from VOL@s0` against the full
#      `export VOL@cN FILE` and `export VOL@cN /dev/null` (the read side alone), and `import-diff` of the c10 stream into a fresh copy of a second
#      store that has s0 (each run on its own copy); the imported c10 must equal the
#      original's export byte for byte.
#   3. rollback. A 1 GiB volume (random data), snapshot base; for 1M, 16M, 128M and 1G: each
#      run imports that much new data at offset 0 (untimed), then times
#      `snapshot rollback VOL@base` offline; after the last run the live volume's export must
#      equal base's. On the BIG volume: snapshot rb, 1 MiB written at offset 0, rollback;
#      through the server (no client connected) and offline.
#
# Environment: RUNS (3), BIG_SIZE (1T), BIG_SNAPS (64), BIG_CHANGED (10G), KEEP_TMP=1 keeps the
# scratch directory (/var/tmp/bench-backup.XXXXXX). Needs qemu-io, python3, openssl.
# shellcheck disable=SC2016 # backquotes in single quotes are Markdown
set -euo pipefail
export LC_ALL=C

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
RUNS=${RUNS:-3}
BIG_SIZE=${BIG_SIZE:-1T}
BIG_SNAPS=${BIG_SNAPS:-64}
BIG_CHANGED=${BIG_CHANGED:-10G}
MiB=1048576

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
for tool in qemu-io python3 numfmt openssl; do
    command -v "$tool" >/dev/null || die "$tool is missing (qemu-utils, python3, openssl)"
done
bytes() { numfmt --from=iec "${1%B}"; }
BIG_SIZE_B=$(bytes "$BIG_SIZE")
BIG_CHANGED_B=$(bytes "$BIG_CHANGED")

log "building snapvol (release)"
cargo build --release --quiet -p snapvol
TARGET_DIR=${CARGO_TARGET_DIR:-target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR=$ROOT/$TARGET_DIR
SNAPVOL=$TARGET_DIR/release/snapvol
[ -x "$SNAPVOL" ] || die "no $SNAPVOL after the build"
sv() { "$SNAPVOL" "$@"; }

T=$(mktemp -d /var/tmp/bench-backup.XXXXXX)
SERVE_PID=
cleanup() {
    local rc=$?
    if [ -n "$SERVE_PID" ]; then kill -TERM "$SERVE_PID" 2>/dev/null || true; wait "$SERVE_PID" 2>/dev/null || true; fi
    if [ "${KEEP_TMP:-0}" = 1 ]; then log "kept $T"; else rm -rf "$T"; fi
    return $rc
}
trap cleanup EXIT
trap 'log "failed (status $?) at line $LINENO: $BASH_COMMAND"' ERR
mkdir -p "$T/times"
START=$EPOCHREALTIME
log "scratch in $T, RUNS=$RUNS"

# ---------------------------------------------------------------- helpers
# timed KEY CMD...: runs CMD once (stdout in $T/out, stderr in $T/err); appends its wall time
# in seconds to $T/times/KEY and its CPU time (user + system, from bash's `times`, which counts
# the children waited for) to $T/times/KEY.cpu. A `sync` first, untimed, so that earlier
# writes do not land in it. The CPU time is what contention from other processes on the
# machine leaves alone; it does not count a server's work for a command sent to it.
timed() {
    local key=$1 t0 t1
    shift
    sync
    times >"$T/cpu0"
    t0=$EPOCHREALTIME
    "$@" >"$T/out" 2>"$T/err" || { cat "$T/err" >&2; die "failed: $*"; }
    t1=$EPOCHREALTIME
    times >"$T/cpu1"
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f\n", b - a }' >>"$T/times/$key"
    awk 'function s(x, p) { split(x, p, "m"); return p[1] * 60 + p[2] }
         FNR == 2 { c[FILENAME] = s($1) + s($2) }
         END { printf "%.6f\n", c[ARGV[2]] - c[ARGV[1]] }' "$T/cpu0" "$T/cpu1" >>"$T/times/$key.cpu"
}
# med KEY: "median (min–max)" of KEY's runs, in seconds
med() {
    sort -g "$T/times/$1" | awk '
        function f(x) { return sprintf(x < 0.1 ? "%.4f" : "%.3f", x) }
        { v[NR] = $1 }
        END {
            m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%s (%s–%s)", f(m), f(v[1]), f(v[NR])
        }'
}
# medv KEY: the median alone, for arithmetic; cpu KEY: the median CPU time, 3 decimals
medv() {
    sort -g "$T/times/$1" | awk '{ v[NR] = $1 } END { print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
cpu() { awk -v m="$(medv "$1.cpu")" 'BEGIN { printf "%.3f", m }'; }
mib() { awk -v b="$1" 'BEGIN { x = b / 1048576; printf(x == int(x) ? "%d" : "%.1f", x) }'; }
rate() { awk -v m="$1" -v s="$2" 'BEGIN { printf "%.0f", m / s }'; } # MiB, seconds -> MiB/s
# json FILE EXPR: python expression over d, the JSON document in FILE
json() { python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print($2)" "$1"; }

# serve_start: serve $SNAPVOL_STORE on an ephemeral TCP port and $T/nbd.sock
serve_start() {
    local i
    rm -f "$T/nbd.sock"
    "$SNAPVOL" serve --listen 127.0.0.1:0 --unix "$T/nbd.sock" >>"$T/serve.log" 2>&1 &
    SERVE_PID=$!
    for i in $(seq 1 600); do
        kill -0 "$SERVE_PID" 2>/dev/null || { tail -n 20 "$T/serve.log" >&2; die "serve exited"; }
        [ -S "$T/nbd.sock" ] && [ -S "$SNAPVOL_STORE/control.sock" ] && return 0
        sleep 0.05
    done
    die "serve did not start in 30 s"
}
serve_stop() { # SIGTERM: finishes requests, destages every volume, exits 0
    kill -TERM "$SERVE_PID"
    wait "$SERVE_PID" || die "serve exited with $?"
    SERVE_PID=
}
uri() { echo "nbd+unix:///$1?socket=$T/nbd.sock"; }
# settle: until the server used at most 2 % of a CPU for a second (its destager is done)
settle() {
    local hz prev now i
    hz=$(getconf CLK_TCK)
    prev=$(awk '{ print $14 + $15 }' "/proc/$SERVE_PID/stat")
    for i in $(seq 1 120); do
        sleep 1
        now=$(awk '{ print $14 + $15 }' "/proc/$SERVE_PID/stat")
        (((now - prev) * 50 > hz)) || return 0
        prev=$now
    done
    log "the server was still busy after 120 s"
}
# qwrite VOL PATTERN OFFSET_MIB...: 1 MiB writes of byte PATTERN over NBD (qemu-io, 64 in
# flight at a time), then a flush
qwrite() {
    local vol=$1 pat=$2 args=() n=0 o
    shift 2
    for o in "$@"; do
        args+=(-c "aio_write -q -P $pat ${o}M 1M")
        n=$((n + 1))
        ((n % 64)) || args+=(-c aio_flush)
    done
    args+=(-c aio_flush -c flush)
    qemu-io -f raw "${args[@]}" "$(uri "$vol")" >"$T/qemu-io.out" 2>&1 ||
        { cat "$T/qemu-io.out" >&2; die "qemu-io failed"; }
    ! grep -qi 'fail\|error' "$T/qemu-io.out" || { cat "$T/qemu-io.out" >&2; die "qemu-io failed"; }
}
# spread VOL SIZE_BYTES SNAPS PER_MIB: snapshots s0..s(SNAPS-1), each followed by PER_MIB 1 MiB
# writes; write k after snapshot i goes to slot k*SNAPS+i, slots GAP MiB apart over the volume
spread() {
    local vol=$1 size=$2 snaps=$3 per=$4 gap i k offs
    gap=$((size / MiB / (snaps * per)))
    ((gap >= 2)) || die "$vol: $((snaps * per)) MiB of writes do not fit spread over $size bytes"
    for ((i = 0; i < snaps; i++)); do
        sv snapshot create "$vol@s$i" >/dev/null
        offs=()
        for ((k = 0; k < per; k++)); do offs+=("$(((k * snaps + i) * gap))"); done
        qwrite "$vol" 0xab "${offs[@]}"
        ((i % 16 != 15)) || log "$vol: $((i + 1))/$snaps snapshots written"
    done
}
# check_diff EXPECTED_BYTES EXPECTED_EXTENTS: what the last `diff --json` ($T/out) says
check_diff() {
    local want=$1 ext=$2 got n
    got=$(json "$T/out" 'd["changed_bytes"]')
    n=$(json "$T/out" 'len(d["extents"])')
    if [ "$got" != "$want" ] || [ "$n" != "$ext" ]; then
        die "diff reported $got bytes in $n extents, expected $want in $ext"
    fi
}

# diff_rows LABEL VOL SNAPS PER_MIB MODE: times info and the three diffs (RUNS each) in MODE
# (offline or served) and checks them; keys LABEL-MODE-*
diff_rows() {
    local label=$1 vol=$2 snaps=$3 per=$4 mode=$5 r a=$(($3 / 2 - 1)) last=$(($3 - 1))
    for ((r = 0; r < RUNS; r++)); do
        timed "$label-$mode-info" sv info "$vol"
        timed "$label-$mode-adj" sv diff "$vol@s$a" "$vol@s$((a + 1))" --json
        check_diff $((per * MiB)) "$per"
        timed "$label-$mode-first-last" sv diff "$vol@s0" "$vol@s$last" --json
        check_diff $((last * per * MiB)) $((last * per))
        timed "$label-$mode-live" sv diff "$vol@s0" --json
        check_diff $((snaps * per * MiB)) $((snaps * per))
    done
}
# diff_row LABEL KEY COMMAND SPAN CHANGED EXTENTS: one Markdown row of diff_table
diff_row() {
    printf '| `%s`%s | %s | %s | %s s | %s s | %s s |\n' "$3" "$4" "$5" "$6" \
        "$(med "$1-offline-$2")" "$(cpu "$1-offline-$2")" "$(med "$1-served-$2")"
}
# diff_table LABEL VOL SNAPS PER_MIB: the Markdown table of one volume
diff_table() {
    local label=$1 vol=$2 snaps=$3 per=$4 a=$(($3 / 2 - 1)) last=$(($3 - 1))
    echo "| command | changed (expected = reported) | extents | offline | offline, CPU | through serve |"
    echo "|---|---:|---:|---:|---:|---:|"
    diff_row "$label" info "info $vol" "" — —
    diff_row "$label" adj "diff $vol@s$a $vol@s$((a + 1))" " (adjacent)" "$per MiB" "$per"
    diff_row "$label" first-last "diff $vol@s0 $vol@s$last" " (first → last)" "$((last * per)) MiB" $((last * per))
    diff_row "$label" live "diff $vol@s0" " (first → live)" "$((snaps * per)) MiB" $((snaps * per))
}

echo "# snapvol backup and restore: diff, incremental export, rollback"
echo
echo "\`./scripts/bench-backup.sh\` on $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -r)," \
    "snapvol $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')), median of $RUNS runs (min–max)," \
    "wall time of one \`snapvol\` process; CPU: its user + system time, median. Load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)."

# ================================================================ 1 GiB volumes
export SNAPVOL_STORE=$T/small
log "1 GiB images: base.img and new.img (random)"
# pseudo-random bytes (AES-CTR of zeros, keyed by the name): /dev/urandom is 4 times slower
random_image() { { openssl enc -aes-128-ctr -pass "pass:$1" -nosalt -pbkdf2 </dev/zero 2>/dev/null || true; } | head -c "$2"; }
random_image base 1G >"$T/base.img"
random_image new 1G >"$T/new.img"
for v in d e r; do
    sv create "$v" --size 1G >/dev/null
    sv import "$v" "$T/base.img" >/dev/null
done
log "1 GiB: volumes d (diff), e (export), r (rollback) filled"

# ---------------------------------------------------------------- writes through serve
serve_start
spread d $((1024 * MiB)) 8 4
sv snapshot create e@s0 >/dev/null
c1=() c10=() c50=()
for ((b = 0; b < 1024; b += 2)); do
    if ((b % 100 == 0)); then c1+=("$b"); elif ((b % 10 == 0)); then c10+=("$b"); else c50+=("$b"); fi
done
qwrite e 0xc1 "${c1[@]}"
sv snapshot create e@c1 >/dev/null
qwrite e 0xca "${c10[@]}"
sv snapshot create e@c10 >/dev/null
qwrite e 0xcf "${c50[@]}"
sv snapshot create e@c50 >/dev/null
settle
log "1 GiB: diffs through the server"
for ((r = 0; r < RUNS; r++)); do timed version sv --version; done
diff_rows small d 8 4 served
serve_stop

# ---------------------------------------------------------------- offline: diff
log "1 GiB: diffs offline"
diff_rows small d 8 4 offline
echo
echo "## diff on a 1 GiB volume: offline (process start + volume open + diff) and through a running \`snapvol serve\`"
echo
echo "d: 1 GiB of random data, 8 snapshots s0..s7, 4 MiB written after each (1 MiB writes 32 MiB apart)."
echo "Process start alone (\`snapvol --version\`): $(med version) s."
echo
diff_table small d 8 4

# ---------------------------------------------------------------- offline: export
log "1 GiB: incremental and full exports"
declare -A CHANGED STREAM
for c in c1 c10 c50; do
    sv diff e@s0 "e@$c" --json >"$T/out"
    CHANGED[$c]=$(json "$T/out" 'd["changed_bytes"]')
    for ((r = 0; r < RUNS; r++)); do
        timed "inc-$c" sv export "e@$c" "$T/x.rbd" --from e@s0
        STREAM[$c]=$(stat -c %s "$T/x.rbd")
        [ "$c" != c10 ] || cp "$T/x.rbd" "$T/c10.rbd"
        rm -f "$T/x.rbd"
        timed "full-$c" sv export "e@$c" "$T/x.img"
        rm -f "$T/x.img"
        timed "null-$c" sv export "e@$c" /dev/null
    done
done
if [ "${CHANGED[c1]}" != $((11 * MiB)) ] || [ "${CHANGED[c10]}" != $((103 * MiB)) ] ||
    [ "${CHANGED[c50]}" != $((512 * MiB)) ]; then
    die "export: unexpected diffs from e@s0: ${CHANGED[*]}"
fi

log "1 GiB: import-diff of the c10 stream into copies of a second store"
sv --store "$T/replica" create e --size 1G >/dev/null
sv --store "$T/replica" import e "$T/base.img" >/dev/null
sv --store "$T/replica" snapshot create e@s0 >/dev/null
for ((r = 0; r < RUNS; r++)); do
    cp -a "$T/replica" "$T/replica-run"
    log "1 GiB: import-diff run $((r + 1)) (fresh copy made)"
    timed import-diff sv --store "$T/replica-run" import-diff e "$T/c10.rbd"
    if ((r == RUNS - 1)); then
        cmp <(sv export e@c10 -) <(sv --store "$T/replica-run" export e@c10 -) ||
            die "import-diff: the replica's e@c10 differs from e@c10"
    fi
    rm -rf "$T/replica-run"
done
rm -rf "$T/replica"

echo
echo "## Incremental export against full export (1 GiB volume, offline)"
echo
echo "\`export e@cN FILE --from e@s0\` (incremental) against \`export e@cN FILE\` (full, and to /dev/null: the read" \
    "side alone); MiB/s of the 1024 MiB volume covered. e: 1 GiB of random data, s0, then 1 MiB writes to every" \
    "100th MiB (c1), 10th (c10), 2nd (c50)."
echo
echo "| to-snapshot (from e@s0) | changed | stream | incremental | CPU | volume covered | full export | CPU | volume covered | full to /dev/null | CPU |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for c in c1 c10 c50; do
    printf '| e@%s (%s %%) | %s MiB | %s MiB | %s s | %s s | %s MiB/s | %s s | %s s | %s MiB/s | %s s | %s s |\n' \
        "$c" "${c#c}" "$(mib "${CHANGED[$c]}")" "$(mib "${STREAM[$c]}")" \
        "$(med "inc-$c")" "$(cpu "inc-$c")" "$(rate 1024 "$(medv "inc-$c")")" \
        "$(med "full-$c")" "$(cpu "full-$c")" "$(rate 1024 "$(medv "full-$c")")" "$(med "null-$c")" "$(cpu "null-$c")"
done
echo
printf '`import-diff` of the e@c10 stream (%s MiB, %s MiB of data) into a store that has e@s0: %s s, CPU %s s (%s MiB/s of stream); the imported e@c10 equals the original byte for byte.\n' \
    "$(mib "${STREAM[c10]}")" "$(mib "${CHANGED[c10]}")" "$(med import-diff)" "$(cpu import-diff)" \
    "$(rate "$(mib "${STREAM[c10]}")" "$(medv import-diff)")"

# ---------------------------------------------------------------- offline: rollback
log "1 GiB: rollbacks"
sv snapshot create r@base >/dev/null
declare -A REWROTE
for size in 1M 16M 128M 1G; do
    log "1 GiB: rollbacks of $size"
    n=$(bytes "$size")
    if [ "$n" = $((1024 * MiB)) ]; then chg=$T/new.img; else head -c "$n" "$T/new.img" >"$T/chg.img"; chg=$T/chg.img; fi
    for ((r = 0; r < RUNS; r++)); do
        sv import r "$chg" >/dev/null
        sv diff r@base --json >"$T/out"
        check_diff "$n" 1
        timed "rb-$size" sv snapshot rollback r@base
        REWROTE[$size]=$(sed -n 's/.*: rewrote \([^ ]*\) in .*/\1/p' "$T/out")
        [ "${REWROTE[$size]}" = "$size" ] || die "rollback of $size: $(cat "$T/out")"
    done
    sv export r - | cmp - "$T/base.img" || die "after the rollback of $size, r differs from r@base"
    rm -f "$T/chg.img"
done
sv export r@base - | cmp - "$T/base.img" || die "r@base differs from base.img"
for ((r = 0; r < RUNS; r++)); do timed rb-info sv info r; done
echo
echo "## Rollback against the amount of change (1 GiB volume, offline)"
echo
echo "r: 1 GiB of random data, snapshot base, then SIZE of new data imported at offset 0 (untimed);" \
    "\`snapvol snapshot rollback r@base\` timed. \`info r\` offline (the open floor): $(med rb-info) s, CPU $(cpu rb-info) s."
echo
echo "| changed since r@base | rewritten (reported) | rollback | CPU |"
echo "|---:|---:|---:|---:|"
for size in 1M 16M 128M 1G; do
    printf '| %s | %s | %s s | %s s |\n' "$size" "${REWROTE[$size]}" "$(med "rb-$size")" "$(cpu "rb-$size")"
done
rm -rf "$SNAPVOL_STORE" "$T/base.img" "$T/new.img"

# ================================================================ the big volume
export SNAPVOL_STORE=$T/big
PER=$((BIG_CHANGED_B / BIG_SNAPS / MiB))
log "$BIG_SIZE: $BIG_SNAPS snapshots, $PER MiB written after each (through serve)"
sv create big --size "$BIG_SIZE" >/dev/null
serve_start
t0=$EPOCHREALTIME
spread big "$BIG_SIZE_B" "$BIG_SNAPS" "$PER"
settle
SETUP_S=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')
sv info big --json >"$T/big-info.json"
log "$BIG_SIZE: written and destaged in $SETUP_S s; diffs through the server"
diff_rows big big "$BIG_SNAPS" "$PER" served

log "$BIG_SIZE: rollback of 1 MiB through the server"
sv snapshot create big@rb >/dev/null
for ((r = 0; r < RUNS; r++)); do
    qwrite big 0xcd 0
    settle
    sv diff big@rb --json >"$T/out"
    check_diff "$MiB" 1
    timed big-rb-served sv snapshot rollback big@rb
    grep -q ': rewrote 1M in 1 extent' "$T/out" || die "rollback: $(cat "$T/out")"
    qemu-io -f raw -r -c 'read -P 0xab 0 1M' "$(uri big)" >"$T/qemu-io.out" 2>&1
    ! grep -qi 'fail\|error' "$T/qemu-io.out" || { cat "$T/qemu-io.out" >&2; die "big after rollback"; }
done
serve_stop
du_target=$(du -B1 "$SNAPVOL_STORE/big/target.svt" | cut -f1)
du_source=$(du -B1 "$SNAPVOL_STORE/big/source.raw" | cut -f1)

log "$BIG_SIZE: offline"
diff_rows big big "$BIG_SNAPS" "$PER" offline
random_image one 1M >"$T/one.img"
for ((r = 0; r < RUNS; r++)); do
    sv import big "$T/one.img" >/dev/null
    sv diff big@rb --json >"$T/out"
    check_diff "$MiB" 1
    timed big-rb-offline sv snapshot rollback big@rb
    grep -q ': rewrote 1M in 1 extent' "$T/out" || die "rollback: $(cat "$T/out")"
done

# ---------------------------------------------------------------- tables
echo
echo "## diff on a sparse $BIG_SIZE volume: offline and through a running \`snapvol serve\`"
echo
echo "big: sparse $BIG_SIZE, $BIG_SNAPS snapshots s0..s$((BIG_SNAPS - 1)), $PER MiB written after each" \
    "($(mib $((PER * BIG_SNAPS * MiB))) MiB in all, 1 MiB writes spread over the volume; written and destaged through serve in $SETUP_S s)."
echo
diff_table big big "$BIG_SNAPS" "$PER"
echo
python3 - "$T/big-info.json" "$du_target" "$du_source" "$((PER * BIG_SNAPS * MiB))" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
du_t, du_s, written = (int(x) for x in sys.argv[2:5])
g = lambda b: "%.2f GiB" % (b / 2**30)
print("big after the setup: written %s; `info`: target used %s in %d preserved chunks, metadata %s, "
      "target file %s; `du`: target.svt %s, source.raw %s." % (
          g(written), g(d["target_used_bytes"]), d["preserved_chunks"],
          "%.1f MiB" % (d["metadata_bytes"] / 2**20), g(d["target_file_bytes"]), g(du_t), g(du_s)))
EOF

echo
echo "## Rollback of 1 MiB on the sparse $BIG_SIZE volume"
echo
echo "big as above plus snapshot rb (so $((BIG_SNAPS + 1)) snapshots), then 1 MiB written at offset 0 (untimed):" \
    "through serve with qemu-io, offline with \`import\`."
echo
echo "| | rollback of 1 MiB | CPU of the \`snapvol\` process | \`info big\`, the same way | CPU |"
echo "|---|---:|---:|---:|---:|"
printf '| offline | %s s | %s s | %s s | %s s |\n' "$(med big-rb-offline)" "$(cpu big-rb-offline)" \
    "$(med big-offline-info)" "$(cpu big-offline-info)"
printf '| through serve (no client connected) | %s s | %s s (not the server'"'"'s) | %s s | %s s |\n' \
    "$(med big-rb-served)" "$(cpu big-rb-served)" "$(med big-served-info)" "$(cpu big-served-info)"
echo
echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
log "done in $(awk -v a="$START" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }') s"
