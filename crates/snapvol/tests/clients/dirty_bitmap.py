#!/usr/bin/python3
"""Reads a qemu:dirty-bitmap context the way virtnbdbackup does (python3-libnbd).

It selects base:allocation and qemu:dirty-bitmap:BITMAP, connects, checks can_meta_context,
and walks the export with block_status, collecting both contexts' extents (the callback is
called once per context per request). Dirty values other than 0/1 and allocation values
outside 0..3 are errors, as virtnbdbackup treats them.

Usage: dirty_bitmap.py map URI BITMAP
    prints {"size": N, "allocation": [[offset, length, flags], ...],
            "dirty": [[offset, length, flags], ...], "requests": N}

       dirty_bitmap.py probe URI BITMAP OFFSET COUNT [req-one]
    one BLOCK_STATUS request (with NBD_CMD_FLAG_REQ_ONE if asked); prints
    {"allocation": [[length, flags], ...], "dirty": [[length, flags], ...]}

       dirty_bitmap.py backup URI BITMAP IMAGE
    an incremental backup into IMAGE (a full copy of the bitmap's snapshot): every dirty
    extent is read and written into IMAGE at the same offset, except the parts that
    base:allocation reports as zero, which are zeroed in IMAGE without being read; prints
    {"dirty_bytes": N, "bytes_read": N, "bytes_zeroed": N, "extents": N, "requests": N}
"""

import json
import sys

import nbd

ALLOCATION = "base:allocation"
DIRTY = "qemu:dirty-bitmap:"
# Largest request libnbd sends; the server answers less and the walk goes on from there.
MAX_COUNT = 2**32 - 2**20
READ_STEP = 32 * 2**20


class Bad(Exception):
    """The server's answer breaks a rule a backup relies on."""


def connect(uri, bitmap):
    h = nbd.NBD()
    h.add_meta_context(ALLOCATION)
    h.add_meta_context(DIRTY + bitmap)
    h.connect_uri(uri)
    for ctx in (ALLOCATION, DIRTY + bitmap):
        if not h.can_meta_context(ctx):
            raise Bad(f"{uri}: the server did not select {ctx}")
    return h


def walk(h, bitmap):
    """Both contexts' extents over the whole export, as {context: [[off, len, flags]]}."""
    dirty_ctx = DIRTY + bitmap
    size = h.get_size()
    maps = {ALLOCATION: [], dirty_ctx: []}
    offset = 0
    requests = 0
    while offset < size:
        count = min(size - offset, MAX_COUNT)
        got = {}
        problems = []

        # An exception in a libnbd callback would be lost: the callback only notes problems.
        def extent(ctx, off, entries, err):
            if ctx in got:
                problems.append(f"two chunks for {ctx} in one reply")
            if off != offset:
                problems.append(f"{ctx}: extents from {off}, asked from {offset}")
            if len(entries) % 2 or not entries:
                problems.append(f"{ctx}: malformed entries {entries}")
            got[ctx] = [(entries[i], entries[i + 1]) for i in range(0, len(entries) - 1, 2)]
            return 0

        h.block_status(count, offset, extent)
        requests += 1
        if problems:
            raise Bad("; ".join(problems))
        if set(got) != set(maps):
            raise Bad(f"one reply had chunks for {sorted(got)}, not {sorted(maps)}")
        # The contexts may cover different lengths: go on from the shorter.
        ends = []
        for ctx, extents in got.items():
            pos = offset
            for length, flags in extents:
                if length <= 0:
                    raise Bad(f"{ctx}: extent of length {length} at {pos}")
                if ctx == ALLOCATION and not 0 <= flags <= 3:
                    raise Bad(f"{ctx}: flags {flags} at {pos}")
                if ctx == dirty_ctx and flags not in (0, 1):
                    raise Bad(f"{ctx}: dirty value {flags} at {pos}")
                pos += length
            ends.append(pos)
        end = min(min(ends), size)
        for ctx, extents in got.items():
            pos = offset
            for length, flags in extents:
                length = min(length, end - pos)
                if length <= 0:
                    break
                out = maps[ctx]
                if out and out[-1][2] == flags and out[-1][0] + out[-1][1] == pos:
                    out[-1][1] += length
                else:
                    out.append([pos, length, flags])
                pos += length
        offset = end
    return size, maps, requests


def intersect(dirty, allocation):
    """The dirty extents cut where allocation changes: [(offset, length, zero)]."""
    out = []
    for d_off, d_len, d_flags in dirty:
        if d_flags != 1:
            continue
        for a_off, a_len, a_flags in allocation:
            lo, hi = max(d_off, a_off), min(d_off + d_len, a_off + a_len)
            if lo < hi:
                out.append((lo, hi - lo, bool(a_flags & 2)))
    return out


def probe(h, bitmap, offset, count, flags):
    """One request's descriptors, by context."""
    got = {}

    def extent(ctx, off, entries, err):
        key = "allocation" if ctx == ALLOCATION else "dirty"
        got.setdefault(key, []).append(
            [[entries[i], entries[i + 1]] for i in range(0, len(entries) - 1, 2)]
        )
        return 0

    h.block_status(count, offset, extent, flags)
    for key, chunks in got.items():
        if len(chunks) != 1:
            raise Bad(f"{len(chunks)} chunks for {key} in one reply")
        got[key] = chunks[0]
    return got


def main():
    mode, uri, bitmap = sys.argv[1:4]
    h = connect(uri, bitmap)
    if mode == "probe":
        offset, count = int(sys.argv[4]), int(sys.argv[5])
        flags = nbd.CMD_FLAG_REQ_ONE if sys.argv[6:] == ["req-one"] else 0
        print(json.dumps(probe(h, bitmap, offset, count, flags)))
        h.shutdown()
        return
    size, maps, requests = walk(h, bitmap)
    if mode == "map":
        print(json.dumps({
            "size": size,
            "allocation": maps[ALLOCATION],
            "dirty": maps[DIRTY + bitmap],
            "requests": requests,
        }))
    elif mode == "backup":
        image = sys.argv[4]
        read = zeroed = 0
        parts = intersect(maps[DIRTY + bitmap], maps[ALLOCATION])
        with open(image, "r+b") as f:
            for off, length, zero in parts:
                f.seek(off)
                if zero:
                    f.write(bytes(length))
                    zeroed += length
                    continue
                done = 0
                while done < length:
                    n = min(READ_STEP, length - done)
                    f.write(h.pread(n, off + done))
                    read += n
                    done += n
        print(json.dumps({
            "dirty_bytes": sum(n for _, n, flags in maps[DIRTY + bitmap] if flags == 1),
            "bytes_read": read,
            "bytes_zeroed": zeroed,
            "extents": len(parts),
            "requests": requests,
        }))
    else:
        raise SystemExit(f"unknown mode {mode}")
    h.shutdown()


if __name__ == "__main__":
    try:
        main()
    except Bad as e:
        raise SystemExit(f"bad block status: {e}")
