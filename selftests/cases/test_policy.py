# SPDX-License-Identifier: GPL-2.0
"""The guest's say: reserve, ceiling, stats-only mode, validated inputs."""
import re
import time

from vbtest import MiB, case
from vbtest.stats import compare_stats, wait_stats

PAGE = 4096


def only_vballoon(t):
    if t.driver != "vballoon":
        t.skip("vballoon's own policy")


def attr(t, dev, name):
    return f"{dev}/balloon/{name}"


@case(timeout=400)
def case_reserve(t):
    """reserve_mib=400: the host asks for more, the balloon stops with
    MemAvailable above 400 MiB and says so; when the guest's own tmpfs use
    then eats into the reserve, the balloon gives pages back, and actual
    tells the host."""
    only_vballoon(t)
    dev = t.load_driver("reserve_mib=400")
    t.eq(int(t.g.read(attr(t, dev, "reserve_mib"))), 400, "reserve_mib")
    t.eq(int(t.g.read(attr(t, dev, "floor_mib"))), 400, "floor_mib")
    mark = t.vm.console.mark()
    t.qmp.balloon(64 * MiB)
    actual = t.qmp.wait_actual(64 * MiB, 120, settle=4)
    a = t.bsys()
    avail = t.g.meminfo()["MemAvailable"] // 1024
    t.log(f"host asked 64 MiB: guest kept {actual // MiB} MiB, MemAvailable {avail} MiB")
    t.check(avail >= 400, f"MemAvailable {avail} MiB under the 400 MiB reserve")
    t.check(actual > 400 * MiB, f"the balloon left the guest only {actual // MiB} MiB")
    t.eq(a["actual_bytes"], t.mem - actual, "sysfs actual_bytes vs query-balloon")
    t.eq(a["refusals"], 1, "refusals for the one target")
    t.check(re.search(r"not reached.*keeps 409600 KiB available", t.vm.console.text(mark)),
            "no message about the reserve on the console")

    # the guest's own use grows past the floor: the balloon gives back
    held0, inflated0 = a["actual_pages"], a["inflated_pages"]
    avail0 = avail
    t.g.check("tmpfill fill /tmp/own 200 1024", timeout=120)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if t.g.meminfo()["MemAvailable"] // 1024 >= 400:
            break
        time.sleep(0.5)
    a = t.bsys()
    avail = t.g.meminfo()["MemAvailable"] // 1024
    t.log(f"after 200 MiB in tmpfs: balloon {a['actual_pages'] * PAGE // MiB} MiB, "
          f"MemAvailable {avail} MiB, gave back {a['reserve_deflated_pages']} pages")
    t.check(avail >= 400, f"MemAvailable {avail} MiB stayed under the reserve")
    # tmpfs took 200 MiB of the MiB that were available over the reserve;
    # the balloon must give back the rest (less 16 MiB of page cache the
    # guest may drop instead)
    need = max(400 - (avail0 - 200) - 16, 64)
    t.check(a["reserve_deflated_pages"] >= need * MiB // PAGE,
            f"reserve_deflated_pages {a['reserve_deflated_pages']}, "
            f"expected at least {need} MiB")
    # what it gave back, less what it took again once above the floor (a
    # KASAN kernel's MemAvailable swings enough for that: 30 MiB was seen)
    t.eq(held0 - a["actual_pages"],
         a["reserve_deflated_pages"] - (a["inflated_pages"] - inflated0),
         "pages the balloon shrank by vs reserve_deflated_pages less re-inflated")
    t.wait_actual(t.mem - a["actual_bytes"], 10)
    t.eq(t.qmp.query_balloon(), t.mem - a["actual_bytes"], "host's actual after giving back")

    # lowering the reserve lets the balloon take more again
    t.g.check(f"echo 0 > {attr(t, dev, 'reserve_mib')}")
    t.check(int(t.g.read(attr(t, dev, "floor_mib"))) < 400, "floor_mib did not drop")
    t.check(t.qmp.wait_actual(64 * MiB, 60, settle=3) < t.mem - a["actual_bytes"],
            "the balloon did not grow once the reserve was lowered")
    t.g.check("tmpfill clear /tmp/own", timeout=60)
    t.balloon(t.mem)


