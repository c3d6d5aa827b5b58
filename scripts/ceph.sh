#!/usr/bin/env bash
# A single-node Ceph cluster (one monitor, one OSD on a sparse file, 4 GiB by default, pool `rbd`) for tests and
# benchmarks, kept entirely in one scratch directory: its config, data, logs, sockets and pid
# files. No systemd, no mgr, no authentication; RBD and RADOS clients find it through
# CEPH_CONF=DIR/ceph.conf.
#
#   ceph.sh start DIR   installs what is missing (Debian packages), starts the cluster (or says
#                       it already runs), and prints `export CEPH_CONF=DIR/ceph.conf`
#   ceph.sh stop DIR    stops the daemons by their pid files and waits until they have exited
#   ceph.sh env DIR     prints the export line
#   ceph.sh stop-osd DIR          stops only the OSD (SIGTERM, waits until it has exited): the
#                                 monitor stays, and clients' requests wait for the OSD's return
#   ceph.sh start-osd DIR         starts the OSD again and waits until the monitor sees it up
#   ceph.sh restart-osd DIR [S]   stop-osd, S seconds down (default 20), start-osd
#
# CEPH_MON_PORT (default 3300; v1 takes the next port) puts the monitor of a new cluster on other
# ports, so that a second cluster (in another DIR) can run beside the first; an existing cluster
# keeps the address its ceph.conf names. CEPH_OSD_GIB (default 4) sizes the OSD's file of a new
# cluster: benchmarks that keep a 1 GiB volume with snapshots need 12 or more (a BlueStore that
# runs out of space aborts the OSD).
#
# Each step looks at what exists before doing it, so `start` on a running cluster, or on one
# whose OSD died, finishes the job instead of failing. Everything but the final export line goes
# to stderr, so `eval "$(scripts/ceph.sh start DIR)"` works.
set -euo pipefail

# The daemons, the `ceph` and `rbd` tools, and the client libraries that snapvol loads.
PACKAGES=(ceph-mon ceph-osd ceph-common librbd1 librados2)
MON_PORT=${CEPH_MON_PORT:-3300}
if [[ $MON_PORT == 3300 ]]; then
    MON_ADDR='[v2:127.0.0.1:3300,v1:127.0.0.1:6789]'
else
    MON_ADDR="[v2:127.0.0.1:$MON_PORT,v1:127.0.0.1:$((MON_PORT + 1))]"
fi
MON_ID=a
OSD_GIB=${CEPH_OSD_GIB:-4}
[[ $OSD_GIB =~ ^[1-9][0-9]*$ ]] || { echo "ceph.sh: CEPH_OSD_GIB must be a whole number of GiB" >&2; exit 2; }
OSD_UP_TIMEOUT=${CEPH_OSD_UP_TIMEOUT:-180}
MON_UP_TIMEOUT=${CEPH_MON_UP_TIMEOUT:-60}

