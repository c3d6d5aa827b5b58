#!/usr/bin/python3
"""Holds NBD connections open until told to close them (python3-libnbd).

Usage: hold_connection.py URI...
Connects to every URI, prints "connected N" on stdout, reads one line from stdin, then
disconnects cleanly (NBD_CMD_DISC) and prints "closed".
"""

import sys

import nbd

handles = []
for uri in sys.argv[1:]:
    h = nbd.NBD()
    h.connect_uri(uri)
    handles.append(h)
print(f"connected {len(handles)}", flush=True)
sys.stdin.readline()
for h in handles:
    h.shutdown()
print("closed", flush=True)
