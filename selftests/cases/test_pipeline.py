# SPDX-License-Identifier: GPL-2.0
"""Pipelined, huge-page-first inflate: progress, parameters, host huge pages."""
import time

from vbtest import MiB, case

PAGE_KB = 4


def watch(t, target, timeout=180, stats=False):
    """Balloon to target; sample query-balloon (and guest-stats) meanwhile.

    Returns (seconds taken, largest gap in s between two changes of actual,
    largest gap in s between two guest-stats updates or None).
    """
    start = t.qmp.query_balloon()
    t.qmp.balloon(target)
    t0 = time.monotonic()
    last_change, last_actual, gap = t0, start, 0.0
    last_stats, stats_gap, stats_seen = None, 0.0, None
    while True:
        now = time.monotonic()
        if now - t0 > timeout:
            t.fail(f"balloon -> {target // MiB} MiB: actual {last_actual // MiB} MiB "
                   f"after {timeout} s")
        actual = t.qmp.query_balloon()
        if actual != last_actual:
            # the first change comes once the work has started
            if last_actual != start:
                gap = max(gap, now - last_change)
            last_change, last_actual = now, actual
        if stats:
            upd = t.qmp.qom_get(t.balloon_qom, "guest-stats")["last-update"]
            if upd != stats_seen:
                if last_stats is not None:
                    stats_gap = max(stats_gap, now - last_stats)
                last_stats, stats_seen = now, upd
        if actual == target:
            return now - t0, gap, (stats_gap if stats else None)
        time.sleep(0.05)


@case(mem=4096, timeout=400)
def case_progress(t):
    """A 3 GiB inflate keeps `actual` moving at least once a second and never
    starves the stats queue; deflate likewise."""
    t.load_driver()
    t.qmp.qom_set(t.balloon_qom, "guest-stats-polling-interval", 1)
    total0 = t.g.meminfo()["MemTotal"]
    for target, what in ((t.keep(1024), "inflate 3 GiB"), (t.mem, "deflate 3 GiB")):
        secs, gap, sgap = watch(t, target, stats=True)
        t.log(f"{what}: {secs:.1f} s, longest wait for actual {gap:.2f} s, "
              f"for guest-stats {sgap:.2f} s")
        t.check(gap <= 1.0, f"{what}: actual did not move for {gap:.2f} s")
        # QEMU polls every second: an update may land just after our sample
        t.check(sgap <= 2.5, f"{what}: guest-stats not refreshed for {sgap:.2f} s")
    t.near(t.g.meminfo()["MemTotal"], total0, 1024, "MemTotal (kB) after deflating")


@case()
def case_params(t):
    """batch and huge_first: bad values fail the load naming the parameter;
    small batches without huge pages still reach the targets exactly; a
    batch that does not divide a 2 MiB block still ends each pass (actual
    moves) and stops at the floor."""
    for bad in ("batch=0", "batch=513", "batch=x", "huge_first=maybe"):
        mark = t.vm.console.mark()
        rc, out = t.g.run(f"insmod /lib/{t.driver}.ko {bad}")
        t.check(rc != 0, f"insmod {bad} succeeded")
        name = bad.split("=")[0]
        said = out + t.vm.console.text(mark) + t.g.check("dmesg | tail -5")
        t.check(name in said, f"insmod {bad}: no message naming {name}:\n{said}")
        t.check(not t.driver_loaded(), f"module loaded after insmod {bad}")
        t.log(f"insmod {bad} refused")
    t.load_driver("batch=64 huge_first=0")
    t.eq(t.g.read("/sys/module/vballoon/parameters/batch").strip(), "64", "batch")
    v0 = t.g.vmstat()
    total0 = t.g.meminfo()["MemTotal"]
    t.balloon(t.mem - 300 * MiB)
    v1 = t.g.vmstat()
    pages = 300 * MiB // (PAGE_KB * 1024)
    t.eq(v1["balloon_inflate"] - v0["balloon_inflate"], pages, "balloon_inflate delta")
    t.near(t.g.meminfo()["MemTotal"], total0 - 300 * 1024, 1024, "MemTotal (kB)")
    t.balloon(t.mem)
    t.eq(t.g.vmstat()["balloon_deflate"] - v0["balloon_deflate"], pages,
         "balloon_deflate delta")
    t.unload_driver()

    # 99 does not divide a 2 MiB block: a block split across buffers must
    # still let each pass end (actual moves) and the floor be checked
    dev = t.load_driver("batch=99")
    floor_mib = int(t.g.read(f"{dev}/balloon/floor_mib"))
    t.qmp.balloon(t.keep(16))
    t0 = time.monotonic()
    seen = [t.qmp.query_balloon()]
    while time.monotonic() - t0 < 3:
        a = t.qmp.query_balloon()
        if a != seen[-1]:
            seen.append(a)
        time.sleep(0.05)
    t.log(f"batch=99: actual took {len(seen)} values in 3 s: "
          f"{[x // MiB for x in seen[:8]]}...")
    t.check(len(seen) >= 8, f"batch=99: actual moved {len(seen) - 1} times in 3 s")
    actual = t.qmp.wait_actual(t.keep(16), 120, settle=4)
    avail = t.g.meminfo()["MemAvailable"] // 1024
    t.log(f"batch=99, asked to keep 16 MiB: kept {actual // MiB} MiB, "
          f"MemAvailable {avail} MiB, floor {floor_mib} MiB")
    t.check(actual > t.keep(16), "batch=99: the balloon took all it was asked for")
    # the floor is checked before each block; the guest's own use and
    # reclaim move MemAvailable by a few MiB after (as in stuck_balloon)
    t.check(avail >= floor_mib * 3 // 4, f"batch=99: MemAvailable {avail} MiB, "
            f"far under the {floor_mib} MiB floor")
    t.check(int(t.bsys("refusals")) >= 1, "batch=99: no refusal counted")
    t.balloon(t.mem)


