#!/usr/bin/env python3
"""Report for scripts/bench-peers.sh: JSON, Markdown table and SVG plot.

Reads the raw results (one JSON object per fio run, from bench-peers.sh) and writes
OUT/peers.json, OUT/peers.md and OUT/peers-seq-write.svg; prints the table on stdout.
With several runs per point the median of each figure is reported (and the runs kept).
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess

SERVERS = ["snapvol", "qemu-nbd", "nbdkit"]
WORKLOADS = {
    "seq-write": "W1 sequential 1 MiB overwrite, qd 16, end_fsync",
    "rand-write": "W3 random 4 KiB writes, qd 16",
}


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def aggregate(raw):
    points = {}
    for r in raw:
        points.setdefault((r["server"], r["workload"], r["snapshots"]), []).append(r)
    out = []
    for (server, workload, snaps), rs in points.items():
        out.append({
            "server": server,
            "workload": workload,
            "snapshots": snaps,
            "mib_s": round(median([r["mib_s"] for r in rs]), 1),
            "iops": round(median([r["iops"] for r in rs])),
            "p99_ms": round(median([r["p99_ms"] for r in rs]), 2),
            "runs": len(rs),
            "per_run": [{k: r[k] for k in ("mib_s", "iops", "p99_ms")} for r in rs],
        })
    order = {s: i for i, s in enumerate(SERVERS)}
    wl = {w: i for i, w in enumerate(WORKLOADS)}
    out.sort(key=lambda p: (wl.get(p["workload"], 9), p["snapshots"], order.get(p["server"], 9)))
    return out


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "–"


def table(points):
    by = {(p["server"], p["workload"], p["snapshots"]): p for p in points}
    rows = []
    # one row per (workload, N) measured on a server with snapshots; nbdkit's N = 0 figure
    # is the ceiling column of every row of its workload
    keyed = [p for p in points if p["server"] != "nbdkit"] or points
    keys = sorted({(p["workload"], p["snapshots"]) for p in keyed},
                  key=lambda k: (list(WORKLOADS).index(k[0]), k[1]))
    head = ("| workload | snapshots | snapvol | qemu-nbd | nbdkit (no snapshots) "
            "| snapvol / qemu-nbd | snapvol / nbdkit |")
    rows.append(head)
    rows.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for workload, snaps in keys:
        sv = by.get(("snapvol", workload, snaps))
        qn = by.get(("qemu-nbd", workload, snaps))
        # nbdkit has no snapshots: compare with its N = 0 figure (the ceiling)
        nk = by.get(("nbdkit", workload, 0))
        metric = "mib_s" if workload == "seq-write" else "iops"

        def cell(p):
            if p is None:
                return "–"
            if metric == "mib_s":
                return f"{p['mib_s']:.1f} MiB/s, p99 {p['p99_ms']:.1f} ms"
            return f"{p['iops']:,} IOPS, p99 {p['p99_ms']:.1f} ms"

        nk_cell = cell(nk) if nk is None or snaps == 0 else cell(nk) + " (N = 0)"
        rows.append(
            f"| {WORKLOADS[workload]} | {snaps} | {cell(sv)} | {cell(qn)} | {nk_cell} "
            f"| {ratio(sv and sv[metric], qn and qn[metric])} "
            f"| {ratio(sv and sv[metric], nk and nk[metric])} |")
    return "\n".join(rows)


def plot(points, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for server, marker in zip(SERVERS, "osD"):
        ps = sorted((p for p in points if p["server"] == server and p["workload"] == "seq-write"),
                    key=lambda p: p["snapshots"])
        if not ps:
            continue
        xs = [p["snapshots"] for p in ps]
        ys = [p["mib_s"] for p in ps]
        if server == "nbdkit":
            ax.axhline(ys[0], linestyle="--", color="grey",
                       label=f"nbdkit file, no snapshots ({ys[0]:.0f} MiB/s)")
        else:
            ax.plot(xs, ys, marker=marker, label=server)
            for x, y in zip(xs, ys):
                ax.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize=8)
    ax.set_xlabel("fresh snapshots taken before the pass (N)")
    ax.set_ylabel("MiB/s")
    ax.set_title("Sequential 1 MiB overwrite over NBD, qd 16, 1 GiB")
    ax.set_xticks([0, 1, 8])
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)


def version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
        return out.strip().splitlines()[0] if out.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", required=True, help="raw results, one JSON object a line")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--rand-runtime", default="10")
    args = ap.parse_args()

    points = aggregate(load(args.results))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = {
        "date": now,
        "runs_per_point": args.runs,
        "statistic": "median of the runs" if args.runs > 1 else "single run",
        "volume_size": args.size,
        "rand_runtime_s": int(args.rand_runtime),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
        "versions": {
            "fio": version(["fio", "--version"]),
            "qemu-nbd": version(["qemu-nbd", "--version"]),
            "nbdkit": version(["nbdkit", "--version"]),
        },
        "notes": [
            "loopback TCP, fio --ioengine=nbd, one job, iodepth 16",
            "snapshots: N fresh snapshots taken back to back before each measured pass; "
            "they accumulate within a server's run",
            "qemu-nbd: qcow2 internal snapshots, taken with qemu-img while qemu-nbd is stopped",
            "nbdkit: file plugin on a raw file, no snapshots (the ceiling)",
            "p99 is fio's completion latency (clat) 99th percentile",
        ],
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "peers.json"), "w") as f:
        json.dump({"meta": meta, "results": points}, f, indent=2)
        f.write("\n")

    tbl = table(points)
    runs_note = ("1 run per point (a first look, not a median; `RUNS=3` for more)"
                 if args.runs == 1 else f"median of {args.runs} runs per point")
    md = (f"# snapvol against qemu-nbd and nbdkit over NBD\n\n"
          f"`./scripts/bench-peers.sh`, {now}, {runs_note}; "
          f"{os.cpu_count()} CPUs, loopback, {args.size} volume. "
          f"Random writes run {args.rand_runtime} s with 8 fresh snapshots (nbdkit: none).\n\n"
          f"{tbl}\n\n![sequential write throughput](peers-seq-write.svg)\n")
    with open(os.path.join(args.out, "peers.md"), "w") as f:
        f.write(md)
    plot(points, os.path.join(args.out, "peers-seq-write.svg"))

    print(f"\n{runs_note}, {now}\n")
    print(tbl)
    print(f"\nwrote {args.out}/peers.json, peers.md, peers-seq-write.svg")


if __name__ == "__main__":
    main()
