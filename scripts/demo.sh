#!/usr/bin/env bash
# snapvol in two minutes: a 1 GiB volume, an image, three snapshots that share one preserved
# copy, an overwrite, and a snapshot read back byte for byte. Everything happens in a temporary
# directory that is removed at the end (set KEEP=1 to keep it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
# run_into FILE CMD...: runs CMD with its output in FILE, showing the redirection.
run_into() { local file="$1"; shift; printf '$ %s > %s\n' "$*" "$file"; "$@" > "$file"; }

say "Building snapvol (release)"
run cargo build --release --quiet -p snapvol
SNAPVOL="$PWD/target/release/snapvol"
snapvol() { "$SNAPVOL" "$@"; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/snapvol-demo.XXXXXX")"
cleanup() {
    if [[ "${KEEP:-0}" == 1 ]]; then
        echo "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
export SNAPVOL_STORE="$WORK/store"
cd "$WORK"
echo "working in $WORK (store: $SNAPVOL_STORE)"

say "Creating a 1 GiB volume with 64 KiB chunks"
run snapvol create demo --size 1G --chunk-size 64K

say "Generating monday.img: 256 MiB of random data, then zeros up to 1 GiB"
run_into monday.img head -c 256M /dev/urandom
run truncate -s 1G monday.img

say "Importing it into the live volume"
run snapvol import demo monday.img

say "Taking three snapshots back to back (each is instant)"
run snapvol snapshot create demo@monday
run snapvol snapshot create demo@monday-noon
run snapvol snapshot create demo@monday-evening

say "Overwriting the first 256 MiB with new data (tuesday.img)"
run_into tuesday.img head -c 256M /dev/urandom
run snapvol import demo tuesday.img

say "The 256 MiB of originals were preserved ONCE, shared by all three snapshots"
run snapvol info demo

say "Reading demo@monday back as a full image and comparing it with monday.img"
run snapvol export demo@monday monday-out.img
run cmp monday.img monday-out.img
echo "identical: demo@monday holds exactly what was imported before it"

say "The live volume holds tuesday's data"
run snapvol export demo live.img
run cmp -n 268435456 tuesday.img live.img
echo "identical over the first 256 MiB"

say "Deleting two snapshots: the copy stays while demo@monday-evening needs it"
run snapvol snapshot delete demo@monday
run snapvol snapshot delete demo@monday-noon
run snapvol snapshot list demo

say "Done"
