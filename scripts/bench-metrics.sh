#!/usr/bin/env bash
# What `serve --metrics` costs (issue 14): fio's nbd engine writing to `snapvol serve` on a 1 GiB
# volume, with metrics off and on in turn (on: scraped once a second meanwhile, 15 times more
# often than Prometheus's default): sequential 1 MiB and random 4 KiB writes (W1), queue depth
# 16. Each figure is the median of RUNS runs (min–max beside it), with the server's CPU time.
#
#   ./scripts/bench-metrics.sh                      # RUNS=3, RUNTIME=15: about 3 minutes
#   RUNS=1 RUNTIME=5 ./scripts/bench-metrics.sh     # a quick look
#
# Knobs: RUNS, RUNTIME (seconds of the random workload), DIR (scratch, default
# /var/tmp/bench-metrics; its store is deleted first), PORT (default 10970; metrics on PORT+1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS=${RUNS:-3}
RUNTIME=${RUNTIME:-15}
DIR=${DIR:-/var/tmp/bench-metrics}
PORT=${PORT:-10970}
MPORT=$((PORT + 1))

NAME=bench-metrics.sh
TOOLS=(fio curl python3)
# shellcheck source=scripts/bench-serve.sh
source scripts/bench-serve.sh
results=$DIR/results.jsonl
: >"$results"
: >"$DIR/scrapes"
: >"$DIR/scrape-failures"
uri=nbd://127.0.0.1:$PORT/v

scraper=''
# The scraper stops before its server.
on_stop() {
    [[ -z $scraper ]] && return
    kill "$scraper"
    wait "$scraper" || true
    scraper=''
}
trap 'on_stop; cleanup_server' EXIT

# run MODE NAME FIO-ARGS...: one fio run, recorded as a JSON line.
run() {
    local mode=$1 name=$2 before after
    shift 2
    before=$(cpu_ticks)
    fio --name="$name" --ioengine=nbd --uri="$uri" --output-format=json "$@" >"$DIR/fio.json"
    after=$(cpu_ticks)
    python3 - "$mode" "$name" "$((after - before))" "$(getconf CLK_TCK)" "$DIR/fio.json" \
        >>"$results" <<'PY'
import json, sys
mode, name, ticks, hz, path = sys.argv[1:]
text = open(path).read()
w = json.loads(text[text.index("{"):])["jobs"][0]["write"]
print(json.dumps({"mode": mode, "workload": name, "mib_s": w["bw_bytes"] / 2**20,
                  "iops": w["iops"], "p99_ms": w["clat_ns"]["percentile"]["99.000000"] / 1e6,
                  "server_cpu_s": int(ticks) / int(hz)}))
PY
}

start_server
run fill fill --rw=write --bs=1M --iodepth=16 --size=1G --end_fsync=1
stop_server
for r in $(seq "$RUNS"); do
    for mode in off on; do
        echo "bench-metrics.sh: run $r of $RUNS, metrics $mode ($(cut -d' ' -f1-3 /proc/loadavg))" >&2
        if [[ $mode == on ]]; then
            start_server --metrics "127.0.0.1:$MPORT"
            curl -sf "http://127.0.0.1:$MPORT/metrics" >/dev/null
            # Every scrape must succeed: a failed one is counted in scrape-failures.
            (while true; do
                curl -sf "http://127.0.0.1:$MPORT/metrics" >/dev/null || echo x >>"$DIR/scrape-failures"
                echo x >>"$DIR/scrapes"
                sleep 1
            done) &
            scraper=$!
        else
            start_server
        fi
        run "$mode" seq-write-1M --rw=write --bs=1M --iodepth=16 --size=1G --end_fsync=1
        run "$mode" rand-write-4K --rw=randwrite --bs=4k --iodepth=16 --size=1G \
            --time_based --runtime="$RUNTIME"
        stop_server
    done
done
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def vals(mode, work, key):
    return [r[key] for r in rows if r["mode"] == mode and r["workload"] == work]
def fmt(v, unit):
    return f"{statistics.median(v):,.0f}{unit} ({min(v):,.0f}–{max(v):,.0f})"
print("| workload | metrics off | metrics on, scraped every 1 s | on / off | p99, off / on | server CPU, off / on |")
print("|---|---:|---:|---:|---:|---:|")
for work in ["seq-write-1M", "rand-write-4K"]:
    key, unit = ("iops", " IOPS") if work.startswith("rand") else ("mib_s", " MiB/s")
    off, on = vals("off", work, key), vals("on", work, key)
    p99 = [statistics.median(vals(m, work, "p99_ms")) for m in ("off", "on")]
    cpu = [statistics.median(vals(m, work, "server_cpu_s")) for m in ("off", "on")]
    print(f"| {work} | {fmt(off, unit)} | {fmt(on, unit)} | "
          f"{statistics.median(on) / statistics.median(off):.2f} | "
          f"{p99[0]:.2f} / {p99[1]:.2f} ms | {cpu[0]:.1f} / {cpu[1]:.1f} s |")
PY
echo "scrapes: $(wc -l <"$DIR/scrapes"), failed: $(wc -l <"$DIR/scrape-failures")"