@case(fresh=True,
      variants={"huge": dict(params={"huge": 1}), "small": dict(params={"huge": 0})})
def case_thp(t):
    """Inflating half of a fragmented guest backed by host transparent huge
    pages: with huge_first the balloon takes free 2 MiB blocks and the host
    keeps the huge pages of the rest; without it (the control) the balloon's
    single pages come first from the holes a task left in the blocks it
    uses, and the host loses huge pages the guest still uses."""
    t.load_driver(f"huge_first={t.params['huge']}")
    hog = t.g.meminfo()["MemAvailable"] // 1024 - 48
    t.g.check(f"memhog {hog}", timeout=180)
    thp0 = t.rss()["AnonHugePages"]
    if thp0 < 512 * 1024:
        t.skip(f"host backs only {thp0 // 1024} MiB of the guest with huge pages")
    # a task holds all but half the guest and 64 MiB (over the floor),
    # giving back one page in 8
    half = t.mem // 2
    used = t.g.meminfo()["MemAvailable"] // 1024 - half // MiB - 64
    job = t.g.fragment(used * 8 // 7, 8, timeout=180)
    thp1 = t.rss()["AnonHugePages"]
    v0 = t.g.vmstat()
    t.balloon(half)
    thp2 = t.rss()["AnonHugePages"]
    t.eq(t.g.vmstat()["balloon_inflate"] - v0["balloon_inflate"],
         half // (PAGE_KB * 1024), "balloon_inflate delta")
    t.log(f"host AnonHugePages {thp0 // 1024} -> {thp1 // 1024} MiB fragmented "
          f"({used * 8 // 7} MiB held) -> {thp2 // 1024} MiB after inflating "
          f"{half // MiB} MiB")
    # every 2 MiB block ballooned whole costs the host exactly one huge page
    want = thp1 - half // 1024
    if t.params["huge"]:
        t.check(thp2 >= 0.8 * want,
                f"host kept {thp2 // 1024} MiB of huge pages, want >= 80% of "
                f"{want // 1024} MiB")
    else:
        # the task's holes come first, one in each 2 MiB block it holds: at
        # least half its blocks must cost the host their huge page (want
        # also counts QEMU's own huge pages, so a share of it is no measure)
        frag = used * 8 // 7 * 1024
        t.check(want - thp2 >= frag // 2,
                f"without huge_first the host lost {(want - thp2) // 1024} MiB of "
                f"huge pages, want >= half the {frag // 1024} MiB the task holds: "
                f"the holes were not taken first")
    t.balloon(t.mem)
    rc, out = job.stop()
    t.eq(rc, 0, f"memhog exit status ({out.strip()})")
