#!/usr/bin/env python3
"""Results and report of scripts/bench-peers.sh.

  bench_peers_report.py fio FIOJSON KEY=VALUE...   one results line from a fio JSON output
  bench_peers_report.py emit KEY=VALUE...          one results line (KEY=@FILE: numbers, one a line)
  bench_peers_report.py report --results F --out DIR [--meta KEY=VALUE...]

The results file has one JSON object a line, each with a "workload" (w1..w7; w5-load, the fio
load of w5; w5-exec, the cost of starting a snapvol process; timing, a workload's duration).
`report --results` also takes a peers.json written before, to redo the report from its runs.
`report` writes DIR/peers.json (the settings, every point's median and spread, and every run),
DIR/peers.md (tables), DIR/peers-seq-write.svg (w1: throughput against snapshots) and
DIR/peers-hourly.svg (w2: throughput of each pass), and prints the Markdown on stdout.

Every figure is the median of the runs; its noise is (max - min) / median over the runs, in %.
"""

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys

SERVERS = ["snapvol", "qemu", "nbdkit"]
LABEL = {
    "snapvol": "snapvol",
    "qemu": "qemu qcow2",
    "nbdkit": "nbdkit file",
}
MIB = 2**20


# ---------------------------------------------------------------- results lines

def typed(v):
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return v


def parse_kv(items):
    out = {}
    for item in items:
        k, _, v = item.partition("=")
        if v.startswith("@"):
            with open(v[1:]) as f:
                out[k] = [float(x) for x in f.read().split()]
        else:
            out[k] = typed(v)
    return out


def fio_metrics(d):
    clat = d.get("clat_ns", {})
    pct = clat.get("percentile", {})

    def ms(x):
        return round(x / 1e6, 3) if x is not None else None

    return {
        "mib_s": d["bw_bytes"] / MIB,
        "iops": d["iops"],
        "mean_ms": ms(clat.get("mean")),
        "p50_ms": ms(pct.get("50.000000")),
        "p99_ms": ms(pct.get("99.000000")),
        "io_bytes": d["io_bytes"],
        "runtime_ms": d["runtime"],
    }


def cmd_fio(args):
    with open(args[0]) as f:
        text = f.read()
    # fio may print notes before the JSON object
    data = json.loads(text[text.index("{"):])
    rec = parse_kv(args[1:])
    quiet = rec.pop("quiet", 0)
    jobs = data["jobs"]
    if len(jobs) == 1:
        j = jobs[0]
        direction = "write" if j["write"]["io_bytes"] else "read"
        rec.update(fio_metrics(j[direction]))
    else:
        # several jobs (w4): JOBNAME_METRIC for the direction each job did
        for j in jobs:
            direction = "write" if j["write"]["io_bytes"] else "read"
            for k, v in fio_metrics(j[direction]).items():
                rec[f"{j['jobname']}_{k}"] = v
    print(json.dumps(rec))
    if not quiet:
        summary(rec)


def cmd_emit(args):
    rec = parse_kv(args)
    print(json.dumps(rec))
    if rec.get("workload") not in ("timing",):
        summary(rec)


def summary(r):
    head = f"  {r.get('workload', '?'):<3} {r.get('server', ''):<8}"
    w = r.get("workload")
    if w in ("w1", "w3"):
        s = (f"N={r['snapshots']:<2} run {r['run']}: {r['mib_s']:8.1f} MiB/s {r['iops']:9.0f} IOPS"
             f"  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms")
    elif w == "w4":
        s = (f"run {r['run']}: read {r['read_mib_s']:.1f} MiB/s p99 {r['read_p99_ms']:.1f} ms,"
             f" writes {r['write_iops']:.0f} IOPS p99 {r['write_p99_ms']:.1f} ms")
    elif w == "w5":
        xs = r["samples_ms"]
        s = (f"{r['volume']} {r['mode']} run {r['run']}: p50 {pct(xs, 50):.1f} ms"
             f" p99 {pct(xs, 99):.1f} ms max {max(xs):.1f} ms")
    elif w == "w8":
        s = (f"{r['snapshots']} snapshots: create {r['create_ms']} ms, delete {r['delete_ms']} ms,"
             f" list {r['list_ms']} ms, VmRSS {r['serve_rss_mib']} MiB")
    elif w == "w5-load":
        s = f"{r['volume']} load during the samples: {r['iops']:.0f} IOPS, p99 {r['p99_ms']:.1f} ms"
    elif w == "w5-exec":
        s = f"process start: p50 {pct(r['samples_ms'], 50):.1f} ms"
    elif w == "w6":
        s = (f"run {r['run']}: ready {r['recovery_ms']:.0f} ms after restart"
             + (f", {r['records']} records / {r['replayed_bytes'] / MIB:.0f} MiB replayed"
                if r["server"] == "snapvol" else "")
             + f"; clean start {r['clean_start_ms']:.0f} ms")
    elif w == "w7":
        s = (f"VmRSS {r['rss_end_kib'] / 1024:.0f} MiB, VmHWM {r['hwm_kib'] / 1024:.0f} MiB"
             f" (start {r['rss_start_kib'] / 1024:.0f} MiB), {r['seconds']} s")
    else:
        s = json.dumps(r)
    print(head + s, file=sys.stderr)


