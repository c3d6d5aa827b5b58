#!/usr/bin/python3
"""Races NBD writers against snapshots taken and deleted through the CLI (python3-libnbd).

Eight connections write random 4 KiB blocks into the first 512 KiB (eight 64 KiB chunks) of
the live export without pause, and every fourth request 128 KiB at a 64 KiB boundary instead:
payloads that large come from buffers the server reuses once its cache has let go of them. Meanwhile snapshots are taken with `snapvol snapshot create`;
each is read over its own export right after the command returns and its digest recorded.
Every third snapshot, an older one is deleted with `snapvol snapshot delete` while two
readers keep reading it: each of their reads must return the snapshot's data or an error,
never other data.

Usage: snapshot_race.py SNAPVOL STORE URI VOLUME SNAPSHOTS SEED OUT.json
Writes {"snapshots": {name: sha256 of its first 512 KiB}, "deleted": [...],
"misreads": [...], "reads_during_delete": N, "writes": N} to OUT.json.

       snapshot_race.py --digests URI VOLUME NAME...
prints {name: sha256 of its first 512 KiB} of each snapshot, read over NBD.
"""

import hashlib
import json
import random
import subprocess
import sys
import threading

import nbd

HOT = 512 * 1024
BLOCK = 4096
LARGE = 128 * 1024
WRITERS = 8

def connect(export):
    h = nbd.NBD()
    h.connect_uri(f"{uri}/{export}")
    return h


if sys.argv[1] == "--digests":
    uri, volume = sys.argv[2:4]
    found = {}
    for name in sys.argv[4:]:
        h = connect(f"{volume}@{name}")
        found[name] = hashlib.sha256(h.pread(HOT, 0)).hexdigest()
        h.shutdown()
    print(json.dumps(found))
    sys.exit(0)

snapvol, store, uri, volume, count, seed, out = sys.argv[1:8]
count, seed = int(count), int(seed)


def snapvol_cli(*args):
    r = subprocess.run([snapvol, "--store", store, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"snapvol {' '.join(args)} failed: {r.stderr.strip()}")


def digest(data):
    return hashlib.sha256(data).hexdigest()


stop = threading.Event()
writes = [0] * WRITERS
errors = []


def writer(k):
    rng = random.Random(seed * 1000 + k)
    h = connect(volume)
    try:
        while not stop.is_set():
            if writes[k] % 4 == 3:
                off = rng.randrange((HOT - LARGE) // (64 * 1024) + 1) * 64 * 1024
                h.pwrite(rng.randbytes(LARGE), off)
            else:
                off = rng.randrange(HOT // BLOCK) * BLOCK
                h.pwrite(rng.randbytes(BLOCK), off)
            writes[k] += 1
            if writes[k] % 64 == 0:
                h.flush()
    except Exception as e:  # noqa: BLE001 - reported to the test
        errors.append(f"writer {k}: {e}")
    finally:
        h.shutdown()


threads = [threading.Thread(target=writer, args=(k,)) for k in range(WRITERS)]
for t in threads:
    t.start()

snapshots = {}
deleted = []
misreads = []
reads_during_delete = [0]
rng = random.Random(seed)
try:
    for i in range(count):
        name = f"s{i}"
        snapvol_cli("snapshot", "create", f"{volume}@{name}")
        h = connect(f"{volume}@{name}")
        snapshots[name] = digest(h.pread(HOT, 0))
        h.shutdown()
        if i % 3 == 2:
            victim = rng.choice(sorted(snapshots))
            want = snapshots.pop(victim)
            started = threading.Event()
            gone = threading.Event()

            def reader(victim=victim, want=want, started=started, gone=gone):
                h = connect(f"{volume}@{victim}")
                try:
                    while not gone.is_set():
                        try:
                            got = digest(h.pread(HOT, 0))
                        except nbd.Error:
                            return  # the snapshot is gone: an error, as promised
                        if got != want:
                            misreads.append(f"{victim} read other data with success")
                        reads_during_delete[0] += 1
                        started.set()
                finally:
                    started.set()
                    h.shutdown()

            readers = [threading.Thread(target=reader) for _ in range(2)]
            for t in readers:
                t.start()
            started.wait()
            snapvol_cli("snapshot", "delete", f"{volume}@{victim}")
            gone.set()
            for t in readers:
                t.join()
            deleted.append(victim)
finally:
    stop.set()
    for t in threads:
        t.join()

if errors:
    raise SystemExit("; ".join(errors))
with open(out, "w") as f:
    json.dump(
        {
            "snapshots": snapshots,
            "deleted": deleted,
            "misreads": misreads,
            "reads_during_delete": reads_during_delete[0],
            "writes": sum(writes),
        },
        f,
    )
