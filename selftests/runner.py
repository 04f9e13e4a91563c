#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""vballoon selftests runner: boots QEMU guests and runs selftests/cases.

Output is TAP; the last line is "N passed, N failed[, N skipped]".
See selftests/README.md.
"""
import argparse
import os
import queue
import shutil
import sys
import threading
import time
import traceback
from collections import OrderedDict
from pathlib import Path

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).resolve().parent))

from vbtest import initramfs, platform, tap  # noqa: E402
from vbtest.case import CaseFailure, Context, Skip, discover  # noqa: E402
from vbtest.guest import CaseTimeout, GuestDead, GuestError  # noqa: E402
from vbtest.qmp import QMPError  # noqa: E402
from vbtest.vm import boot, console_problems, probe_kvm  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "selftests"
CLEANUP_BUDGET = 180
TAIL = 40


def parse_args():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel", action="append", metavar="KVER",
                   help="kernel to test (repeatable); default: every /boot/vmlinuz-KVER "
                        "with a module to test, and the arm64 kernels unpacked under "
                        "build/arm64/root (scripts/arm64.sh --guest)")
    p.add_argument("--driver", choices=["vballoon", "virtio_balloon"], default="vballoon",
                   help="module under test; virtio_balloon = the kernel's in-tree one")
    p.add_argument("--module", metavar="PATH",
                   help="module file to test (default build/KVER/vballoon.ko)")
    p.add_argument("-k", dest="filter", action="append", metavar="SUBSTR",
                   help="only cases whose 'kver/name' contains SUBSTR (repeatable: any)")
    p.add_argument("--core", action="store_true",
                   help="only the core cases (@case(core=True)), except on the --full kernels")
    p.add_argument("--full", action="append", metavar="KVER", default=[],
                   help="with --core: a kernel that runs every case (repeatable)")
    p.add_argument("--qemu", action="append", metavar="VERSION",
                   help="QEMU host to run every case on (repeatable): 7.2 (this machine's), "
                        "10.0 (Debian 13's, scripts/hosts.sh); default: HOST_QEMU, or "
                        "this machine's")
    p.add_argument("--qemu-core", action="append", metavar="VERSION", default=[],
                   help="a QEMU host that runs only the core cases (repeatable; make "
                        "check passes the hosts besides this machine's)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--cases", metavar="DIR", default=None,
                   help="directory of test_*.py case files (default selftests/cases)")
    p.add_argument("--keep", action="store_true", help="keep the run's work directory")
    p.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1,
                   help="guests running at once (default: number of CPUs)")
    p.add_argument("--accel", choices=["kvm", "tcg"],
                   help="skip the KVM probe and use this accelerator")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print every case's log lines and timings")
    return p.parse_args()


def find_hosts(args):
    """[(Host, core only)] to run on: --qemu's (or HOST_QEMU's), then
    --qemu-core's, which run the core cases only."""
    full = [platform.host(n) for n in args.qemu or [None]]
    core = [platform.host(n) for n in args.qemu_core]
    return [(h, False) for h in dict.fromkeys(full)] + \
        [(h, True) for h in dict.fromkeys(core) if h not in full]


def case_name(kver, qemu, spec):
    """A case's name in TAP: kver/name on this machine's QEMU,
    kver@qemu-VERSION/name on another."""
    return f"{kver}/{spec.name}" if qemu.system else f"{kver}@qemu-{qemu.name}/{spec.name}"


def find_kernels(args, hosts):
    """[(kver, module path)] to test."""
    explicit = bool(args.kernel)
    kvers = args.kernel or [k for k in platform.all_kernels()
                            if any(platform.available(platform.platform_of(k), h)
                                   for h, _ in hosts)]
    vermagic = None
    if args.module:
        info = initramfs.modinfo(initramfs.read_module(args.module))
        vermagic = info.get("vermagic", "").split(" ")[0]
    out = []
    for kver in kvers:
        plat = platform.platform_of(kver)
        if not plat.kernel(kver).exists():
            sys.exit(f"runner: no {plat.kernel(kver)}")
        if args.module:
            if vermagic != kver:
                if explicit:
                    sys.exit(f"runner: {args.module} is built for {vermagic}, not {kver}")
                continue
            ko = Path(args.module)
        elif args.driver == "virtio_balloon":
            ko = initramfs.KernelModules(kver).path("virtio_balloon")
        else:
            ko = REPO / "build" / kver / "vballoon.ko"
        if ko is None or not ko.exists():
            if explicit:
                sys.exit(f"runner: no {args.driver} module for {kver} ({ko}); build it first")
            continue
        out.append((kver, ko))
    if not out:
        sys.exit(f"runner: no kernel to test with {args.module or args.driver} "
                 "(build the module first: make)")
    return out


