#!/usr/bin/python3
"""Races a dirty bitmap's BLOCK_STATUS against writes and snapshot churn (python3-libnbd).

After `snapvol snapshot create VOL@base`:
- a writer (one connection) writes random pieces of random chunks of the live export, from
  a random half of its chunks;
- a reader (another connection, base:allocation + qemu:dirty-bitmap:base) walks the whole
  export again and again: every answer must be well-formed (dirty_bitmap.walk's checks), must
  mark every chunk whose write had completed before the walk began, and nothing the writer
  had not started by the end of the walk;
- a churner takes snapshot tK with the CLI, connects to its bitmap on VOL, and has a querier
  thread walk it while the CLI deletes tK (and every third round, base's export `VOL@tK` is
  looked at too): walks that finished before the delete began must succeed, walks that began
  after it returned must fail with EIO, and nothing else may fail.
At the end the writer stops, and a new connection's bitmap of base must be exactly the
chunks written.

Usage: bitmap_race.py SNAPVOL STORE URI VOLUME CHUNK SECONDS SEED
prints {"writes": N, "walks": N, "rounds": N, "deleted_errors": N, "dirty_chunks": N,
"problems": [...]}
"""

import json
import os
import random
import subprocess
import sys
import threading
import time

import nbd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dirty_bitmap  # noqa: E402

snapvol, store, uri, volume = sys.argv[1:5]
chunk, seconds, seed = int(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
BLOCK = 4096

problems = []
stop = threading.Event()
started = set()  # chunks a write has been sent to
done = set()  # chunks a write has completed to
counts = {"writes": 0, "walks": 0, "rounds": 0, "deleted_errors": 0}


def snapvol_cli(*args):
    r = subprocess.run([snapvol, "--store", store, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"snapvol {' '.join(args)} failed: {r.stderr.strip()}")


def dirty_chunks(dirty):
    out = set()
    for off, length, flags in dirty:
        if flags == 1:
            if off % chunk or length % chunk:
                problems.append(f"dirty extent {off}+{length} is not whole chunks")
            out.update(range(off // chunk, (off + length) // chunk))
    return out


def guarded(name, fn):
    def run():
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - reported to the test
            problems.append(f"{name}: {type(e).__name__}: {e}")
            stop.set()
    return threading.Thread(target=run, name=name)


def writer():
    rng = random.Random(seed)
    h = nbd.NBD()
    h.connect_uri(f"{uri}/{volume}")
    # Half the chunks are never written, so the final bitmap must tell them apart.
    chunks = h.get_size() // chunk
    targets = rng.sample(range(chunks), chunks // 2)
    while not stop.is_set():
        c = rng.choice(targets)
        first = rng.randrange(chunk // BLOCK)
        n = rng.randrange(1, chunk // BLOCK - first + 1)
        started.add(c)
        h.pwrite(rng.randbytes(n * BLOCK), c * chunk + first * BLOCK)
        done.add(c)
        counts["writes"] += 1
        if counts["writes"] % 50 == 0:
            h.flush()
        # Slow enough that the dirty set is still growing when the race ends.
        time.sleep(0.002)
    h.flush()
    h.shutdown()


def reader():
    h = dirty_bitmap.connect(f"{uri}/{volume}", "base")
    while not stop.is_set():
        before = set(done)
        _, maps, _ = dirty_bitmap.walk(h, "base")
        after = set(started)
        dirty = dirty_chunks(maps[dirty_bitmap.DIRTY + "base"])
        if not before <= dirty:
            problems.append(f"written chunks reported clean: {sorted(before - dirty)[:10]}")
        if not dirty <= after:
            problems.append(f"unwritten chunks reported dirty: {sorted(dirty - after)[:10]}")
        counts["walks"] += 1
    h.shutdown()


def churner():
    k = 0
    while not stop.is_set():
        k += 1
        name = f"t{k}"
        snapvol_cli("snapshot", "create", f"{volume}@{name}")
        export = volume if k % 3 else f"{volume}@{name}"
        bitmap = name if k % 3 else "base"
        h = dirty_bitmap.connect(f"{uri}/{export}", bitmap)
        walks = []  # (start, end, error or None)
        quit_querier = threading.Event()

        def querier():
            while not quit_querier.is_set():
                t0 = time.monotonic()
                try:
                    dirty_bitmap.walk(h, bitmap)
                    err = None
                except nbd.Error as e:
                    err = e
                walks.append((t0, time.monotonic(), err))

        q = threading.Thread(target=querier)
        q.start()
        time.sleep(0.1)
        del_start = time.monotonic()
        snapvol_cli("snapshot", "delete", f"{volume}@{name}")
        del_end = time.monotonic()
        time.sleep(0.1)
        quit_querier.set()
        q.join()
        h.shutdown()
        after = 0
        for t0, t1, err in walks:
            if err is None and t0 > del_end:
                problems.append(f"{export} {bitmap}: a walk after the delete succeeded")
            if err is not None:
                if t1 < del_start:
                    problems.append(f"{export} {bitmap}: failed before the delete: {err}")
                elif err.errno != "EIO":
                    problems.append(f"{export} {bitmap}: {err} ({err.errno}), not EIO")
                else:
                    counts["deleted_errors"] += 1
            if t0 > del_end:
                after += 1
        if after == 0:
            problems.append(f"{export} {bitmap}: no walk after the delete")
        counts["rounds"] += 1


snapvol_cli("snapshot", "create", f"{volume}@base")
threads = [guarded("writer", writer), guarded("reader", reader), guarded("churner", churner)]
for t in threads:
    t.start()
time.sleep(seconds)
stop.set()
for t in threads:
    t.join()

h = dirty_bitmap.connect(f"{uri}/{volume}", "base")
_, maps, _ = dirty_bitmap.walk(h, "base")
h.shutdown()
final = dirty_chunks(maps[dirty_bitmap.DIRTY + "base"])
if final != done or done != started:
    problems.append(
        f"final bitmap: {len(final)} chunks, written {len(done)}: missing "
        f"{sorted(done - final)[:10]}, extra {sorted(final - done)[:10]}"
    )
counts["dirty_chunks"] = len(final)
counts["problems"] = problems
print(json.dumps(counts))