@case()
def case_ceiling(t):
    """max_balloon_pct caps the balloon at a share of guest memory (MemTotal
    with the balloon's pages counted back in); changing it through sysfs
    moves the balloon up to the new cap, or gives pages back."""
    only_vballoon(t)
    total = t.g.meminfo()["MemTotal"] * 1024 // PAGE
    dev = t.load_driver("max_balloon_pct=25")

    def cap(pct):
        return total * pct // 100 * PAGE

    t.qmp.balloon(256 * MiB)
    actual = t.qmp.wait_actual(256 * MiB, 60, settle=3)
    t.eq(t.mem - actual, cap(25), "balloon with a 25% ceiling")
    t.eq(t.bsys("refusals"), "1", "refusals")
    t.g.check(f"echo 50 > {attr(t, dev, 'max_balloon_pct')}")
    t.eq(t.mem - t.qmp.wait_actual(256 * MiB, 60, settle=2), cap(50), "balloon with 50%")
    t.g.check(f"echo 10 > {attr(t, dev, 'max_balloon_pct')}")
    held = t.mem - t.qmp.wait_actual(t.mem - cap(10), 60, settle=2)
    t.eq(held, cap(10), "balloon after lowering the ceiling to 10%")
    t.eq(int(t.bsys("actual_bytes")), held, "sysfs actual_bytes")
    t.g.check(f"echo 100 > {attr(t, dev, 'max_balloon_pct')}")
    t.balloon(t.keep(256))
    t.balloon(t.mem)


@case()
def case_stats_only(t):
    """inflate=0: the host still gets statistics, the balloon never
    inflates; switching inflate on through sysfs inflates, off deflates."""
    only_vballoon(t)
    dev = t.load_driver("inflate=0")
    v0 = t.g.vmstat()
    t.qmp.qom_set(t.balloon_qom, "guest-stats-polling-interval", 1)
    st = wait_stats(t, 0)
    t.qmp.balloon(t.keep(512))
    time.sleep(3)
    st = wait_stats(t, st["last-update"])
    compare_stats(t, st, "stats-only, target 512 MiB")
    t.eq(t.qmp.query_balloon(), t.mem, "host's actual in stats-only mode")
    t.eq(t.g.vmstat()["balloon_inflate"], v0["balloon_inflate"], "balloon_inflate")
    a = t.bsys()
    t.eq(a["inflated_pages"], 0, "inflated_pages")
    t.eq(a["refusals"], 1, "refusals")
    t.check(a["stats_requests"] >= 2, f"stats_requests {a['stats_requests']}")
    t.g.check(f"echo 1 > {attr(t, dev, 'inflate')}")
    t.wait_actual(t.keep(512), 60)
    t.g.check(f"echo 0 > {attr(t, dev, 'inflate')}")
    t.eq(t.wait_actual(t.mem, 60), t.mem, "actual after inflate=0 with a full balloon")
    t.eq(t.g.meminfo()["MemTotal"] > 900 * 1024, True, "MemTotal back")
    t.qmp.qom_set(t.balloon_qom, "guest-stats-polling-interval", 0)


BAD_PARAMS = ["reserve_mib=999999", "reserve_mib=-1", "reserve_mib=ten",
              "max_balloon_pct=0", "max_balloon_pct=101", "inflate=maybe",
              "batch=0", "batch=513", "oom_pages=0", "report_order=99"]


@case()
def case_bad_input(t):
    """Out-of-range parameters fail the load with a message naming the
    parameter; bad sysfs writes return EINVAL and change nothing."""
    only_vballoon(t)
    for p in BAD_PARAMS:
        name = p.split("=")[0]
        mark = t.vm.console.mark()
        rc, out = t.g.run(f"insmod /lib/vballoon.ko {p}")
        t.check(rc != 0, f"insmod with {p} succeeded")
        t.check("vballoon" not in t.g.modules(), f"module loaded with {p}")
        time.sleep(0.2)
        con = t.vm.console.text(mark) + t.g.check("dmesg | tail -5")
        t.check(name in con, f"no message naming {name} for {p}: {con[-300:]!r}")
    t.eq(t.qmp.query_balloon(), t.mem, "host's actual after the failed loads")

    dev = t.load_driver()
    t.balloon(t.keep(768))
    before = t.bsys()
    for name, val in (("reserve_mib", "999999"), ("reserve_mib", "x"),
                      ("reserve_mib", "-5"), ("max_balloon_pct", "0"),
                      ("max_balloon_pct", "101"), ("max_balloon_pct", ""),
                      ("inflate", "2"), ("inflate", "maybe")):
        rc, out = t.g.run(f"echo '{val}' > {attr(t, dev, name)}")
        t.check(rc != 0 and "Invalid argument" in out,
                f"writing {val!r} to {name}: rc {rc} {out!r}")
    after = t.bsys()
    for name in ("reserve_mib", "max_balloon_pct", "inflate", "actual_pages", "floor_mib"):
        t.eq(after[name], before[name], f"{name} after the bad writes")
    t.eq(t.qmp.query_balloon(), t.keep(768), "host's actual after the bad writes")
    t.balloon(t.mem)