class Reporter(tap.Tap):
    """TAP output of the cases, safe to call from the worker threads."""

    def __init__(self, total, verbose):
        super().__init__(verbose)
        self.boots = []
        print(f"1..{total}", flush=True)

    def result(self, name, status, why=(), notes=(), tail=(), secs=None, extra=()):
        with self.lock:
            self.line(name, status, why, secs)
            lines = []
            if status == "fail":
                lines += list(why) + list(extra)
            if status == "fail" or self.verbose:
                lines += list(notes)
            if status == "fail" and tail:
                lines += [f"last {len(tail)} lines of the guest console:"]
                lines += ["  " + l for l in tail]
            if secs is not None and self.verbose:
                lines.append(f"time {secs:.1f} s")
            self.comment(lines)

    def boot(self, kver, secs):
        with self.lock:
            self.boots.append((kver, secs))

    def summary(self, wall, total):
        if self.n < total:
            print(f"# {total - self.n} cases did not report (runner error)")
            self.counts["failed"] += total - self.n
        for kver in sorted({k for k, _ in self.boots}):
            t = sorted(s for k, s in self.boots if k == kver)
            print(f"# boots {kver}: {len(t)}, median {t[len(t) // 2]:.1f} s")
        return self.totals(wall, 3)


class Runner:
    def __init__(self, args, rundir, reporter, accel):
        self.args, self.rundir, self.rep, self.accel = args, rundir, reporter, accel
        self.active = set()
        self.lock = threading.Lock()
        self.failed = False

    def run_group(self, gid, kver, qemu, initrd, driver, specs):
        vm, boot_fail, boots = None, None, 0
        label = kver if qemu.system else f"{kver}@qemu-{qemu.name}"
        for spec in specs:
            name = case_name(kver, qemu, spec)
            if vm is None and boot_fail is None:
                boots += 1
                vm, boot_fail = boot(kver, initrd, spec.config,
                                     self.rundir / f"{label}-g{gid:02d}-b{boots}",
                                     self.accel_for(kver), log=self.boot_log, host=qemu)
                if vm:
                    self.rep.boot(label, vm.boot_time)
                    with self.lock:
                        self.active.add(vm)
            if boot_fail is not None:
                self.failed = True
                self.rep.result(name, "fail",
                                [f"boot failed twice ({boot_fail.config.describe()}): "
                                 "no agent within the timeout",
                                 f"logs: {boot_fail.workdir}",
                                 f"qemu.log: {boot_fail.qemu_log().strip()[-500:]}"],
                                tail=boot_fail.console.tail(TAIL))
                continue
            keep = self.run_case(vm, kver, driver, spec, name)
            if not keep:
                self.stop(vm)
                vm = None
        if vm:
            self.stop(vm)

    def accel_for(self, kver):
        """KVM only for guests of the host's own architecture."""
        return self.accel if platform.native(kver) else "tcg"

    def boot_log(self, msg):
        self.failed = True      # keep the logs of a flaky boot
        self.rep.diag(msg)

    def stop(self, vm):
        vm.stop()
        with self.lock:
            self.active.discard(vm)

    def run_case(self, vm, kver, driver, spec, name):
        """Run one case; returns False if its guest must not be reused."""
        t = Context(spec, vm, kver, driver, self.args.verbose)
        g = vm.guest
        mark = vm.console.mark()
        t0 = time.monotonic()
        g.deadline = t0 + spec.timeout
        status, why = "ok", []
        try:
            spec.func(t)
            t.check_counters()
        except Skip as e:
            status, why = "skip", [str(e)]
        except (CaseFailure, GuestError, QMPError, CaseTimeout, GuestDead, TimeoutError) as e:
            status, why = "fail", [f"{type(e).__name__}: {e}"]
        except Exception:
            status, why = "fail", traceback.format_exc().rstrip().splitlines()
        secs = time.monotonic() - t0
        if status == "ok" and secs > spec.timeout:
            status, why = "fail", [f"case took {secs:.0f} s, budget {spec.timeout} s"]

        if vm.alive() and not g.dead and not t.ended:
            g.deadline = time.monotonic() + CLEANUP_BUDGET
            try:
                t.reset()
            except Exception as e:
                status = "fail"
                why.append(f"cleanup: {type(e).__name__}: {e}")
        g.deadline = None
        if not vm.alive() and status != "skip" and not (t.ended and vm.proc.returncode == 0):
            # a case that skips has recognised why QEMU died (a QEMU bug)
            status = "fail"
            why.append(f"QEMU exited (status {vm.proc.returncode}); "
                       f"qemu.log: {vm.qemu_log().strip()[-500:]}")
        problems = console_problems(vm.console.text(mark), spec.allow_oom)
        if problems:
            status = "fail"
            why.append("guest console shows:")
            why += ["  " + p for p in problems[:10]]
        extra = []
        if status == "fail":
            self.failed = True
            extra.append(f"guest [{spec.config.describe()}], logs: {vm.workdir}")
        self.rep.result(name, status, why, t.notes,
                        vm.console.tail(TAIL) if status == "fail" else (), secs, extra)
        return status != "fail" and vm.alive() and not g.dead and not t.ended

    def stop_all(self):
        with self.lock:
            vms = list(self.active)
        for vm in vms:
            vm.stop()