# ---------------------------------------------------------------- statistics

def pct(xs, p):
    """Nearest-rank percentile."""
    xs = sorted(xs)
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)]


def stat(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    med = statistics.median(xs)
    return {
        "median": med,
        "min": min(xs),
        "max": max(xs),
        "noise_pct": (max(xs) - min(xs)) / med * 100 if med else 0.0,
        "n": len(xs),
    }


def med(s):
    return s["median"] if s else None


def group(raw, workload, *keys):
    out = {}
    for r in raw:
        if r.get("workload") == workload:
            out.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    return out


def aggregate(raw):
    agg = {}

    # w1, w3: one fio figure per run
    for w in ("w1", "w3"):
        pts = []
        for (server, n), rs in group(raw, w, "server", "snapshots").items():
            pts.append({
                "server": server, "snapshots": n,
                **{m: stat([r[m] for r in rs])
                   for m in ("mib_s", "iops", "mean_ms", "p50_ms", "p99_ms")},
            })
        pts.sort(key=lambda p: (p["snapshots"], SERVERS.index(p["server"])))
        agg[w] = pts

    # w2: per run the median pass and the last pass, then the median over runs
    pts = []
    for (server,), rs in group(raw, "w2", "server").items():
        runs = {}
        for r in rs:
            runs.setdefault(r["run"], []).append(r)
        per_run = []
        for run, ps in sorted(runs.items()):
            ps.sort(key=lambda p: p["pass"])
            per_run.append({
                "run": run,
                "median_pass_mib_s": statistics.median(p["mib_s"] for p in ps),
                "last_pass_mib_s": ps[-1]["mib_s"],
                "min_pass_mib_s": min(p["mib_s"] for p in ps),
                "passes": len(ps),
            })
        npass = max(len(v) for v in runs.values())
        by_pass = [statistics.median(p["mib_s"] for ps in runs.values() for p in ps
                                     if p["pass"] == i + 1) for i in range(npass)]
        pts.append({
            "server": server,
            "median_pass_mib_s": stat([x["median_pass_mib_s"] for x in per_run]),
            "last_pass_mib_s": stat([x["last_pass_mib_s"] for x in per_run]),
            "min_pass_mib_s": stat([x["min_pass_mib_s"] for x in per_run]),
            "p99_ms": stat([p["p99_ms"] for p in rs]),
            "per_pass_median_mib_s": by_pass,
            "per_run": per_run,
        })
    pts.sort(key=lambda p: SERVERS.index(p["server"]))
    agg["w2"] = pts

    # w4: reader and writer figures per run
    pts = []
    for (server,), rs in group(raw, "w4", "server").items():
        pts.append({
            "server": server, "reads": rs[0].get("reads"),
            **{m: stat([r[m] for r in rs])
               for m in ("read_mib_s", "read_p50_ms", "read_p99_ms",
                         "write_iops", "write_p50_ms", "write_p99_ms")},
        })
    pts.sort(key=lambda p: SERVERS.index(p["server"]))
    agg["w4"] = pts

    # w5: per run p50 / p99 of its samples, median over runs; and the pooled samples
    pts = []
    for (server, vol, mode), rs in group(raw, "w5", "server", "volume", "mode").items():
        pooled = [x for r in rs for x in r["samples_ms"]]
        pts.append({
            "server": server, "volume": vol, "mode": mode,
            "p50_ms": stat([pct(r["samples_ms"], 50) for r in rs]),
            "p99_ms": stat([pct(r["samples_ms"], 99) for r in rs]),
            "pooled": {"samples": len(pooled), "p50_ms": pct(pooled, 50),
                       "p99_ms": pct(pooled, 99), "max_ms": max(pooled)},
            "load_iops": stat([r["iops"] for r in raw if r.get("workload") == "w5-load"
                               and r["server"] == server and r["volume"] == vol]
                              if mode == "load" else []),
        })
    pts.sort(key=lambda p: (SERVERS.index(p["server"]), size_key(p["volume"]), p["mode"]))
    agg["w5"] = pts
    ex = [r for r in raw if r.get("workload") == "w5-exec"]
    agg["w5_exec_ms"] = statistics.median(ex[0]["samples_ms"]) if ex else None

    # w6
    pts = []
    for (server,), rs in group(raw, "w6", "server").items():
        pts.append({
            "server": server,
            "recovery_ms": stat([r["recovery_ms"] for r in rs]),
            "clean_start_ms": stat([r["clean_start_ms"] for r in rs]),
            "records": stat([r["records"] for r in rs]),
            "replayed_mib": stat([r["replayed_bytes"] / MIB for r in rs]),
            # MiB replayed per second of restart beyond a clean start
            "replay_mib_s": stat([r["replayed_bytes"] / MIB
                                  / max(r["recovery_ms"] - r["clean_start_ms"], 1) * 1000
                                  for r in rs if r["replayed_bytes"]]),
            "journal_mib": rs[0]["journal_bytes"] / MIB,
        })
    pts.sort(key=lambda p: SERVERS.index(p["server"]))
    agg["w6"] = pts

    # w7: one run
    pts = []
    for r in raw:
        if r.get("workload") == "w7":
            pts.append({k: v for k, v in r.items() if k != "workload"})
    pts.sort(key=lambda p: SERVERS.index(p["server"]))
    agg["w7"] = pts

    # w8: one run, a point at 10 snapshots and one at W8_SNAPS
    agg["w8"] = sorted(({k: v for k, v in r.items() if k not in ("workload", "server")}
                        for r in raw if r.get("workload") == "w8"),
                       key=lambda p: p["snapshots"])

    agg["timing"] = {r["phase"]: r["seconds"] for r in raw if r.get("workload") == "timing"}
    return agg


def size_key(s):
    units = {"K": 1, "M": 2, "G": 3, "T": 4}
    s = str(s).upper().rstrip("IB")
    try:
        return float(s[:-1]) * 1024 ** units.get(s[-1], 0) if s[-1] in units else float(s)
    except ValueError:
        return 0


# ---------------------------------------------------------------- Markdown

def f1(x):
    return "–" if x is None else f"{x:,.1f}"


def noise(s):
    if not s or s["n"] < 2:
        return "1 run"
    return f"spread {s['noise_pct']:.0f} %"


def spread(s):
    return "–" if not s or s["n"] < 2 else f"{s['noise_pct']:.0f} %"


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "–"


def fmt_ms(x):
    if x is None:
        return "–"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def main_table(agg, meta):
    rows = [
        f"| workload | N | {LABEL['snapvol']} | {LABEL['qemu']} | {LABEL['nbdkit']} "
        "(no snapshots) | snapvol / qemu | snapvol / nbdkit |",
        "| --- | ---: | --- | --- | --- | ---: | ---: |",
    ]

    def cell(p, metric):
        if p is None:
            return "–"
        s = p[metric]
        if metric == "mib_s":
            main = f"**{f1(med(s))} MiB/s**"
        else:
            main = f"**{med(s):,.0f} IOPS** ({f1(med(p['mib_s']))} MiB/s)"
        return (f"{main}, p50 {fmt_ms(med(p['p50_ms']))} / p99 {fmt_ms(med(p['p99_ms']))} ms,"
                f" {noise(s)}")

    for w, title, metric in (("w1", "W1 seq. 1 MiB overwrite", "mib_s"),
                             ("w3", f"W3 random 4 KiB writes, {meta.get('w3_runtime_s')} s", "iops")):
        pts = agg.get(w) or []
        by = {(p["server"], p["snapshots"]): p for p in pts}
        nk = next((p for p in pts if p["server"] == "nbdkit"), None)
        for n in sorted({p["snapshots"] for p in pts if p["server"] != "nbdkit"}
                        or {p["snapshots"] for p in pts}):
            sv, qm = by.get(("snapvol", n)), by.get(("qemu", n))
            nk_cell = cell(nk, metric) + ("" if n == 0 or nk is None else " (N = 0)")
            rows.append(
                f"| {title} | {n} | {cell(sv, metric)} | {cell(qm, metric)} | {nk_cell} "
                f"| {ratio(sv and med(sv[metric]), qm and med(qm[metric]))} "
                f"| {ratio(sv and med(sv[metric]), nk and med(nk[metric]))} |")

    def summary_row(workload, title, n, main_cell, key, nk_note=""):
        """One row of a workload summarised by key (a list of per-run figures) per server."""
        by = {p["server"]: p for p in agg.get(workload) or []}
        if not by:
            return
        sv, qm, nk = by.get("snapvol"), by.get("qemu"), by.get("nbdkit")
        c = lambda p: "–" if p is None else main_cell(p)  # noqa: E731
        g = lambda p: p and med(p[key])  # noqa: E731
        rows.append(f"| {title} | {n} | {c(sv)} | {c(qm)} | {c(nk)}{nk_note} "
                    f"| {ratio(g(sv), g(qm))} | {ratio(g(sv), g(nk))} |")

    summary_row(
        "w2", f"W2 hourly: {meta.get('w2_passes')} passes, a snapshot before each", 1,
        lambda p: (f"**{f1(med(p['median_pass_mib_s']))} MiB/s** median pass, last "
                   f"{f1(med(p['last_pass_mib_s']))}, {noise(p['median_pass_mib_s'])}"),
        "median_pass_mib_s")
    summary_row(
        "w4", "W4 seq. read of an old snapshot under random writes", 2,
        lambda p: (f"**{f1(med(p['read_mib_s']))} MiB/s** read, p99 "
                   f"{fmt_ms(med(p['read_p99_ms']))} ms; writes {med(p['write_iops']):,.0f} IOPS, "
                   f"{noise(p['read_mib_s'])}"),
        "read_mib_s", " (live file)")
    return "\n".join(rows)


def w2_section(agg, meta):
    pts = agg.get("w2")
    if not pts:
        return None
    rows = ["| server | median pass | last pass | slowest pass | p99 (all passes) | runs |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for p in pts:
        rows.append(
            f"| {LABEL[p['server']]} | {f1(med(p['median_pass_mib_s']))} MiB/s ({noise(p['median_pass_mib_s'])}) "
            f"| {f1(med(p['last_pass_mib_s']))} MiB/s ({noise(p['last_pass_mib_s'])}) "
            f"| {f1(med(p['min_pass_mib_s']))} MiB/s | {fmt_ms(med(p['p99_ms']))} ms "
            f"| {len(p['per_run'])} |")
    passb = int(meta.get("w2_pass_bytes", 0))
    regions = size_key(meta.get("size", 0)) // passb if passb else 0
    return (
        f"## W2: a day of hourly snapshots\n\n"
        f"{meta.get('w2_passes')} sequential 1 MiB overwrite passes of {passb // MIB} MiB each "
        f"(qd 16, end_fsync), at rotating offsets (each of the volume's {regions:.0f} parts of "
        f"that size in turn), a snapshot "
        f"before each pass (nbdkit: none). Per run (a day) the median pass and the last pass; "
        f"the table gives the median over runs and, in brackets, the noise over runs.\n\n"
        + "\n".join(rows) + "\n\n![throughput of each pass](peers-hourly.svg)\n")


def w4_section(agg, meta):
    pts = agg.get("w4")
    if not pts:
        return None
    rows = ["| server | what is read | read MiB/s | read p50 / p99 | live writes IOPS | write p50 / p99 |",
            "| --- | --- | ---: | ---: | ---: | ---: |"]
    for p in pts:
        rows.append(
            f"| {LABEL[p['server']]} | {p['reads']} | {f1(med(p['read_mib_s']))} ({noise(p['read_mib_s'])}) "
            f"| {fmt_ms(med(p['read_p50_ms']))} / {fmt_ms(med(p['read_p99_ms']))} ms "
            f"| {med(p['write_iops']):,.0f} ({noise(p['write_iops'])}) "
            f"| {fmt_ms(med(p['write_p50_ms']))} / {fmt_ms(med(p['write_p99_ms']))} ms |")
    return (
        f"## W4: reading an old snapshot while the volume is written\n\n"
        f"Two fio jobs for {meta.get('w4_runtime_s')} s: sequential 1 MiB reads (qd 16) of a "
        f"snapshot taken after the fill and before one full overwrite (all its data is preserved "
        f"copies), and random 4 KiB writes (qd 16) to the live volume, which has a newer "
        f"snapshot. qemu cannot export an internal snapshot from the daemon that writes the "
        f"image: a second process, `qemu-nbd -l old`, reads it from the same qcow2 file "
        f"(read-only, force-share). nbdkit has no snapshots: it reads the live file. "
        + ("The page cache was dropped before each run (`W4_COLD=1`): every server reads "
           "from the disk.\n\n" if meta.get("w4_cold") in (1, "1") else
           "The page cache keeps what the fill and the overwrite left in it (`W4_COLD=1` "
           "drops it before each run).\n\n")
        + "\n".join(rows) + "\n")


def w5_section(agg, meta):
    pts = agg.get("w5")
    if not pts:
        return None
    by = {(p["server"], p["volume"], p["mode"]): p for p in pts}
    rows = ["| server | volume | idle p50 / p99 | under random writes p50 / p99 | load during the samples "
            "| p99 spread over runs (idle, load) | all samples p99 (idle, load) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for server in SERVERS:
        vols = sorted({p["volume"] for p in pts if p["server"] == server}, key=size_key)
        for v in vols:
            i, l_ = by.get((server, v, "idle")), by.get((server, v, "load"))

            def pp(p):
                return (f"{fmt_ms(med(p['p50_ms']))} / {fmt_ms(med(p['p99_ms']))} ms"
                        if p else "–")
            load = f"{med(l_['load_iops']):,.0f} IOPS" if l_ and l_["load_iops"] else "–"
            rows.append(
                f"| {LABEL[server]} | {v} | {pp(i)} | {pp(l_)} | {load} "
                f"| {spread(i and i['p99_ms'])}, {spread(l_ and l_['p99_ms'])} "
                f"| {fmt_ms(i and i['pooled']['p99_ms'])}, {fmt_ms(l_ and l_['pooled']['p99_ms'])} ms "
                f"(n = {i and i['pooled']['samples']}, {l_ and l_['pooled']['samples']}) |")
    ex = agg.get("w5_exec_ms")
    return (
        f"## W5: snapshot create latency\n\n"
        f"{meta.get('w5_samples')} snapshots a run, {meta.get('w5_gap_s')} s apart, on a volume "
        f"with its first {meta.get('w5_fill')} written; idle (once the server's CPU is quiet and "
        f"after a `sync`), and under random 4 KiB writes (qd 16) to that region. p50 and p99 "
        f"(nearest rank) of each run's samples, median over runs; "
        f"the last column pools every run's samples. snapvol: wall time of `snapvol snapshot "
        f"create` (a new process that asks the server through its control socket"
        + (f"; starting a snapvol process alone takes {ex:.1f} ms" if ex else "")
        + "). qemu: from connecting to the QMP socket to the answer of "
        "`blockdev-snapshot-internal-sync` (no process start). Under load each server runs its "
        "own random-write rate (the load column), so the loads differ.\n\n"
        + "\n".join(rows) + "\n")


def w6_section(agg, meta):
    pts = agg.get("w6")
    if not pts:
        return None
    rows = ["| server | ready after restart (kill -9 under writes) | journal replayed | "
            "records | ready after a clean restart | replay rate | a full journal, extrapolated |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in pts:
        s = p["recovery_ms"]
        jr = (f"{f1(med(p['replayed_mib']))} MiB of {p['journal_mib']:.0f} "
              f"({f1(p['replayed_mib']['min'])}–{f1(p['replayed_mib']['max'])})"
              if p["server"] == "snapvol" else "– (no journal)")
        rec = f"{med(p['records']):,.0f}" if p["server"] == "snapvol" else "–"
        rate = med(p["replay_mib_s"])
        full = (f"{(med(p['clean_start_ms']) + p['journal_mib'] / rate * 1000) / 1000:.1f} s"
                if rate else "–")
        rows.append(
            f"| {LABEL[p['server']]} | {fmt_ms(med(s))} ms ({fmt_ms(s['min'])}–{fmt_ms(s['max'])}, "
            f"{noise(s)}) | {jr} | {rec} | {fmt_ms(med(p['clean_start_ms']))} ms "
            f"| {f'{rate:.0f} MiB/s' if rate else '–'} | {full} |")
    return (
        f"## W6: recovery after SIGKILL\n\n"
        f"A snapshot, then {meta.get('w6_write_s')} s of random 256 KiB writes (qd 16, a FLUSH "
        f"every 16 writes) and `kill -9` of the server; the time is from starting it again until "
        f"`nbdinfo --size` answers (polled every 20 ms, so within about 30 ms). snapvol replays "
        f"its cache journal ({meta.get('snapvol_journal')}) before listening: how much the journal "
        f"held depends on where the destager was when the kill came (min–max in brackets), so "
        f"the replay rate (MiB replayed per second of restart beyond a clean start, median over "
        f"runs) extrapolates the time for a full journal. A clean restart is a start after a "
        f"SIGTERM stop, the cost of starting at all.\n\n"
        + "\n".join(rows) + "\n")


def w8_section(agg, meta):
    pts = agg.get("w8")
    if not pts:
        return None
    rows = ["| snapshots | snapshot create | snapshot delete | snapshot list --json | serve VmRSS |",
            "| ---: | ---: | ---: | ---: | ---: |"]
    for p in pts:
        rows.append(f"| {p['snapshots']:,} | {p['create_ms']} ms | {p['delete_ms']} ms "
                    f"| {p['list_ms']} ms | {p['serve_rss_mib']} MiB |")
    return (
        "## W8: many snapshots\n\n"
        "`scripts/bench-many-snapshots.py`: a sparse 8 GiB volume served on its own; snapshots "
        "taken one `snapvol snapshot create` at a time with 4 KiB written to a chunk of its own "
        "between each two, so every snapshot holds a preserved copy only it reads. At each point, "
        "medians of 10 creates and 10 deletes of a throwaway snapshot (the delete frees a copy) and "
        "of 5 lists; each figure includes starting the `snapvol` process (about 3 ms). One run.\n\n"
        + "\n".join(rows) + "\n")


def w7_section(agg, meta):
    pts = agg.get("w7")
    if not pts:
        return None
    rows = ["| server | VmRSS at start | VmRSS at the end | VmHWM (peak) | cache | peak beyond the cache "
            "| written, time |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in pts:
        cache = p.get("cache_bytes", 0) / MIB
        beyond = p["hwm_kib"] / 1024 - cache
        rows.append(
            f"| {LABEL[p['server']]} | {p['rss_start_kib'] / 1024:.0f} MiB | {p['rss_end_kib'] / 1024:.0f} MiB "
            f"| {p['hwm_kib'] / 1024:.0f} MiB | {f'{cache:.0f} MiB' if cache else '–'} "
            f"| {f'{beyond:.0f} MiB' if cache else '–'} "
            f"| {p['written_bytes'] / 2**30:.1f} GiB in {p['seconds']} s |")
    return (
        f"## W7: memory\n\n"
        f"A sparse {meta.get('w7_size')} volume; {meta.get('w7_snaps')} times: a snapshot, then "
        f"random 1 MiB writes over the whole volume ({meta.get('w7_changed')} in all). VmRSS and "
        f"VmHWM from `/proc/PID/status`; snapvol's cache is its RAM write-back cache, a quarter "
        f"of the journal; qemu's RSS holds no data cache (it writes through the kernel's page "
        f"cache), only its qcow2 metadata caches. One run (memory, not a timing); the RSS after "
        f"each snapshot's writes is in peers.json."
        + ("" if any(p["server"] == "qemu" for p in pts)
           else " qemu was not run (`W7_QEMU=1` runs it; its writes there are slow).")
        + "\n\n"
        + "\n".join(rows) + "\n")


def targets(agg, meta):
    """The targets of issue 15, where the figures exist."""
    rows = []
    mode = meta.get("snapvol_write_mode", "atomic")

    def row(what, value, ok):
        rows.append(f"| {what} | {value} | {'**yes**' if ok else '**no**'} |")

    w1 = {(p["server"], p["snapshots"]): p for p in agg.get("w1") or []}
    for (server, n), p in sorted(w1.items(), key=lambda kv: kv[0][1]):
        q = w1.get(("qemu", n))
        if server != "snapvol" or not q:
            continue
        r = med(p["mib_s"]) / med(q["mib_s"])
        if mode == "throughput" and n in (0, 1):
            want = 1.0 if n == 0 else 1.3
            row(f"W1 N = {n} ≥ {want} × qemu (throughput mode)", f"{r:.2f}", r >= want)
        elif mode == "atomic" and n == 1:
            row("W1 N = 1 ≥ 1.0 × qemu", f"{r:.2f}", r >= 1.0)
        if n in (1, 8, 64):
            a, b = med(p["p99_ms"]), med(q["p99_ms"])
            row(f"W1 N = {n} p99 ≤ qemu's", f"{fmt_ms(a)} / {fmt_ms(b)} ms", a <= b)
    w3 = {p["server"]: med(p["iops"]) for p in agg.get("w3") or []}
    if w3.get("snapvol") and w3.get("qemu"):
        r = w3["snapvol"] / w3["qemu"]
        row("W3 random 4 KiB writes ≥ 5 × qemu", f"{r:.2f}", r >= 5)
    w4 = {p["server"]: med(p["read_mib_s"]) for p in agg.get("w4") or []}
    if w4.get("snapvol") and w4.get("qemu"):
        r = w4["snapvol"] / w4["qemu"]
        row("W4 old snapshot read under writes ≥ 1.3 × qemu", f"{r:.2f}", r >= 1.3)
    w5 = {(p["volume"], p["mode"]): med(p["p99_ms"]) for p in agg.get("w5") or []
          if p["server"] == "snapvol"}
    loads = sorted(((v, x) for (v, m), x in w5.items() if m == "load"), key=lambda t: size_key(t[0]))
    if len(loads) >= 2:
        (va, a), (vb, b) = loads[0], loads[-1]
        r = b / a
        row(f"W5 snapshot p99 under load the same at {va} and {vb} (ratio within 0.67–1.5)",
            f"{r:.2f}", 0.67 <= r <= 1.5)
    for p in agg.get("w7") or []:
        if p["server"] == "snapvol":
            beyond = (p["hwm_kib"] * 1024 - p["cache_bytes"]) / MIB
            row("W7 peak memory < 256 MiB beyond the cache", f"{beyond:.0f} MiB", beyond < 256)
    w8 = agg.get("w8") or []
    if len(w8) >= 2:
        few, many = w8[0], w8[-1]
        for what in ("create", "delete", "list"):
            a, b = few[f"{what}_ms"], many[f"{what}_ms"]
            row(f"W8 snapshot {what} with {many['snapshots']:,} snapshots ≤ 2 × with {few['snapshots']}",
                f"{b} / {a} ms = {b / a:.2f}", b <= 2 * a)
        budget = int(meta.get("snapvol_cache_bytes", 0)) / MIB + 256
        rss = many["serve_rss_mib"]
        row(f"W8 VmRSS with {many['snapshots']:,} snapshots < the cache + 256 MiB",
            f"{rss} MiB (budget {budget:.0f} MiB)", rss < budget)
    if not rows:
        return None
    return ("## Targets (issue 15)\n\n| target | measured | met |\n| --- | ---: | --- |\n"
            + "\n".join(rows) + "\n")


# ---------------------------------------------------------------- plots

def plots(agg, meta, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = agg.get("w1") or []
    if pts:
        ns = sorted({p["snapshots"] for p in pts if p["server"] != "nbdkit"} or {0})
        xpos = {n: i for i, n in enumerate(ns)}  # N = 0, 1, 8, 64 evenly spaced
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for server, marker in zip(SERVERS, "osD"):
            ps = sorted((p for p in pts if p["server"] == server), key=lambda p: p["snapshots"])
            if not ps:
                continue
            if server == "nbdkit":
                y = med(ps[0]["mib_s"])
                ax.axhline(y, linestyle="--", color="grey",
                           label=f"nbdkit file, no snapshots ({y:.0f} MiB/s)")
                continue
            xs = [xpos[p["snapshots"]] for p in ps]
            ys = [med(p["mib_s"]) for p in ps]
            err = [[y - p["mib_s"]["min"] for y, p in zip(ys, ps)],
                   [p["mib_s"]["max"] - y for y, p in zip(ys, ps)]]
            ax.errorbar(xs, ys, yerr=err, marker=marker, capsize=3, label=LABEL[server])
            for p, x, y in zip(ps, xs, ys):  # the higher figure above its point, others below
                top = max(med(q["mib_s"]) for q in pts
                          if q["server"] != "nbdkit" and q["snapshots"] == p["snapshots"])
                ax.annotate(f"{y:.0f}", (x, y), textcoords="offset points", fontsize=8,
                            xytext=(6, 5) if y >= top else (6, -12))
        ax.set_xticks(range(len(ns)), [str(n) for n in ns])
        ax.set_xlim(-0.3, len(ns) - 0.6)
        ax.set_xlabel("snapshots taken back to back before the pass (N)")
        ax.set_ylabel("MiB/s")
        runs = meta.get("runs")
        ax.set_title(f"Sequential 1 MiB overwrite over NBD, qd 16, {meta.get('size')}\n"
                     f"median of {runs} run{'s' if runs != 1 else ''}, bars: min–max",
                     fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "peers-seq-write.svg"), format="svg", metadata={"Date": None})
        plt.close(fig)

    pts = agg.get("w2") or []
    if pts:
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        for p, marker in zip(pts, "osD"):
            ys = p["per_pass_median_mib_s"]
            ax.plot(range(1, len(ys) + 1), ys, marker=marker, markersize=3,
                    label=LABEL[p["server"]] + (" (no snapshots)" if p["server"] == "nbdkit" else ""),
                    linestyle="--" if p["server"] == "nbdkit" else "-",
                    color="grey" if p["server"] == "nbdkit" else None)
        ax.set_xlabel("pass (a snapshot before each)")
        ax.set_ylabel("MiB/s")
        ax.set_title(f"A day of hourly snapshots: {int(meta.get('w2_pass_bytes', 0)) // MIB} MiB "
                     f"overwritten per pass, median of runs", fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "peers-hourly.svg"), format="svg", metadata={"Date": None})
        plt.close(fig)


# ---------------------------------------------------------------- report

def version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
        return out.strip().splitlines()[0] if out.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def cmd_report(argv):
    ap = argparse.ArgumentParser(prog="bench_peers_report.py report")
    ap.add_argument("--results", required=True,
                    help="raw results, one JSON object a line; or a peers.json written before "
                         "(its runs and settings: to redo the report)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--meta", nargs="*", default=[], help="KEY=VALUE settings of the run")
    args = ap.parse_args(argv)

    with open(args.results) as f:
        text = f.read()
    try:
        old = json.loads(text)
    except ValueError:
        old = None
    if isinstance(old, dict) and "runs" in old:
        raw, meta = old["runs"], {k: v for k, v in old["meta"].items()
                                  if k not in ("date", "machine", "versions")}
    else:
        raw, meta = [json.loads(line) for line in text.splitlines() if line.strip()], {}
    meta.update(parse_kv(args.meta))
    mode = meta.get("snapvol_write_mode", "atomic")
    notes = [] if mode == "atomic" else [mode]
    cache_dir = meta.get("snapvol_cache_dir", "")
    if cache_dir:
        # /dev/shm and other tmpfs stand in for NVRAM: fast, and gone at power loss.
        tmpfs = subprocess.run(["stat", "-f", "-c", "%T", cache_dir], capture_output=True,
                               text=True).stdout.strip() == "tmpfs"
        notes.append(f"journal in {cache_dir}" + (", tmpfs: not durable" if tmpfs else ""))
    if notes:
        LABEL["snapvol"] = f"snapvol ({'; '.join(notes)})"
    agg = aggregate(raw)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runs = int(meta.get("runs", 1))
    total = int(meta.get("total_seconds", 0))
    meta.update({
        "date": now,
        "statistic": "median of the runs; noise = (max - min) / median over the runs",
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
        "versions": {
            "fio": version(["fio", "--version"]),
            "qemu-storage-daemon": version(["qemu-storage-daemon", "--version"]),
            "nbdkit": version(["nbdkit", "--version"]),
        },
        "servers": {
            "snapvol": "snapvol serve; snapshots with `snapvol snapshot create` (control socket)",
            "qemu": "qemu-storage-daemon, qcow2, NBD export, writeback cache; internal "
                    "snapshots live through QMP blockdev-snapshot-internal-sync",
            "nbdkit": "nbdkit file plugin on a raw file, no snapshots (the ceiling)",
        },
    })
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "peers.json"), "w") as f:
        json.dump({"meta": meta, "results": agg, "runs": raw}, f, indent=1)
        f.write("\n")

    runs_note = (f"median of {runs} runs per point" if runs > 1
                 else "1 run per point (a first look, not a median)")
    noise_note = ("spread: (max − min) / median of the runs, the noise of each figure"
                  if runs > 1 else "no spread with one run")
    parts = [
        "# snapvol against qemu (qcow2) and nbdkit over NBD\n",
        f"`./scripts/bench-peers.sh`, {now}, {runs_note} ({noise_note}); {os.cpu_count()} CPUs, "
        f"loopback TCP, `fio --ioengine=nbd`, one {meta.get('size')} volume per workload, filled "
        f"first. qemu is `qemu-storage-daemon` serving a qcow2 image (writeback cache) with "
        f"internal snapshots taken live through QMP; nbdkit is its file plugin on a raw file, "
        f"without snapshots: the ceiling. N is the number of snapshots taken back to back "
        f"before each measured pass (they accumulate over the runs); p50 / p99 are fio's "
        f"completion latencies (with 1 MiB requests, IOPS = MiB/s). The ratios divide "
        f"medians; nbdkit's figure is the one without snapshots. Run time {total // 60} min "
        f"{total % 60} s.\n",
    ]
    if agg.get("w1") or agg.get("w3") or agg.get("w2") or agg.get("w4"):
        parts.append(main_table(agg, meta) + "\n")
    if agg.get("w1"):
        parts.append("![sequential write throughput against the number of snapshots]"
                     "(peers-seq-write.svg)\n")
    for sec in (targets(agg, meta), w2_section(agg, meta), w4_section(agg, meta),
                w5_section(agg, meta), w6_section(agg, meta), w7_section(agg, meta),
                w8_section(agg, meta)):
        if sec:
            parts.append(sec)
    vers = meta["versions"]
    parts.append(f"Versions: {vers['fio']}, {vers['qemu-storage-daemon']}, {vers['nbdkit']}. "
                 f"Every run's figures are in [peers.json](peers.json).\n")
    md = "\n".join(parts)
    with open(os.path.join(args.out, "peers.md"), "w") as f:
        f.write(md)
    plots(agg, meta, args.out)
    print(md)
    svgs = [n for w, n in (("w1", "peers-seq-write.svg"), ("w2", "peers-hourly.svg")) if agg.get(w)]
    print(f"wrote {', '.join(['peers.json', 'peers.md'] + svgs)} in {args.out}", file=sys.stderr)


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "fio":
        cmd_fio(rest)
    elif cmd == "emit":
        cmd_emit(rest)
    elif cmd == "report":
        cmd_report(rest)
    else:
        sys.exit(f"unknown command {cmd}; see --help")


if __name__ == "__main__":
    main()
