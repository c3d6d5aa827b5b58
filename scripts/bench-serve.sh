# shellcheck shell=bash
# Sourced by the NBD benchmarks (bench-tls.sh, bench-metrics.sh): the snapvol binary, a scratch
# store with one 1 GiB volume `v`, and a `snapvol serve` started and stopped per run.
#
# The sourcing script sets NAME (for messages), DIR (scratch; deleted first), PORT and TOOLS
# (commands it needs), and may set `on_stop` (a function run before each server stops).
# Afterwards: $bin, $pid (the running server, or empty), start_server ARGS..., stop_server,
# cpu_ticks (the server's user + system time so far, in clock ticks).

for tool in "${TOOLS[@]}"; do
    command -v "$tool" >/dev/null || { echo "$NAME: $tool is not installed" >&2; exit 1; }
done
cargo build --release -p snapvol
bin=${CARGO_TARGET_DIR:-target}/release/snapvol

rm -rf "$DIR"
mkdir -p "$DIR"
export SNAPVOL_STORE=$DIR/store
"$bin" create v --size 1G
: >"$DIR/serve.log"

pid=''
on_stop() { :; }
# The banners logged so far: the log keeps every server's, and a new one adds one.
banners() { grep -c "://127.0.0.1:$PORT/" "$DIR/serve.log" || true; }
start_server() {
    local before
    before=$(banners)
    "$bin" serve --listen "127.0.0.1:$PORT" "$@" 2>>"$DIR/serve.log" &
    pid=$!
    for _ in $(seq 200); do
        (($(banners) > before)) && return
        sleep 0.05
    done
    echo "$NAME: the server did not start; see $DIR/serve.log" >&2
    exit 1
}
stop_server() {
    on_stop
    kill -TERM "$pid"
    wait "$pid"
    pid=''
}
cleanup_server() { [[ -z $pid ]] || kill "$pid" 2>/dev/null || true; }
trap cleanup_server EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
