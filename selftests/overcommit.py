#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""make overcommit: why anyone runs a balloon, measured.

The story at a quarter of its size: six guests of 512 MiB whose QEMU
processes share one host memory cgroup that holds two thirds of them
(2 GiB, plus the QEMU overhead measured at idle; no swap). Guests D, E, F
are busy (a 400 MiB working set each, written and verified again and
again) while A, B, C idle; then the load moves to A, B, C, and back: five
swings. The host balloons them with the story's static plan, or with a
small policy that sees only what a host sees (vbtest/overcommit.py), on
time, late (LATE_S after the load moved) or asking too much (a target
below a busy guest's working set).

For each driver (the in-tree virtio_balloon, vballoon, vballoon with free
page reporting) and host behaviour: verification failures, guest OOM kills
and panics, QEMUs killed by the cgroup, the cgroup's peak against its
limit, the time from a switch until every busy guest holds its working set
(rebalance), memory moved per swing, the age of guest-stats as the host
reads them. Results: build/overcommit/results.json, results.md (the table)
and timeline-DRIVER-MODE.png (each guest's target, actual, RSS and
MemAvailable, the cgroup's usage and limit).
"""
import argparse
import datetime
import fcntl
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))

from vbtest import cgroup, initramfs  # noqa: E402
from vbtest.overcommit import Scenario  # noqa: E402
from vbtest.plot import gnuplot  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
LOCK = Path("/run/lock/vballoon-overcommit.lock")
DRIVERS = ("virtio_balloon", "vballoon", "vballoon+reporting")
MODES = ("static", "policy", "late", "toomuch")


def log(msg):
    print(f"# {msg}", flush=True)


def default_kernel():
    k = sorted(p.name[len("vmlinuz-"):] for p in Path("/boot").glob("vmlinuz-6.12*"))
    return k[-1] if k else None


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# (label, function of a result -> number or None, format, lower is better)
ROWS = [
    ("pattern verifications done", lambda r: r["verify_ok"] + r["verify_fail"], "{:.0f}", None),
    ("pattern verifications failed", lambda r: r["verify_fail"], "{:.0f}", True),
    ("working sets lost (job died)", lambda r: r["lost"], "{:.0f}", True),
    ("guest OOM kills", lambda r: r["guest_oom_kill"], "{:.0f}", True),
    ("guest panics", lambda r: r["panics"], "{:.0f}", True),
    ("QEMUs killed by the host cgroup", lambda r: r["qemu_killed"], "{:.0f}", True),
    ("cgroup peak, % of limit", lambda r: 100 * r["peak"] / r["limit"] if r["peak"] else None,
     "{:.1f}", True),
    ("cgroup limit hits (failcnt)", lambda r: r["cg_limit_hit"], "{:.0f}", True),
    ("rebalance s, median of swings", lambda r: med(r["rebalance_s"]), "{:.1f}", True),
    ("rebalance s, worst swing",
     lambda r: None if None in r["rebalance_s"] else max(r["rebalance_s"], default=None),
     "{:.1f}", True),
    ("working set write s, median", lambda r: med(
        [w for p in r["phases"][1:] for w in p["write_s"].values()]), "{:.1f}", True),
    ("QEMU CPU s per swing: busy guests", lambda r: med(
        [p["cpu_s"]["busy"] for p in r["phases"][1:]]), "{:.1f}", True),
    ("QEMU CPU s per swing: idle-going guests", lambda r: med(
        [p["cpu_s"]["idle"] for p in r["phases"][1:]]), "{:.1f}", True),
    ("host CPUs busy until rebalanced, %", lambda r: med(
        [100 * (p["cpu_s"]["busy"] + p["cpu_s"]["idle"]) /
         (p["cpu_s"]["cpus"] * p["cpu_s"]["window_s"]) for p in r["phases"][1:]]),
     "{:.0f}", None),
    ("balloon moved per swing, MiB", lambda r: med(r["moved_mib"]), "{:.0f}", None),
    ("guest-stats age s (busy guests), median", lambda r: r["stats_age_median"],
     "{:.1f}", True),
    ("guest-stats age s, max", lambda r: r["stats_age_max"], "{:.1f}", True),
]


def markdown(res):
    m = res["meta"]
    lines = [f"# make overcommit, {m['date']}", "",
             f"Kernel {m['kernel']}, accel {m['accel']}, {m['guests']} guests of "
             f"{m['mem']} MiB, working set {m['ws']} MiB, {m['swings']} swings; "
             f"host {m['host']}; {m['wall_s']:.0f} s in all" +
             (f"; vballoon loaded with {m['params']}" if m.get("params") else "") + ".", ""]
    drivers = [d for d in DRIVERS if any(r["driver"] == d for r in res["runs"])]
    for mode in MODES:
        runs = {r["driver"]: r for r in res["runs"] if r["mode"] == mode}
        if not runs:
            continue
        r0 = next(iter(runs.values()))
        lines += [f"## {mode}", "",
                  f"cgroup limit {r0['limit'] // MiB} MiB (overhead at idle "
                  f"{r0['overhead'] // MiB} MiB)", "",
                  "| figure | " + " | ".join(drivers) + " | vballoon / in-tree |",
                  "|---|" + "---|" * (len(drivers) + 1)]
        for label, fn, fmt, _ in ROWS:
            vals = {}
            for d in drivers:
                try:
                    vals[d] = fn(runs[d]) if d in runs else None
                except (KeyError, TypeError, ZeroDivisionError):
                    vals[d] = None
            cells = [fmt.format(vals[d]) if vals[d] is not None else "-" for d in drivers]
            a, b = vals.get("virtio_balloon"), vals.get("vballoon")
            ratio = f"{b / a:.2f}" if a and b is not None else ""
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")
        for d in drivers:
            tm = [p.get("toomuch") for p in runs.get(d, {}).get("phases", []) if p.get("toomuch")]
            for t in tm:
                act = f"{t['actual'] // MiB} MiB" if t["actual"] else "guest gone"
                lines.append(f"\n{d}: host asked {t['guest']} for {t['target'] // MiB} MiB; "
                             f"actual {act}, refusals {t['refusals']}; guest log: "
                             f"{'; '.join(t.get('dmesg') or t['guest_log']) or '-'}")
        lines.append("")
    return "\n".join(lines) + "\n"


def timeline(r, out):
    """A PNG: the cgroup on top, one panel per guest below."""
    names = sorted(r["guests_detail"])
    mem = r["mem_mib"]
    data = out / f"timeline-{r['driver']}-{r['mode']}.dat"
    with open(data, "w") as f:
        for row in r["samples"]:
            cols = [f"{row['t']:.1f}", str(row["cg"] // MiB), str(row["limit"] // MiB)]
            for g in names:
                v = row["g"].get(g)
                if v is None:
                    cols += ["NaN"] * 5
                    continue
                cols += [str(v["target"] // MiB), str(v["actual"] // MiB),
                         str(v["rss"] // MiB),
                         str(v["avail"] // MiB) if v["avail"] is not None else "NaN",
                         str(mem if v["busy"] else 0)]
            f.write(" ".join(cols) + "\n")
    png = out / f"timeline-{r['driver']}-{r['mode']}.png"
    half = (len(names) + 1) // 2
    switches = "".join(f"set arrow from {p['t_switch']:.1f}, graph 0 to {p['t_switch']:.1f}, "
                       "graph 1 nohead dt 3 lc rgb 'gray40'\n" for p in r["phases"])
    top = 0.28
    s = [f"set terminal png size 1400,{400 + 260 * half}",
         f"set output '{png}'", "set termoption noenhanced", "set multiplot", "set grid",
         "set key outside right top vertical", "set lmargin 8", "set rmargin 22",
         "set xlabel 's'",
         "set style fill transparent solid 0.25 noborder", switches,
         f"set origin 0,{1 - top}", f"set size 1,{top - 0.02}", "set yrange [0:*]",
         f"set title '{r['driver']}, host: {r['mode']} - host cgroup (all QEMUs), MiB; "
         "dotted: the load moves'",
         f"plot '{data}' using 1:2 with lines lw 2 lc rgb 'red' title 'cgroup usage', "
         "'' using 1:3 with lines lw 2 lc rgb 'black' title 'limit'"]
    for i, g in enumerate(names):
        c = 2 + 5 * i + 2   # first column of this guest (1-based)
        col, row = i // half, i % half
        h = (1 - top) / half
        s += [f"set origin {col * 0.5},{1 - top - (row + 1) * h}",
              f"set size 0.5,{h}", "set yrange [0:*]",
              f"set title 'guest {g} (MiB; shaded: busy)'",
              "set rmargin 2" if col == 0 else "set rmargin 22",
              "unset key" if col == 0 or row else "set key outside right top vertical",
              f"plot '{data}' using 1:{c + 4} with filledcurves x1 lc rgb 'orange' title 'busy', "
              f"'' using 1:{c} with lines dt 2 lw 2 lc rgb 'black' title 'target', "
              f"'' using 1:{c + 1} with lines lw 2 lc rgb 'blue' title 'actual', "
              f"'' using 1:{c + 2} with lines lc rgb 'red' title 'QEMU RSS', "
              f"'' using 1:{c + 3} with lines lc rgb 'dark-green' title 'MemAvailable'"]
    s.append("unset multiplot")
    return png if gnuplot("\n".join(s) + "\n", log) else None


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel", default=None, help="guest kernel (default: the host's 6.12)")
    p.add_argument("--driver", action="append", choices=DRIVERS,
                   help="driver (repeatable; default all three)")
    p.add_argument("--mode", action="append", choices=MODES,
                   help="host behaviour (repeatable; default all)")
    p.add_argument("--guests", type=int, default=6)
    p.add_argument("--mem", type=int, default=512, help="MiB per guest")
    p.add_argument("--ws", type=int, default=400, help="working set MiB")
    p.add_argument("--swings", type=int, default=5)
    p.add_argument("--host", type=int, default=None,
                   help="MiB the guests may have together (default 2/3 of theirs)")
    p.add_argument("--params", default="",
                   help="module parameters for vballoon (e.g. oom_pages=4096)")
    p.add_argument("--accel", choices=["kvm", "tcg"], default="tcg")
    p.add_argument("--out", default=str(REPO / "build" / "overcommit"))
    args = p.parse_args()
    why = cgroup.available()
    if why:
        sys.exit(f"overcommit: needs a host memory cgroup: {why}")
    # two runs at once would each measure the other's guests
    lock = open(LOCK, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        sys.exit(f"overcommit: another run holds {LOCK} (pid {lock.read().strip() or '?'})")
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    kver = args.kernel or default_kernel()
    if not kver:
        sys.exit("overcommit: no 6.12 kernel in /boot: give --kernel")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # SIGTERM ends the run like ^C: the scenario's finally stops the QEMUs
    # and removes the cgroup
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    progs = initramfs.build_guest_programs(REPO / "build" / "selftests" / "bin")
    kos = {"virtio_balloon": initramfs.KernelModules(kver).path("virtio_balloon"),
           "vballoon": REPO / "build" / kver / "vballoon.ko"}
    if not kos["vballoon"].exists():
        sys.exit(f"overcommit: no {kos['vballoon']}: make build/{kver}/vballoon.ko")
    images = {d: initramfs.build_initramfs(kver, ko, REPO / "build" / "selftests" / "initramfs",
                                           progs) for d, ko in kos.items()}
    t0 = time.monotonic()
    res = {"meta": {"date": datetime.date.today().isoformat(), "kernel": kver,
                    "accel": args.accel, "guests": args.guests, "mem": args.mem,
                    "ws": args.ws, "swings": args.swings, "params": args.params,
                    "host": f"{args.host or args.guests * args.mem * 2 // 3} MiB for the guests"},
           "runs": []}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for mode in args.mode or MODES:
        for drv in args.driver or DRIVERS:
            base = drv.split("+")[0]
            log(f"{drv}, host {mode}")
            sc = Scenario(kver, images[base], base, mode, out / f"run-{stamp}" / f"{drv}-{mode}",
                          args.accel, args.guests, args.mem, args.ws, args.swings,
                          reporting=drv.endswith("+reporting"), host=args.host,
                          log=lambda m: log(f"  {m}"),
                          params=args.params if base == "vballoon" else "")
            r = sc.run()
            res["runs"].append(r)
            log(f"{drv}, host {mode}: rebalance {r['rebalance_s']}, verify failed "
                f"{r['verify_fail']}, guest OOM kills {r['guest_oom_kill']}, panics "
                f"{r['panics']}, QEMUs killed {r['qemu_killed']}, peak "
                f"{(r['peak'] or 0) // MiB}/{r['limit'] // MiB} MiB")
            png = timeline(r, out)
            if png:
                log(f"timeline: {png}")
            res["meta"]["wall_s"] = time.monotonic() - t0
            (out / "results.partial.json").write_text(json.dumps(res, indent=1) + "\n")
    res["meta"]["wall_s"] = time.monotonic() - t0
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    (out / "results.md").write_text(md)
    print(md)
    log(f"results in {out}/results.json, results.md; {res['meta']['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