@case()
def case_defaults(t):
    """The defaults: no reserve beyond the automatic floor (1/32 of memory,
    at least 32 MiB), no ceiling, inflating on; the balloon follows targets
    as the in-tree driver does."""
    only_vballoon(t)
    t.load_driver()
    a = t.bsys()
    t.eq(a["reserve_mib"], 0, "reserve_mib")
    t.eq(a["max_balloon_pct"], 100, "max_balloon_pct")
    t.eq(a["inflate"], 1, "inflate")
    total_mib = t.g.meminfo()["MemTotal"] // 1024
    t.eq(a["floor_mib"], max(32, total_mib // 32), "floor_mib")
    for p in ("reserve_mib", "max_balloon_pct", "inflate"):
        t.eq(t.g.read(f"/sys/module/vballoon/parameters/{p}").strip(),
             {"reserve_mib": "0", "max_balloon_pct": "100", "inflate": "Y"}[p],
             f"module parameter {p}")
    t.balloon(t.keep(256))
    t.eq(t.bsys("refusals"), "0", "refusals")
    t.balloon(t.mem)


def kernel_at_least(t, major, minor):
    return tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", t.kver).groups()) >= (major, minor)


@case(timeout=300)
def case_pcp_first(t):
    """Since 6.7 a CPU that freed much keeps the pages on its per-CPU lists
    for seconds, where MemAvailable does not count them. A target 12 MiB
    past the floor's stop line, right after a task exited on each CPU, is
    reached without a refusal: the balloon takes those pages first
    (pcp_pages), at most half the floor, and the guest keeps its floor."""
    only_vballoon(t)
    if not kernel_at_least(t, 6, 7):
        t.skip("before 6.7 the per-CPU lists have a fixed size")
    dev = t.load_driver()
    name = dev.rsplit("/", 1)[1]
    floor_mib = int(t.g.read(attr(t, dev, "floor_mib")))
    # close to the floor first, so the last step is short
    avail = t.g.meminfo()["MemAvailable"] * 1024
    t.balloon(t.mem - (avail - (floor_mib + 160) * MiB))
    cpus = t.g.last_cpu() + 1
    a0 = t.bsys()
    # one command, so the lists have little time to shrink before the target
    hogs = " && ".join(f"taskset -c {cpu} memhog 96" for cpu in range(cpus))
    out = t.g.check(f"{hogs} && cat /sys/kernel/debug/vballoon/{name}", timeout=120)
    t.check(out.count("memhog: touched 96 MiB") == cpus, f"memhog on {cpus} CPUs:\n{out}")
    f = dict(re.findall(r"^(\w+): (.*)$", out, re.M))
    floor, slack = (int(x) for x in re.match(r"(\d+) .*slack (\d+)", f["floor"]).groups())
    room = int(f["mem_available"]) - int(f["watermark_boost"]) - floor - slack
    t.log(f"after memhog on {cpus} CPUs: room over the stop line {room * t.page // MiB} MiB, "
          f"surplus {f['pcp_surplus']}")
    t.check(room > 0, f"no room over the stop line: {f}")
    over = 12 * MiB
    target = t.qmp.query_balloon() - room * t.page - over
    t.balloon(target, timeout=60)
    a = t.bsys()
    mi = t.g.meminfo()
    taken = (a["pcp_pages"] - a0["pcp_pages"]) * t.page
    t.log(f"reached {target // MiB} MiB: {taken // MiB} MiB from per-CPU lists, "
          f"MemAvailable {mi['MemAvailable'] // 1024} MiB")
    t.eq(t.qmp.query_balloon(), target, "host's actual")
    t.eq(a["refusals"], a0["refusals"], "refusals (the balloon never stopped short)")
    t.check(taken > 0, "no page came from the per-CPU lists")
    t.check(taken <= floor_mib * MiB // 2, f"{taken // MiB} MiB from the per-CPU lists, "
            f"more than half the {floor_mib} MiB floor")
    t.check(mi["MemAvailable"] >= floor_mib * 1024,
            f"MemAvailable {mi['MemAvailable'] // 1024} MiB under the {floor_mib} MiB floor")
    t.check_counters()
    t.balloon(t.mem)
