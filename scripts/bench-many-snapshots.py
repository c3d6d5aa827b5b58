#!/usr/bin/python3
"""Snapshot create, delete and list with 10 and with N (10,000) snapshots, through `serve`.

    ./scripts/bench-many-snapshots.py [N]        # about 100 s for N = 10,000 on 2 cores

A sparse 8 GiB volume in a fresh store under /var/tmp is served on 127.0.0.1:10999 and driven
with python3-libnbd (Debian's /usr/bin/python3 with python3-libnbd). Snapshots s1..sN are taken
through the control socket (`snapvol snapshot create`, a process each, as a user would), with
4 KiB written to a chunk of its own between each two, so that every snapshot holds a preserved
copy that only it reads. At 10 and at N snapshots (after a flush and 2 s for destaging) it
measures, medians of 10: `snapshot create` of a throwaway snapshot, `snapshot delete` of it
after a 4 KiB overwrite (so the deletion frees a copy), `snapshot list --json` (medians of 5),
and the server's resident memory. Each figure includes the command's process start (~3 ms).
One JSON line per point on stdout; progress on stderr. SNAPVOL_BIN runs that binary as it is
(bench-peers.sh passes the one it built or was given); otherwise target/release/snapvol is built
first.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import nbd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAPVOL = os.environ.get("SNAPVOL_BIN") or os.path.join(ROOT, "target", "release", "snapvol")
PORT = int(os.environ.get("PORT", "10999"))
CHUNK = 64 << 10
CHUNKS = (8 << 30) // CHUNK


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    if not os.environ.get("SNAPVOL_BIN"):
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "snapvol"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="bench-many-snapshots.", dir="/var/tmp")
    store = os.path.join(tmp, "store")
    env = dict(os.environ, SNAPVOL_RUN_DIR=tmp)

    def sv(*args):
        subprocess.run([SNAPVOL, "--store", store, *args], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    sv("create", "v", "--size", "8G")
    server = subprocess.Popen([SNAPVOL, "--store", store, "serve", "--listen", f"127.0.0.1:{PORT}"],
                              env=env, stderr=open(os.path.join(tmp, "serve.log"), "w"))
    try:
        h = nbd.NBD()
        for _ in range(100):
            try:
                h.connect_uri(f"nbd://127.0.0.1:{PORT}/v")
                break
            except nbd.Error:
                time.sleep(0.1)
        for i in range(n + 20):  # the data the snapshots will preserve
            h.pwrite(bytes([i % 251 + 1]) * 4096, (i % CHUNKS) * CHUNK)
        h.flush()

        def measure(at):
            h.flush()
            time.sleep(2)
            create, delete = [], []
            for k in range(10):
                t = time.perf_counter()
                sv("snapshot", "create", f"v@tmp{k}")
                create.append(time.perf_counter() - t)
                h.pwrite(b"\xee" * 4096, (CHUNKS - 1 - k) * CHUNK)
                h.flush()
                t = time.perf_counter()
                sv("snapshot", "delete", f"v@tmp{k}")
                delete.append(time.perf_counter() - t)
            listing = []
            for _ in range(5):
                t = time.perf_counter()
                sv("snapshot", "list", "v", "--json")
                listing.append(time.perf_counter() - t)
            with open(f"/proc/{server.pid}/status") as f:
                rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) // 1024
            ms = lambda xs: round(statistics.median(xs) * 1000, 1)
            print(json.dumps({"snapshots": at, "create_ms": ms(create), "delete_ms": ms(delete),
                              "list_ms": ms(listing), "serve_rss_mib": rss}), flush=True)

        start = time.time()
        for i in range(1, n + 1):
            sv("snapshot", "create", f"v@s{i}")
            h.pwrite(bytes([(i * 7) % 251 + 1]) * 4096, (i % CHUNKS) * CHUNK)
            if i in (10, n):
                measure(i)
            if i % 1000 == 0:
                print(f"{i} snapshots, {time.time() - start:.0f} s", file=sys.stderr, flush=True)
        h.shutdown()
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
