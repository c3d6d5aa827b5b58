#!/usr/bin/python3
"""One NBD session kept open while a test changes the server under it (python3-libnbd).

Usage: tls_session.py URI
Connects (the URI may name local files, such as tls-certificates=DIR) and prints
"connected tls=True|False". Then for each line N (0..255) on stdin: writes 64 KiB of byte N at
offset N * 64 KiB, flushes, reads it back, and prints "round trip N ok" (or fails). At the end
of its input it disconnects cleanly and prints "closed".
"""

import sys

import nbd

BLOCK = 64 * 1024

h = nbd.NBD()
h.set_uri_allow_local_file(True)
h.connect_uri(sys.argv[1])
print(f"connected tls={h.get_tls_negotiated()}", flush=True)
for line in sys.stdin:
    n = int(line)
    data = bytes([n]) * BLOCK
    h.pwrite(data, n * BLOCK)
    h.flush()
    if h.pread(BLOCK, n * BLOCK) != data:
        sys.exit(f"round trip {n}: read back different data")
    print(f"round trip {n} ok", flush=True)
h.shutdown()
print("closed", flush=True)
