#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""make bench: the in-tree virtio_balloon and vballoon side by side.

For each kernel and guest size, one guest runs the in-tree driver and one
runs vballoon; repetitions alternate between them so drift hits both. Per
repetition and driver:

  inflate    full -> 25% of RAM, MiB/s from the QMP `balloon` command until
             query-balloon reports the target (polled every 10 ms)
  stalls     seconds of that inflate during which query-balloon did not
             move for STALL_S or more (a driver waiting, e.g. at its floor)
  deflate    back to full, likewise
  floor      a host process discarding the same number of 4 KiB pages with
             one madvise(MADV_DONTNEED) each (selftests/host/madvise_floor.c)
  rss        QEMU's VmRSS released per ballooned MiB, the guest having
             touched its memory first
  thp        QEMU's AnonHugePages before and after inflating half the guest,
             on a guest fresh from boot (a range the host once discarded
             comes back in 4 KiB pages): the guest touches all its memory,
             so the host backs it with huge pages, then a task holds all
             but half the guest and a margin (1/16), giving back one page in
             FRAG_EVERY: free single pages in the blocks it uses. The task
             runs on the last CPU, which then goes offline and back, so its
             per-CPU free list (27 MiB per CPU on a 6.12 1 GiB guest, for
             good) goes to the buddy lists; then half the guest is
             ballooned.
  cpu        guest CPU time (all CPUs, /proc/stat non-idle) during inflate
             and deflate
  scaling    (4 GiB guests) inflate time for 256 MiB, 1 GiB and 3 GiB
  oom        (deflate-on-oom, a guest of its own) how long the driver's OOM
             notifier takes to give pages back (function_graph tracer,
             median per call) when a task takes 64 MiB more than the guest
             has: once with the balloon at half the guest and still, once
             from full with an inflate to 3/4 asked for just before. A
             notifier that waits behind an inflate takes longer then
  hugetlb    (a guest of its own, on 2 MiB hugetlbfs pages: memfd with
             hugetlb=on, the host's huge pages reserved for the run and the
             reservation put back after) the guest touches and frees most of
             its memory, then half of it is ballooned: the host's
             HugePages_Free rise in MiB against the MiB ballooned. QEMU
             gives a host huge page back only when all its 4 KiB pieces
             arrive in one buffer
  compact    the inflate again, while the guest compacts its memory in a
             loop: MiB/s, and the balloon pages compaction migrated during
             the inflate (balloon_migrate; a driver holding its lock over
             the whole inflate makes migration's trylock fail)

Medians with min and max go to JSON, a Markdown table and a PNG chart.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))

from vbtest import initramfs  # noqa: E402
from vbtest.plot import gnuplot  # noqa: E402
from vbtest import platform as vbplatform  # noqa: E402
from vbtest.hostmem import huge_free, hugepages, hugetlb_args  # noqa: E402
from vbtest.vm import VMConfig, boot, console_problems, probe_kvm  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
DRIVERS = ("virtio_balloon", "vballoon")
FRAG_EVERY = 8          # the fragmenting task gives back one page in 8
STALL_S = 0.25          # the balloon standing still this long is a stall


def frag_margin_mib(mem):
    """MemAvailable (MiB) left once half the guest is ballooned: above
    vballoon's floor (1/32 of the guest, at least 32 MiB) and its slack."""
    return max(64, mem // MiB // 16)


def log(msg):
    print(f"# {msg}", flush=True)


def build_floor(out):
    exe = out / "madvise_floor"
    src = REPO / "selftests" / "host" / "madvise_floor.c"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(src)], check=True)
    return exe


def host_floor(exe, pages):
    out = subprocess.run([str(exe), str(pages)], check=True, text=True,
                         stdout=subprocess.PIPE).stdout
    return float(out.strip())


def guest_busy(g):
    """Guest CPU seconds spent not idle, all CPUs (USER_HZ = 100)."""
    f = [int(x) for x in g.read("/proc/stat").splitlines()[0].split()[1:]]
    return (sum(f) - f[3] - f[4]) / 100.0