def new_rundir(name):
    """A run directory of its own: two runners started in the same second
    shared one, and the first to finish removed it under the other."""
    BUILD.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        path = BUILD / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise SystemExit(f"no free run directory for {name} under {BUILD}")


def main():
    args = parse_args()
    specs = discover(args.cases) if args.cases else discover()
    hosts = find_hosts(args)
    kernels = find_kernels(args, hosts)
    items = [(kver, h, s) for h, core_only in hosts for kver, _ in kernels for s in specs
             if platform.runs_on(kver, s.arches) and
             h.has(platform.platform_of(kver).qemu) and
             (not args.core or s.core or kver in args.full) and
             (not core_only or s.core) and
             (not args.filter or any(f in case_name(kver, h, s) for f in args.filter))]
    if args.list:
        for kver, h, s in items:
            print(f"{case_name(kver, h, s)}  [{s.config.describe()}]")
        return 0

    t_start = time.monotonic()
    images = {}
    for kver, ko in kernels:
        if not any(k == kver for k, _, _ in items):
            continue
        plat = platform.platform_of(kver)
        progs = initramfs.build_guest_programs(BUILD / f"bin-{plat.name}", plat)
        images[kver] = initramfs.build_initramfs(kver, ko, BUILD / "initramfs", progs)

    rundir = new_rundir(time.strftime("run-%Y%m%d-%H%M%S"))
    accel = args.accel
    native = [k for k in images if platform.native(k)]
    if accel is None:
        accel = probe_kvm(native[0], images[native[0]][0], rundir / "kvm-probe",
                          host=hosts[0][0]) if native else "tcg"
    rep = Reporter(len(items), args.verbose)
    print(f"# accel {accel}, driver {', '.join(sorted({d for _, d in images.values()}))}, "
          f"run dir {rundir}", flush=True)
    for h, core_only in hosts:
        print(f"# {h}{': core cases only' if core_only else ''}", flush=True)

    # Group cases that can share a guest, keeping the files' order inside a group.
    groups = OrderedDict()
    for kver, h, s in items:
        groups.setdefault((h,) + s.group_key(kver), []).append(s)
    # Biggest groups first, kernels interleaved, so both CPUs stay busy.
    order = sorted(enumerate(groups.items()),
                   key=lambda x: (-len(x[1][1]), x[0]))
    work = queue.Queue()
    for gid, ((h, kver, _, _), gspecs) in order:
        work.put((gid, kver, h, gspecs))

    runner = Runner(args, rundir, rep, accel)

    def worker():
        while True:
            try:
                gid, kver, h, gspecs = work.get_nowait()
            except queue.Empty:
                return
            initrd, driver = images[kver]
            try:
                runner.run_group(gid, kver, h, initrd, driver, gspecs)
            except Exception:
                runner.failed = True
                traceback.print_exc()

    threads = [threading.Thread(target=worker, daemon=True)
               for _ in range(max(1, min(args.jobs, len(groups))))]
    try:
        for th in threads:
            th.start()
        for th in threads:
            while th.is_alive():
                th.join(0.5)
    except KeyboardInterrupt:
        print("# interrupted", flush=True)
        runner.stop_all()
        return 130

    rep.summary(time.monotonic() - t_start, len(items))
    if not args.keep and not runner.failed:
        shutil.rmtree(rundir, ignore_errors=True)
    return 1 if rep.counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