say() { printf 'ceph.sh: %s\n' "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

usage() {
    echo "usage: $0 start|stop|env|stop-osd|start-osd DIR, or $0 restart-osd DIR [SECONDS]" >&2
    exit 2
}

(($# == 2)) || [[ $# == 3 && $1 == restart-osd ]] || usage
cmd=$1
mkdir -p "$2"
DIR=$(cd "$2" && pwd)
CONF=$DIR/ceph.conf
export CEPH_CONF=$CONF
# An existing cluster's monitor is where its ceph.conf says.
if [[ -f $CONF ]]; then
    MON_ADDR=$(sed -n 's/^mon host = //p' "$CONF")
fi

install_missing() {
    local pkg missing=()
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return
    say "installing ${missing[*]}"
    # Package lists refreshed within the hour (scripts/test.sh has just done it on a fresh
    # machine) are used as they are: apt-get update once per run.
    if [[ -z $(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -newermt '-1 hour' \
        2>/dev/null | head -1) ]]; then
        apt-get update -qq >&2
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >&2
}

write_conf() {
    [[ -f $CONF ]] && return
    local fsid
    fsid=$(cat /proc/sys/kernel/random/uuid)
    # `$cluster`, `$name` and `$id` are Ceph's metavariables, expanded per daemon or client.
    cat >"$CONF" <<EOF
# Written by snapvol's scripts/ceph.sh: a throw-away single-node cluster in $DIR.
[global]
fsid = $fsid
mon host = $MON_ADDR
public network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
# radosgw with authentication off needs this too.
ms mon client mode = crc
# One OSD: one copy of everything, and placement that does not look for other hosts.
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
mon allow pool delete = true
osd crush chooseleaf type = 0
# The OSD's disk is a sparse $OSD_GIB GiB file in its data directory.
osd objectstore = bluestore
bluestore block create = true
bluestore block size = $((OSD_GIB << 30))
osd memory target = 1073741824
# Everything lives in this directory.
run dir = $DIR/run
pid file = $DIR/run/\$name.pid
admin socket = $DIR/run/\$cluster-\$name.asok
log file = $DIR/log/\$cluster-\$name.log
mon data = $DIR/mon/\$cluster-\$id
osd data = $DIR/osd/\$cluster-\$id

[client]
# Clients (tests, benchmarks, the rbd tool) often run several at once under one name: give
# each process its own admin socket rather than fight over one.
admin socket = $DIR/run/\$cluster-\$name.\$pid.\$cctid.asok
EOF
}

running() { # pid: alive and not a zombie waiting for a parent that does not reap
    kill -0 "$1" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

pid_alive() { # pid file
    [[ -f $1 ]] && running "$(cat "$1")"
}

log_tail() { # log file: its last error lines (Ceph marks them " -1 "), else its last lines
    [[ -f $1 ]] || {
        say "(no log at $1)"
        return
    }
    say "last lines of $1:"
    if grep -q ' -1 ' "$1"; then
        grep ' -1 ' "$1" | tail -n 15 >&2
    else
        tail -n 25 "$1" >&2
    fi
}

wait_for() { # seconds, log file, description, command...
    local timeout=$1 log=$2 what=$3 deadline
    shift 3
    deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log_tail "$log"
            die "$what did not happen within ${timeout} s (logs in $DIR/log)"
        fi
        sleep 0.5
    done
}

mon_answers() { timeout 10 ceph --connect-timeout 5 mon stat; }

osd_up() { timeout 10 ceph --connect-timeout 5 osd stat | grep -q '1 up'; }

start_mon() {
    local data=$DIR/mon/ceph-$MON_ID
    if [[ ! -f $data/done ]]; then
        rm -rf "$data"
        mkdir -p "$data"
        monmaptool --create --clobber --fsid "$(sed -n 's/^fsid = //p' "$CONF")" \
            --addv "$MON_ID" "$MON_ADDR" "$DIR/monmap" >&2
        ceph-mon --mkfs -i "$MON_ID" --monmap "$DIR/monmap" >&2
        touch "$data/done"
    fi
    if ! pid_alive "$DIR/run/mon.$MON_ID.pid"; then
        say "starting mon.$MON_ID"
        ceph-mon -i "$MON_ID" || {
            log_tail "$DIR/log/ceph-mon.$MON_ID.log"
            die "ceph-mon did not start (another cluster on $MON_ADDR? stop it with: $0 stop ITS_DIR)"
        }
    fi
    wait_for "$MON_UP_TIMEOUT" "$DIR/log/ceph-mon.$MON_ID.log" "the monitor answering" mon_answers
}

start_osd() {
    local id uuid
    if [[ -f $DIR/osd/id ]]; then
        id=$(cat "$DIR/osd/id")
    else
        uuid=$(cat /proc/sys/kernel/random/uuid)
        id=$(ceph osd new "$uuid")
        mkdir -p "$DIR/osd/ceph-$id"
        say "creating osd.$id (bluestore on a 4 GiB file)"
        ceph-osd -i "$id" --mkfs --osd-uuid "$uuid" >&2
        echo "$id" >"$DIR/osd/id"
    fi
    if ! pid_alive "$DIR/run/osd.$id.pid"; then
        say "starting osd.$id"
        ceph-osd -i "$id" || {
            log_tail "$DIR/log/ceph-osd.$id.log"
            die "ceph-osd did not start"
        }
    fi
    wait_for "$OSD_UP_TIMEOUT" "$DIR/log/ceph-osd.$id.log" "osd.$id coming up" osd_up
}

create_pool() {
    if ! ceph osd pool ls | grep -qx rbd; then
        say "creating pool rbd"
        ceph osd pool create rbd 8 >&2
        rbd pool init rbd >&2
    fi
}

start() {
    local t0=$SECONDS
    install_missing
    mkdir -p "$DIR/run" "$DIR/log" "$DIR/mon" "$DIR/osd"
    write_conf
    local osd_id osd_pid
    osd_id=$(cat "$DIR/osd/id" 2>/dev/null || echo none)
    osd_pid="$DIR/run/osd.$osd_id.pid"
    if pid_alive "$DIR/run/mon.$MON_ID.pid" && pid_alive "$osd_pid"; then
        say "already running in $DIR"
    fi
    start_mon
    start_osd
    create_pool
    say "cluster up in $DIR ($((SECONDS - t0)) s)"
    echo "export CEPH_CONF=$CONF"
}

stop_daemons() { # pid files...: SIGTERM to each daemon running, then wait until all have exited
    local pidfile pid pids=() deadline
    for pidfile in "$@"; do
        [[ -f $pidfile ]] || continue
        pid=$(cat "$pidfile")
        if running "$pid"; then
            say "stopping $(basename "$pidfile" .pid) (pid $pid)"
            kill -TERM "$pid"
            pids+=("$pid")
        fi
    done
    deadline=$((SECONDS + 30))
    for pid in "${pids[@]}"; do
        while running "$pid"; do
            if ((SECONDS >= deadline)); then
                say "pid $pid did not exit within 30 s of SIGTERM: killing it"
                kill -KILL "$pid" 2>/dev/null || true
            fi
            sleep 0.2
        done
    done
    rm -f "$@"
}

stop() {
    stop_daemons "$DIR"/run/osd.*.pid "$DIR"/run/mon.*.pid
    say "stopped"
}

osd_pid_file() {
    [[ -f $DIR/osd/id ]] || die "no OSD in $DIR (start the cluster first: $0 start $DIR)"
    echo "$DIR/run/osd.$(cat "$DIR/osd/id").pid"
}

stop_osd() {
    local pidfile
    pidfile=$(osd_pid_file)
    pid_alive "$pidfile" || die "the OSD of $DIR is not running"
    stop_daemons "$pidfile"
    say "osd stopped"
}

start_osd_again() {
    local t0=$SECONDS
    [[ -f $CONF ]] || die "no cluster in $DIR (start it first: $0 start $DIR)"
    start_osd
    say "osd up in $((SECONDS - t0)) s"
}

case $cmd in
start) start ;;
stop) stop ;;
env) echo "export CEPH_CONF=$CONF" ;;
stop-osd) stop_osd ;;
start-osd) start_osd_again ;;
restart-osd)
    stop_osd
    say "osd down for ${3:-20} s"
    sleep "${3:-20}"
    start_osd_again
    ;;
*) usage ;;
esac