def timed_balloon(vm, target, timeout=600, stalls=None):
    """Seconds from the balloon command until query-balloon says target.
    With a list for stalls, append each stretch of STALL_S or more during
    which the balloon did not move (a driver waiting, e.g. at its floor)."""
    last = vm.qmp.query_balloon()
    t0 = moved = time.monotonic()
    vm.qmp.balloon(target)
    while True:
        actual, now = vm.qmp.query_balloon(), time.monotonic()
        if actual != last:
            if stalls is not None and now - moved >= STALL_S:
                stalls.append(now - moved)
            last, moved = actual, now
        if actual == target:
            return now - t0
        if now - t0 > timeout:
            raise TimeoutError(f"target {target // MiB} MiB not reached")
        time.sleep(0.01)


def touch(vm, keep_mib=64):
    hog = vm.guest.meminfo()["MemAvailable"] // 1024 - keep_mib
    vm.guest.check(f"memhog {hog}", timeout=600)


def thp_half(vm, mem):
    """Host THP (kB) before and after inflating half of a fragmented guest;
    vm must be fresh from boot."""
    touch(vm)
    used = vm.guest.meminfo()["MemAvailable"] // 1024 - mem // MiB // 2 - frag_margin_mib(mem)
    job = vm.guest.fragment(used * FRAG_EVERY // (FRAG_EVERY - 1), FRAG_EVERY)
    before = vm.rss()["AnonHugePages"]
    timed_balloon(vm, mem // 2)
    after = vm.rss()["AnonHugePages"]
    timed_balloon(vm, mem)
    job.stop()
    return before, after


def one_rep(vm, mem, floor_exe, scaling):
    """Measure one repetition on a booted guest with its driver loaded."""
    g, r = vm.guest, {}
    touch(vm)
    size = mem * 3 // 4
    rss0 = vm.rss()
    c0 = guest_busy(g)
    stalls = []
    r["inflate_s"] = timed_balloon(vm, mem - size, stalls=stalls)
    r["inflate_stall_s"] = sum(stalls)
    c1 = guest_busy(g)
    rss1 = vm.rss()
    r["deflate_s"] = timed_balloon(vm, mem)
    c2 = guest_busy(g)
    r["inflate_mibs"] = size / MiB / r["inflate_s"]
    r["deflate_mibs"] = size / MiB / r["deflate_s"]
    r["inflate_cpu_s"], r["deflate_cpu_s"] = c1 - c0, c2 - c1
    r["rss_per_mib"] = (rss0["VmRSS"] - rss1["VmRSS"]) / 1024 / (size / MiB)
    r["floor_s"] = host_floor(floor_exe, size // 4096)
    r["x_floor"] = r["inflate_s"] / r["floor_s"]

    job = g.spawn("while :; do echo 1 > /proc/sys/vm/compact_memory; done")
    try:
        m0 = g.vmstat()["balloon_migrate"]
        r["inflate_compact_s"] = timed_balloon(vm, mem - size)
        r["compact_migrated"] = g.vmstat()["balloon_migrate"] - m0
    finally:
        job.signal("TERM")
    r["inflate_compact_mibs"] = size / MiB / r["inflate_compact_s"]
    timed_balloon(vm, mem)

    if scaling:
        for mib in (256, 1024, 3072):
            r[f"inflate_{mib}_s"] = timed_balloon(vm, mem - mib * MiB)
            timed_balloon(vm, mem)
    return r


OOM_NOTIFIER = {"virtio_balloon": "virtio_balloon_oom_notify", "vballoon": "vb_oom_notify"}
TRACING = "/sys/kernel/tracing"


def oom_calls(g, driver, hog_mib, during=None):
    """Durations (ms) of the driver's OOM notifier while memhog takes
    hog_mib MiB; during() runs just before memhog starts."""
    g.check(f"echo 0 > {TRACING}/tracing_on; echo nop > {TRACING}/current_tracer; "
            f"echo {OOM_NOTIFIER[driver]} > {TRACING}/set_ftrace_filter; "
            f"echo 1 > {TRACING}/max_graph_depth; "
            f"echo function_graph > {TRACING}/current_tracer; echo > {TRACING}/trace; "
            f"echo 1 > {TRACING}/tracing_on")
    if during:
        during()
    # the OOM killer may end it; a driver that re-inflates as fast as the
    # notifier gives back can starve it: 90 s is plenty of calls
    g.run(f"timeout 90 memhog {hog_mib}", 120)
    g.check(f"echo 0 > {TRACING}/tracing_on")
    out = g.check(f"cat {TRACING}/trace", timeout=60)
    g.check(f"echo nop > {TRACING}/current_tracer; echo > {TRACING}/set_ftrace_filter")
    # " 1) ! 1234.567 us |  vb_oom_notify();"
    return [float(m) / 1000 for m in
            re.findall(r"([\d.]+) us\s+\|\s+\w+(?: \[\w+\])?\(\);", out)]


def oom_rep(kver, mem, image, workdir, accel, driver):
    """OOM notifier latency (ms), balloon standing still and inflating, on
    a guest of mem MiB."""
    vm = start_guest(kver, mem, image, workdir, accel, {"deflate-on-oom": "on"})
    ram, r = mem * MiB, {}
    try:
        g = vm.guest
        timed_balloon(vm, ram // 2)
        # memory the guest has, and 64 MiB more: the notifier gives it
        over = g.meminfo()["MemAvailable"] // 1024 + 64
        idle = oom_calls(g, driver, over)
        vm.qmp.balloon(ram)
        vm.qmp.wait_actual(ram, 120, settle=5)
        # the same, with an inflate to 3/4 asked for just before
        over = g.meminfo()["MemAvailable"] // 1024 + 64
        busy = oom_calls(g, driver, over, lambda: vm.qmp.balloon(ram // 4))
        r["oom_calls_idle"], r["oom_calls_inflating"] = len(idle), len(busy)
        if idle and busy:
            r["oom_idle_ms"] = statistics.median(idle)
            r["oom_inflating_ms"] = statistics.median(busy)
        no_problems(vm, driver, kver, allow_oom=True)
    finally:
        vm.stop()
    return r


class BenchContext:
    """What vbtest.hostmem.hugepages() asks of a case, for the bench."""

    @staticmethod
    def skip(msg):
        sys.exit(f"bench: {msg}")

    @staticmethod
    def log(msg):
        log(msg)


def hugetlb_rep(kver, mem, image, workdir, accel, driver):
    """MiB of host huge pages freed by ballooning half of a guest on
    hugetlbfs, against the MiB ballooned."""
    r = {}
    with hugepages(BenchContext, mem // 2):
        vm = start_guest(kver, mem, image, workdir, accel, qemu_args=hugetlb_args(mem))
        try:
            touch(vm)
            free0 = huge_free()
            timed_balloon(vm, mem * MiB // 2)
            ballooned = (mem * MiB - vm.qmp.query_balloon()) // MiB
            r["hugetlb_freed_mib"] = (huge_free() - free0) * 2
            r["hugetlb_ballooned_mib"] = ballooned
            timed_balloon(vm, mem * MiB)
            no_problems(vm, driver, kver)
        finally:
            vm.stop()
    return r


def start_guest(kver, mem, image, workdir, accel, device=None, qemu_args=()):
    """Boot a guest of mem MiB, load its driver, run both paths once."""
    initrd, name = image
    vm, failed = boot(kver, initrd, VMConfig.make(mem=mem, device=device, qemu_args=qemu_args),
                      workdir, accel)
    if vm is None:
        sys.exit(f"bench: {kver} guest did not boot:\n" + "\n".join(failed.console.tail(20)))
    vm.guest.check(f"insmod /lib/{name}.ko")
    vm.qmp.balloon(mem * MiB - 16 * MiB)        # warm up both paths
    vm.qmp.wait_actual(mem * MiB - 16 * MiB, 120)
    vm.qmp.balloon(mem * MiB)
    vm.qmp.wait_actual(mem * MiB, 120)
    return vm


def no_problems(vm, driver, kver, allow_oom=False):
    bad = console_problems(vm.console.text(), allow_oom)
    if bad:
        sys.exit(f"bench: {driver} on {kver}: console shows {bad[:3]}")


def against(args, kver, old, out, progs):
    """--against: the inflate and deflate rows only, the in-tree driver and
    two vballoon builds (this tree's and another, e.g. an older commit's) in
    rotation on 1 GiB guests, each touching its memory first."""
    kos = {"virtio_balloon": initramfs.KernelModules(kver).path("virtio_balloon"),
           "vballoon (other build)": Path(old),
           "vballoon": REPO / "build" / kver / "vballoon.ko"}
    names = list(kos)
    images = {d: initramfs.build_initramfs(kver, ko, out / f"against-{i}", progs)
              for i, (d, ko) in enumerate(kos.items())}
    accel = args.accel or probe_kvm(kver, images["vballoon"][0], out / "kvm-probe")
    mem, size = 1024 * MiB, 768 * MiB
    per = {d: {"inflate_mibs": [], "deflate_mibs": [], "inflate_cpu_s": []} for d in names}
    vms = {}
    try:
        for i, d in enumerate(names):
            vms[d] = start_guest(kver, 1024, images[d], out / f"{kver}-against-{i}", accel)
        for rep in range(args.reps):
            for d in names[rep % 3:] + names[:rep % 3]:
                vm = vms[d]
                touch(vm)
                c0 = guest_busy(vm.guest)
                t = timed_balloon(vm, mem - size)
                per[d]["inflate_cpu_s"].append(guest_busy(vm.guest) - c0)
                per[d]["inflate_mibs"].append(size / MiB / t)
                per[d]["deflate_mibs"].append(size / MiB / timed_balloon(vm, mem))
                log(f"{kver} {d} rep {rep}: inflate {per[d]['inflate_mibs'][-1]:.0f} MiB/s, "
                    f"deflate {per[d]['deflate_mibs'][-1]:.0f} MiB/s")
    finally:
        for vm in vms.values():
            vm.stop()
    res = {d: {k: summarize(v) for k, v in rows.items()} for d, rows in per.items()}
    lines = [f"# vballoon against {old}, {kver}, {accel}, 1024 MiB, {args.reps} reps", "",
             "| figure | " + " | ".join(names) + " | this / other build |",
             "|---|" + "---|" * (len(names) + 1)]
    for k, label in (("inflate_mibs", "inflate MiB/s"), ("deflate_mibs", "deflate MiB/s"),
                     ("inflate_cpu_s", "guest CPU inflate s")):
        cells = [f"{res[d][k]['median']:.2f} ({res[d][k]['min']:.2f}-{res[d][k]['max']:.2f})"
                 for d in names]
        ratio = res["vballoon"][k]["median"] / res["vballoon (other build)"][k]["median"]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    return {"kernel": kver, "against": str(old), "accel": accel, "reps": args.reps,
            "results": res}, "\n".join(lines) + "\n"


def summarize(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def run(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    floor_exe = build_floor(out)
    progs = initramfs.build_guest_programs(REPO / "build" / "selftests" / "bin")
    modules = dict(m.split("=", 1) for m in args.module or [])
    kernels = args.kernel or sorted(p.parent.name for p in (REPO / "build").glob("*/vballoon.ko")
                                    if Path(f"/boot/vmlinuz-{p.parent.name}").exists())
    sizes = [1024] if args.quick else [1024, 4096]
    reps = 1 if args.quick else args.reps
    results = {"date": datetime.date.today().isoformat(), "machine": machine(),
               "reps": reps, "runs": []}
    accel = None
    for kver in kernels:
        kos = {"virtio_balloon": initramfs.KernelModules(kver).path("virtio_balloon"),
               "vballoon": Path(modules.get(kver, REPO / "build" / kver / "vballoon.ko"))}
        images = {d: initramfs.build_initramfs(kver, ko, REPO / "build" / "selftests" /
                                               "initramfs", progs)
                  for d, ko in kos.items()}
        if accel is None:
            accel = args.accel or probe_kvm(kver, images["vballoon"][0], out / "kvm-probe")
            results["accel"] = accel
        for mem in sizes:
            vms = {}
            try:
                for d in DRIVERS:
                    vms[d] = start_guest(kver, mem, images[d], out / f"{kver}-{mem}-{d}", accel)
                per = {d: [] for d in DRIVERS}
                for i in range(reps):
                    order = DRIVERS if i % 2 == 0 else DRIVERS[::-1]
                    for d in order:
                        r = one_rep(vms[d], mem * MiB, floor_exe, scaling=mem >= 4096)
                        fresh = start_guest(kver, mem, images[d], out / f"{kver}-{mem}-{d}-thp",
                                            accel)
                        try:
                            r["thp_before_kb"], r["thp_after_kb"] = thp_half(fresh, mem * MiB)
                            no_problems(fresh, d, kver)
                        finally:
                            fresh.stop()
                        r.update(oom_rep(kver, mem, images[d], out / f"{kver}-{mem}-{d}-oom",
                                         accel, d))
                        if mem <= 1024:
                            r.update(hugetlb_rep(kver, mem, images[d],
                                                 out / f"{kver}-{mem}-{d}-hugetlb", accel, d))
                        per[d].append(r)
                        log(f"{kver} {mem} MiB {d} rep {i + 1}/{reps}: inflate "
                            f"{r['inflate_mibs']:.0f} MiB/s, deflate {r['deflate_mibs']:.0f} MiB/s, "
                            f"{r['x_floor']:.1f}x floor, rss {r['rss_per_mib']:.2f}, thp "
                            f"{r['thp_before_kb'] // 1024}->{r['thp_after_kb'] // 1024} MiB")
                for d in DRIVERS:
                    no_problems(vms[d], d, kver)
            finally:
                for vm in vms.values():
                    vm.stop()
            for d in DRIVERS:
                keys = {k for r in per[d] for k in r}
                results["runs"].append({"kernel": kver, "mem_mib": mem, "driver": d,
                                        "raw": per[d],
                                        **{k: summarize([r[k] for r in per[d] if k in r])
                                           for k in keys}})
            # what is done so far survives a run cut short
            (out / "results.partial.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    # HOST_QEMU's, which boot() runs
    qemu = subprocess.run([vbplatform.host().qemu("qemu-system-x86_64"), "--version"],
                          text=True, stdout=subprocess.PIPE).stdout.splitlines()[0]
    return {"cpu": cpu, "cores": os.cpu_count(), "host_kernel": platform.release(),
            "qemu": qemu}


ROWS = [("inflate MiB/s", "inflate_mibs", "{:.0f}"), ("deflate MiB/s", "deflate_mibs", "{:.0f}"),
        ("inflate / host floor", "x_floor", "{:.1f}x"), ("host floor s", "floor_s", "{:.2f}"),
        ("RSS released per MiB", "rss_per_mib", "{:.2f}"),
        ("host THP before (fragmented guest), MiB", "thp_before_kb", "{:.0f}", 1024),
        ("host THP after inflating half, MiB", "thp_after_kb", "{:.0f}", 1024),
        ("inflate s standing still (stalls)", "inflate_stall_s", "{:.2f}"),
        ("guest CPU inflate s", "inflate_cpu_s", "{:.2f}"),
        ("guest CPU deflate s", "deflate_cpu_s", "{:.2f}"),
        ("inflate 256 MiB s", "inflate_256_s", "{:.2f}"),
        ("inflate 1 GiB s", "inflate_1024_s", "{:.2f}"),
        ("inflate 3 GiB s", "inflate_3072_s", "{:.2f}"),
        ("OOM notifier ms, balloon still", "oom_idle_ms", "{:.2f}"),
        ("OOM notifier ms, balloon inflating", "oom_inflating_ms", "{:.2f}"),
        ("hugetlbfs host: MiB ballooned (half the guest)", "hugetlb_ballooned_mib", "{:.0f}"),
        ("hugetlbfs host: huge pages freed, MiB", "hugetlb_freed_mib", "{:.0f}"),
        ("inflate MiB/s, guest compacting", "inflate_compact_mibs", "{:.0f}"),
        ("balloon pages migrated during it", "compact_migrated", "{:.0f}")]


def markdown(res):
    m = res["machine"]
    lines = [f"# vballoon benchmark, {res['date']}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, host kernel {m['host_kernel']}, "
             f"{m['qemu']}, accel {res.get('accel')}; {res['reps']} repetitions, "
             "median (min-max).", "",
             "| kernel | guest | figure | in-tree virtio_balloon | vballoon | ratio |",
             "|---|---|---|---|---|---|"]
    runs = {(r["kernel"], r["mem_mib"], r["driver"]): r for r in res["runs"]}
    for (kver, mem) in sorted({(r["kernel"], r["mem_mib"]) for r in res["runs"]}):
        a, b = runs[(kver, mem, "virtio_balloon")], runs[(kver, mem, "vballoon")]
        for row in ROWS:
            label, key, fmt = row[:3]
            div = row[3] if len(row) > 3 else 1
            if key not in a or key not in b:
                continue

            def cell(r):
                s = r[key]
                return (f"{fmt.format(s['median'] / div)} ({fmt.format(s['min'] / div)}-"
                        f"{fmt.format(s['max'] / div)})")
            ratio = ""
            if a[key]["median"] and key != "inflate_stall_s":
                q = b[key]["median"] / a[key]["median"]
                if key.endswith(("_s", "_ms")) or key == "x_floor":
                    ratio = f"{1 / q:.2f}x faster" if q else ""
                else:
                    ratio = f"{q:.2f}x"
            lines.append(f"| {kver} | {mem} MiB | {label} | {cell(a)} | {cell(b)} | {ratio} |")
    return "\n".join(lines) + "\n"


def chart(res, out):
    data = out / "chart.dat"
    rows = [r for r in res["runs"] if r["driver"] == "vballoon"]
    with open(data, "w") as f:
        for r in rows:
            a = next(x for x in res["runs"] if x["kernel"] == r["kernel"] and
                     x["mem_mib"] == r["mem_mib"] and x["driver"] == "virtio_balloon")
            label = f"{r['kernel'].split('-')[0]}/{r['mem_mib'] // 1024}G"
            f.write(f"\"{label}\" {a['inflate_mibs']['median']:.1f} {r['inflate_mibs']['median']:.1f}"
                    f" {a['deflate_mibs']['median']:.1f} {r['deflate_mibs']['median']:.1f}\n")
    png = out / "results.png"
    script = f"""set terminal png size 900,500
set output '{png}'
set title 'Balloon throughput, MiB/s (median of {res["reps"]})'
set style data histograms
set style histogram cluster gap 1
set style fill solid border -1
set key below
set ylabel 'MiB/s'
set yrange [0:*]
plot '{data}' using 2:xtic(1) title 'inflate in-tree', '' using 3 title 'inflate vballoon', \\
     '' using 4 title 'deflate in-tree', '' using 5 title 'deflate vballoon'
"""
    return png if gnuplot(script, log) else None


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel", action="append", help="kernel (repeatable; default: all built)")
    p.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    p.add_argument("--module", action="append", metavar="KVER=PATH",
                   help="vballoon.ko to use for KVER (default build/KVER/vballoon.ko)")
    p.add_argument("--quick", action="store_true", help="1 repetition, 1 GiB guests only")
    p.add_argument("--against", metavar="KVER=PATH",
                   help="only inflate and deflate, this tree's vballoon against another "
                        "build of it (e.g. an older commit's) and the in-tree driver, "
                        "--reps rotations on 1 GiB guests; results in OUT/against.md")
    p.add_argument("--accel", choices=["kvm", "tcg"])
    p.add_argument("--out", default=str(REPO / "build" / "bench"))
    p.add_argument("--doc", action="store_true",
                   help="also write Documentation/benchmarks.md")
    args = p.parse_args()
    t0 = time.monotonic()
    if args.against:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        kver, old = args.against.split("=", 1)
        progs = initramfs.build_guest_programs(REPO / "build" / "selftests" / "bin")
        res, md = against(args, kver, old, out, progs)
        (out / "against.json").write_text(json.dumps(res, indent=1) + "\n")
        (out / "against.md").write_text(md)
        print(md)
        log(f"results in {out}/against.json, against.md; {time.monotonic() - t0:.0f} s")
        return 0
    res = run(args)
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    (out / "results.md").write_text(md)
    png = chart(res, out)
    print(md)
    log(f"results in {out}/results.json, results.md" + (", results.png" if png else "") +
        f"; {time.monotonic() - t0:.0f} s")
    if args.doc:
        doc = REPO / "Documentation" / "benchmarks.md"
        doc.write_text(md + "\nProduced by `make bench`: the header of selftests/bench.py "
                       "says how each figure is measured.\n")
        if png:
            shutil.copy(png, REPO / "Documentation" / "benchmarks.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
