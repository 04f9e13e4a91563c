#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""make run: boot a throwaway guest, load vballoon, balloon it live.

Prints the host's view (query-balloon, QEMU's RSS) beside the guest's
(MemTotal, MemAvailable, /proc/vmstat balloon counters) at every step, and
stops by itself. Uses the newest kernel with a built module unless --kernel
says otherwise.
"""
import argparse
import shutil
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))

from vbtest import initramfs  # noqa: E402
from vbtest.vm import VMConfig, boot, console_problems, probe_kvm  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "selftests"
MiB = 1 << 20


def newest_kernel():
    built = sorted(p.parent.name for p in (REPO / "build").glob("*/vballoon.ko")
                   if Path(f"/boot/vmlinuz-{p.parent.name}").exists())
    if not built:
        sys.exit("run: no built module; run 'make all-kernels' first")
    return built[-1]


class Demo:
    def __init__(self, vm, mem):
        self.vm, self.g, self.qmp, self.mem = vm, vm.guest, vm.qmp, mem
        self.t0 = time.monotonic()
        print(f"{'time':>6}  {'step':<28}| {'host: actual':>12} {'QEMU RSS':>9} "
              f"| {'guest: MemTotal':>15} {'MemAvail':>9} {'inflated':>9} {'deflated':>9}")

    def row(self, step):
        actual = self.qmp.query_balloon() // MiB
        rss = self.vm.rss()["VmRSS"] // 1024
        mi = self.g.meminfo()
        vs = self.g.vmstat()
        print(f"{time.monotonic() - self.t0:5.1f}s  {step:<28}| {actual:>9} MiB "
              f"{rss:>5} MiB | {mi['MemTotal'] // 1024:>11} MiB "
              f"{mi['MemAvailable'] // 1024:>5} MiB {vs.get('balloon_inflate', 0):>9} "
              f"{vs.get('balloon_deflate', 0):>9}", flush=True)

    def balloon(self, target_mib, step):
        self.qmp.balloon(target_mib * MiB)
        t = time.monotonic()
        self.qmp.wait_actual(target_mib * MiB, 120)
        self.row(f"{step} ({time.monotonic() - t:.1f} s)")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel", help="guest kernel (default: newest with a built module)")
    p.add_argument("--mem", type=int, default=1024, help="guest RAM in MiB (default 1024)")
    args = p.parse_args()
    kver = args.kernel or newest_kernel()
    ko = REPO / "build" / kver / "vballoon.ko"
    if not ko.exists():
        sys.exit(f"run: no {ko}; run 'make all-kernels' first")

    progs = initramfs.build_guest_programs(BUILD / "bin")
    initrd, driver = initramfs.build_initramfs(kver, ko, BUILD / "initramfs", progs)
    work = BUILD / time.strftime("demo-%Y%m%d-%H%M%S")
    accel = probe_kvm(kver, initrd, work / "kvm-probe")
    print(f"booting a {args.mem} MiB {kver} guest ({accel}) ...", flush=True)
    config = VMConfig.make(mem=args.mem)
    vm, failed = boot(kver, initrd, config, work / "guest", accel)
    if vm is None:
        print("\n".join(failed.console.tail(30)))
        sys.exit("run: the guest did not boot")
    ok = False
    try:
        g = vm.guest
        d = Demo(vm, args.mem)
        d.row("booted, no driver")
        g.check(f"insmod /lib/{driver}.ko")
        dev = g.sysfs_balloon_dev()
        print(f"        vballoon {g.read('/sys/module/vballoon/version').strip()} "
              f"drives {dev}", flush=True)
        d.row("vballoon loaded")
        hog = g.meminfo()["MemAvailable"] // 1024 - 64
        g.check(f"memhog {hog}", timeout=180)
        d.row(f"guest touched {hog} MiB")
        quarter = args.mem // 4
        d.balloon(quarter, f"inflate to {quarter} MiB")
        d.balloon(args.mem // 2, f"deflate to {args.mem // 2} MiB")
        d.balloon(quarter, f"inflate to {quarter} MiB")
        d.balloon(args.mem, f"deflate to {args.mem} MiB")
        d.balloon(quarter, f"inflate to {quarter} MiB")
        g.check("rmmod vballoon", timeout=120)
        time.sleep(0.5)
        d.row("rmmod with a full balloon")
        problems = console_problems(vm.console.text())
        if problems:
            print("guest console shows:\n  " + "\n  ".join(problems))
        else:
            ok = True
            print("done: no kernel warnings on the guest console")
    finally:
        vm.stop()
    if ok:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"logs kept in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
