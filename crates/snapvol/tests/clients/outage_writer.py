#!/usr/bin/python3
"""Writes and reads through an outage of the storage under the server (python3-libnbd).

Usage: outage_writer.py LIVE_URI SNAP_URI SLOTS BLOCK FILL

Two writers, each on its own connection to LIVE_URI, about 20 requests a second each, one at
a time: block i (BLOCK bytes, each 16-byte group holding i twice) goes to slot i (offset
i * BLOCK). The "flushing" writer takes slots [0, SLOTS) and sends a FLUSH after every 4th
write; the "caching" writer takes slots [SLOTS, 2 * SLOTS) and never flushes, so that its
writes fill the server's write-back cache while the storage is away. A reader (its own
connection to SNAP_URI, a snapshot taken when [0, 2 * SLOTS * BLOCK) held the byte FILL
everywhere) reads a slot at random every 50 ms and checks it. All run until a line arrives on
stdin.

One JSON line per request on stdout, as it completes:
  {"ev": "write"|"flush"|"read", "who": ..., "i": ..., "t0": start, "t1": end, "ok": true}
  ... "ok": false, "errno": "EIO", "error": "..."  (a request that failed: the errno name)
  ... "bad": true                                   (a snapshot read that did not hold FILL)
A successful flush makes every successful write of its writer before it
acknowledged-and-flushed.

Then, on a new connection: a FLUSH, and every slot read back. The final line:
  {"ev": "verify", "written": N, "flushed": N, "failed": [slots], "bad": [slots],
   "lost": [slots], "torn": [slots], "unwritten_changed": [slots]}
"bad": a slot whose write succeeded and was flushed, and does not hold it; "lost": the same
for a write no successful flush followed; "torn": a slot whose write failed and holds neither
FILL nor the write; "unwritten_changed": a slot never written that does not hold FILL. If the
verification itself fails: {"ev": "verify", "error": "...", ...the counts}.
"""

import json
import random
import sys
import threading
import time

import nbd

live_uri, snap_uri = sys.argv[1], sys.argv[2]
slots, block, fill = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5], 0)
old = bytes([fill]) * block

stop = threading.Event()
out_lock = threading.Lock()


def emit(**ev):
    with out_lock:
        print(json.dumps(ev), flush=True)


def content(i):
    return (i.to_bytes(8, "little") * 2) * (block // 16)


def request(who, kind, i, fn):
    """Runs fn; returns (its result, True) or (None, False) after reporting the request."""
    t0 = time.time()
    try:
        r = fn()
    except nbd.Error as e:
        emit(ev=kind, who=who, i=i, t0=t0, t1=time.time(), ok=False, errno=e.errno,
             error=e.string)
        return None, False
    emit(ev=kind, who=who, i=i, t0=t0, t1=time.time(), ok=True,
         bad=(kind == "read" and r != old))
    return r, True


acked = set()  # the slots whose write succeeded
failed = set()  # the slots whose write failed
flushed = set()  # the acknowledged writes a later flush made durable


def writer(who, first, flush_every):
    h = nbd.NBD()
    h.connect_uri(live_uri)
    pending = []
    for i in range(first, first + slots):
        if stop.is_set():
            break
        buf = content(i)
        _, ok = request(who, "write", i, lambda: h.pwrite(buf, i * block))
        (acked if ok else failed).add(i)
        if ok:
            pending.append(i)
        if flush_every and (i - first) % flush_every == flush_every - 1:
            _, ok = request(who, "flush", i, h.flush)
            if ok:
                flushed.update(pending)
                pending = []
        time.sleep(0.05)
    h.shutdown()


def reader():
    h = nbd.NBD()
    h.connect_uri(snap_uri)
    rng = random.Random(7)
    n = 0
    while not stop.is_set():
        slot = rng.randrange(2 * slots)
        request("reader", "read", slot, lambda: h.pread(block, slot * block))
        n += 1
        time.sleep(0.05)
    h.shutdown()


threads = [
    threading.Thread(target=writer, args=("flushing", 0, 4)),
    threading.Thread(target=writer, args=("caching", slots, 0)),
    threading.Thread(target=reader),
]
for t in threads:
    t.start()
sys.stdin.readline()
stop.set()
for t in threads:
    t.join()

summary = dict(ev="verify", written=len(acked), flushed=len(flushed), failed=sorted(failed))
bad, lost, torn, unwritten_changed = [], [], [], []
try:
    h = nbd.NBD()
    h.connect_uri(live_uri)
    h.flush()
    for slot in range(2 * slots):
        got = h.pread(block, slot * block)
        if slot in acked:
            if got != content(slot):
                (bad if slot in flushed else lost).append(slot)
        elif slot in failed:
            if got not in (content(slot), old):
                torn.append(slot)
        elif got != old:
            unwritten_changed.append(slot)
    h.shutdown()
except nbd.Error as e:
    summary["error"] = e.string
emit(**summary, bad=bad, lost=lost, torn=torn, unwritten_changed=unwritten_changed)
