# SPDX-License-Identifier: GPL-2.0
"""make check-debug only: kmemleak and fault injection on the debug kernel
(scripts/debug-kernel.sh: KASAN, lockdep, DEBUG_VM, kmemleak, failslab,
fail_page_alloc). The console watchdog fails any KASAN, lockdep, DEBUG_VM
or sleeping-in-atomic report as on every case."""
import time

from vbtest import DEBUG_ONLY, MiB, case
from vbtest.migration import migrate

KMEMLEAK = "/sys/kernel/debug/kmemleak"
FAULTS = ("/sys/kernel/debug/fail_page_alloc", "/sys/kernel/debug/failslab")
HINT_REPORT = dict(device={"free-page-hint": "on", "iothread": "io0",
                           "free-page-reporting": "on"},
                   qemu_args=["-object", "iothread,id=io0"])


def big_target(t):
    """A target that leaves the guest 128 MiB of what it has available
    (KASAN's shadow takes an eighth of the RAM; the floor stops a fixed
    figure short)."""
    return t.mem - (t.g.meminfo()["MemAvailable"] // 1024 - 128) * MiB


def leaks(t):
    """kmemleak's unreferenced objects after two scans (an object must be
    seen unreferenced in a scan at least 5 s after it was allocated)."""
    for _ in range(2):
        time.sleep(6)
        t.g.check(f"echo scan > {KMEMLEAK}", timeout=240)
    return t.g.check(f"cat {KMEMLEAK}")


@case(arches=DEBUG_ONLY, timeout=900, fresh=True)
def case_kmemleak(t):
    """Load, a full inflate, deflate, unload: kmemleak finds nothing new."""
    t.check(t.g.exists(KMEMLEAK), "the kernel has no kmemleak")
    t.g.check(f"echo scan > {KMEMLEAK}", timeout=240)
    t.g.check(f"echo clear > {KMEMLEAK}")
    mi0 = t.g.meminfo()
    t.load_driver()
    t.qmp.qom_set(t.balloon_qom, "guest-stats-polling-interval", 1)
    t.balloon(big_target(t), timeout=600)
    t.balloon(t.mem, timeout=600)
    t.qmp.qom_set(t.balloon_qom, "guest-stats-polling-interval", 0)
    t.unload_driver()
    t.eq(t.g.meminfo()["MemTotal"], mi0["MemTotal"], "MemTotal (kB) after unload")
    found = leaks(t)
    t.check(not found.strip(), f"kmemleak reports:\n{found[:3000]}")
    t.log("kmemleak: nothing unreferenced after load, inflate, deflate, unload")


def module_range(t, name):
    """(start, end) of the module's memory, from /proc/modules."""
    for line in t.g.read("/proc/modules").splitlines():
        f = line.split()
        if f[0] == name:
            start = int(next(x for x in f if x.startswith("0x")), 16)
            t.check(start, "/proc/modules shows no address (kptr_restrict?)")
            return start, start + int(f[1])
    t.fail(f"{name} not in /proc/modules")


def inject(t, start, end, probability):
    """Fail page and slab allocations whose call stack passes through
    [start, end) (the driver), with probability percent, silently."""
    t.g.check(f"echo N > {FAULTS[0]}/ignore-gfp-highmem; "
              f"echo 0 > {FAULTS[0]}/min-order")
    # the filter first, the probability last: nothing else may fail
    for d in FAULTS:
        for k, v in (("verbose", 0), ("task-filter", "N"), ("stacktrace-depth", 32),
                     ("require-start", start), ("require-end", end),
                     ("ignore-gfp-wait", "N"), ("interval", 1), ("space", 0),
                     ("times", -1), ("probability", probability)):
            t.g.check(f"echo {v} > {d}/{k}")


def stop_injecting(t):
    for d in FAULTS:
        t.g.check(f"echo 0 > {d}/probability; echo 0 > {d}/times")


@case(arches=DEBUG_ONLY, timeout=1200, fresh=True, **HINT_REPORT)
def case_fault_injection(t):
    """fail_page_alloc and failslab on the driver's allocations during
    inflate, hinting and reporting: it backs off and recovers (the target is
    reached once injection stops), counts its failures, loses no page (vmstat
    and MemTotal), and kmemleak finds nothing after unload."""
    for d in FAULTS:
        t.check(t.g.exists(d), f"the kernel has no {d}")
    t.g.check(f"echo scan > {KMEMLEAK}", timeout=240)
    t.g.check(f"echo clear > {KMEMLEAK}")
    mi0, v0 = t.g.meminfo(), t.g.vmstat()
    t.load_driver()
    start, end = module_range(t, t.driver)
    t.log(f"injecting into {start:#x}-{end:#x}")
    inject(t, start, end, 20)

    # inflate under injection: failures counted, the balloon moves anyway
    # or waits; no busy loop, no warning
    target = big_target(t)
    t.qmp.balloon(target)
    time.sleep(30)
    a = t.bsys()
    t.log(f"after 30 s of injected failures: balloon {a['actual_pages'] * t.page // MiB} "
          f"MiB, alloc_failures {a['alloc_failures']}, refusals {a['refusals']}")
    t.check(a["alloc_failures"] >= 1, "no allocation failure counted under injection")

    # deflate, then hinting and reporting, all under injection
    t.balloon(t.mem, timeout=600)
    t.g.check("mount -o remount,size=90% /tmp")
    t.g.check("tmpfill fill /tmp/dirty 200 1024 && tmpfill clear /tmp/dirty", timeout=300)
    migrate(t.qmp, "exec:cat > /dev/null", 4 << 30)
    t.qmp.cmd("cont")
    b = t.bsys()
    t.log(f"under injection: {b['hint_rounds']} hint rounds, {b['hinted_pages']} pages "
          f"hinted, {b['reports']} reports")
    t.check(b["hint_rounds"] >= 1, "no hint round under injection")

    # recovery
    stop_injecting(t)
    t.balloon(target, timeout=600)
    t.balloon(t.mem, timeout=600)
    t.unload_driver()
    v = t.g.vmstat()
    t.eq(v["balloon_inflate"] - v0["balloon_inflate"],
         v["balloon_deflate"] - v0["balloon_deflate"], "pages inflated vs deflated")
    t.eq(t.g.meminfo()["MemTotal"], mi0["MemTotal"], "MemTotal (kB) after unload")
    found = leaks(t)
    t.check(not found.strip(), f"kmemleak reports:\n{found[:3000]}")
