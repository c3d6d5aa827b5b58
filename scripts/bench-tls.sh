#!/usr/bin/env bash
# What TLS costs over NBD (issue 14): fio's nbd engine against `snapvol serve` on a 1 GiB
# volume, in plain text (nbd://) and with TLS and client certificates (nbds://) in turn:
# sequential 1 MiB and random 4 KiB, writes and reads, queue depth 16, and nbdcopy of the whole
# volume. Each figure is the median of RUNS runs (min–max beside it); the server's CPU time per
# run (user + system, from /proc) too, since on this 2-core machine encryption competes with
# everything else for the same cores.
#
# fio's nbd engine takes no tls-certificates=DIR in its URI (libnbd refuses local files unless
# the program allows them); libnbd then reads the client's certificates from $HOME/.pki/libnbd,
# which it only does when not run as root: as root, fio runs as nobody (setpriv), in both modes.
#
#   ./scripts/bench-tls.sh                      # RUNS=3, RUNTIME=15: about 5 minutes
#   RUNS=1 RUNTIME=5 ./scripts/bench-tls.sh     # a quick look
#
# Knobs: RUNS, RUNTIME (seconds of each random workload), DIR (scratch, default
# /var/tmp/bench-tls; its store is deleted first), PORT (default 10960).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS=${RUNS:-3}
RUNTIME=${RUNTIME:-15}
DIR=${DIR:-/var/tmp/bench-tls}
PORT=${PORT:-10960}

NAME=bench-tls.sh
TOOLS=(fio nbdcopy openssl setpriv python3)
# shellcheck source=scripts/bench-serve.sh
source scripts/bench-serve.sh
scripts/tls-certs.sh ca "$DIR/pki/ca" >/dev/null
scripts/tls-certs.sh server "$DIR/pki/server" "$DIR/pki/ca" IP:127.0.0.1 >/dev/null
scripts/tls-certs.sh client "$DIR/pki/client" "$DIR/pki/ca" >/dev/null
# A home everyone can read, for fio run as nobody (benchmark keys only).
home=$DIR/home
mkdir -p "$home/.pki"
cp -r "$DIR/pki/client" "$home/.pki/libnbd"
chmod -R a+rX "$home"
chmod a+r "$home/.pki/libnbd/client-key.pem"
chmod a+x "$DIR"

as_client=()
[[ $(id -u) == 0 ]] && as_client=(setpriv --reuid=65534 --regid=65534 --clear-groups)
results=$DIR/results.jsonl
: >"$results"

# run MODE NAME FIO-ARGS...: one fio run, recorded as a JSON line.
run() {
    local mode=$1 name=$2 before after
    shift 2
    before=$(cpu_ticks)
    (cd "$home" && HOME=$home "${as_client[@]}" fio --name="$name" --ioengine=nbd \
        --uri="$uri" --output-format=json "$@") >"$DIR/fio.json"
    after=$(cpu_ticks)
    python3 - "$mode" "$name" "$((after - before))" "$(getconf CLK_TCK)" "$DIR/fio.json" \
        >>"$results" <<'EOF'
import json, sys
mode, name, ticks, hz, path = sys.argv[1:]
text = open(path).read()
job = json.loads(text[text.index("{"):])["jobs"][0]
side = job["write"] if job["write"]["io_bytes"] else job["read"]
print(json.dumps({
    "mode": mode, "workload": name,
    "mib_s": side["bw_bytes"] / 2**20, "iops": side["iops"],
    "p99_ms": side["clat_ns"]["percentile"]["99.000000"] / 1e6,
    "server_cpu_s": int(ticks) / int(hz),
}))
EOF
}

# Plain and TLS take turns, a fresh server each run, so that whatever else the machine does
# falls on both alike.
start_server
uri=nbd://127.0.0.1:$PORT/v
# Filled once, so that every run reads and overwrites allocated data.
run fill fill --rw=write --bs=1M --iodepth=16 --size=1G --end_fsync=1
stop_server
for r in $(seq "$RUNS"); do
    for mode in plain tls; do
        echo "bench-tls.sh: run $r of $RUNS, $mode ($(cut -d' ' -f1-3 /proc/loadavg))" >&2
        if [[ $mode == tls ]]; then
            start_server --tls-cert "$DIR/pki/server/server-cert.pem" \
                --tls-key "$DIR/pki/server/server-key.pem" --tls-ca "$DIR/pki/ca/ca-cert.pem"
            uri=nbds://127.0.0.1:$PORT/v
            copy_uri="nbds://127.0.0.1:$PORT/v?tls-certificates=$DIR/pki/client"
        else
            start_server
            uri=nbd://127.0.0.1:$PORT/v
            copy_uri=$uri
        fi
        run "$mode" seq-write-1M --rw=write --bs=1M --iodepth=16 --size=1G --end_fsync=1
        run "$mode" seq-read-1M --rw=read --bs=1M --iodepth=16 --size=1G
        run "$mode" rand-write-4K --rw=randwrite --bs=4k --iodepth=16 --size=1G \
            --time_based --runtime="$RUNTIME"
        run "$mode" rand-read-4K --rw=randread --bs=4k --iodepth=16 --size=1G \
            --time_based --runtime="$RUNTIME"
        before=$(cpu_ticks)
        t0=$(date +%s.%N)
        nbdcopy "$copy_uri" null:
        t1=$(date +%s.%N)
        after=$(cpu_ticks)
        python3 -c 'import json,sys; m,t0,t1,ticks,hz=sys.argv[1:]; print(json.dumps({"mode":m,"workload":"nbdcopy-1G","mib_s":1024/(float(t1)-float(t0)),"iops":None,"p99_ms":None,"server_cpu_s":int(ticks)/int(hz)}))' \
            "$mode" "$t0" "$t1" "$((after - before))" "$(getconf CLK_TCK)" >>"$results"
        stop_server
    done
done
python3 - "$results" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(mode, work, key):
    v = [r[key] for r in rows if r["mode"] == mode and r["workload"] == work and r[key] is not None]
    return statistics.median(v) if v else None
def values(mode, work, key):
    return [r[key] for r in rows if r["mode"] == mode and r["workload"] == work]
lo = lambda m, w, k: min(values(m, w, k))
hi = lambda m, w, k: max(values(m, w, k))
print("| workload | plain | TLS | TLS / plain | p99, plain / TLS | server CPU, plain / TLS |")
print("|---|---:|---:|---:|---:|---:|")
for work in ["seq-write-1M", "seq-read-1M", "nbdcopy-1G", "rand-write-4K", "rand-read-4K"]:
    key = "iops" if work.startswith("rand") else "mib_s"
    unit = " IOPS" if key == "iops" else " MiB/s"
    p, t = med("plain", work, key), med("tls", work, key)
    p99 = "" if work.startswith("nbdcopy") else (
        f"{med('plain', work, 'p99_ms'):.2f} / {med('tls', work, 'p99_ms'):.2f} ms")
    cpu = f"{med('plain', work, 'server_cpu_s'):.1f} / {med('tls', work, 'server_cpu_s'):.1f} s"
    spread = lambda m: "–".join(f"{x:,.0f}" for x in (lo(m, work, key), hi(m, work, key)))
    print(f"| {work} | {p:,.0f}{unit} ({spread('plain')}) | {t:,.0f}{unit} ({spread('tls')})"
          f" | {t / p:.2f} | {p99} | {cpu} |")
EOF
echo "bench-tls.sh: every run is in $results" >&2
