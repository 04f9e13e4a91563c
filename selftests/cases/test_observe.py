# SPDX-License-Identifier: GPL-2.0
"""What vballoon shows: sysfs attributes, tracepoints, debugfs."""
import re
import time

from vbtest import MiB, case, virtio
from vbtest.stats import compare_stats, wait_stats

PAGE = 4096
TRACING = "/sys/kernel/tracing"
NOBODY = "su -s /bin/sh nobody -c"

FEATURE_NAMES = {"MUST_TELL_HOST": "must_tell_host", "STATS_VQ": "stats_vq",
                 "DEFLATE_ON_OOM": "deflate_on_oom",
                 "FREE_PAGE_HINT": "free_page_hint", "PAGE_POISON": "page_poison",
                 "REPORTING": "reporting"}


def migration_scheme(t):
    """How the kernel under test lets compaction move balloon pages, by its
    version: an independent check of the build's feature probes."""
    major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", t.kver).groups())
    if (major, minor) < (6, 0):
        return "address_space_operations"
    if (major, minor) < (6, 17):
        return "movable_operations"
    return "kernel balloon core"


def only_vballoon(t):
    if t.driver != "vballoon":
        t.skip("vballoon's own interface")


@case(device={"deflate-on-oom": "on", "free-page-reporting": "on"}, core=True)
def case_sysfs(t):
    """balloon/ in sysfs: features by name as the host negotiated them,
    target and actual in pages and bytes as QMP says, counters as
    /proc/vmstat says; everyone reads, only root writes."""
    only_vballoon(t)
    dev = t.load_driver()
    a = t.bsys()
    _, negotiated, _ = virtio.host_view(t.qmp)
    want = sorted(v for k, v in FEATURE_NAMES.items() if negotiated & virtio.bit(k))
    t.eq(sorted(a["features"].split()), want, "sysfs features vs the host's negotiated bits")
    t.eq(a["target_pages"], 0, "target_pages with no target")
    t.eq(a["inflated_pages"], 0, "inflated_pages after probe")

    for target in (t.keep(768), t.keep(300), t.keep(900)):
        t.balloon(target)
        a = t.bsys()
        host = t.mem - t.qmp.query_balloon()
        t.eq(a["actual_bytes"], host, f"actual_bytes at {target // MiB} MiB vs query-balloon")
        t.eq(a["actual_pages"], host // PAGE, "actual_pages")
        t.eq(a["target_bytes"], t.mem - target, "target_bytes vs the QMP target")
        t.eq(a["target_pages"], (t.mem - target) // PAGE, "target_pages")
        t.check_counters()
    t.check(a["inflated_pages"] >= (t.mem - t.keep(300)) // PAGE,
            f"inflated_pages {a['inflated_pages']}")
    t.check(a["deflated_pages"] > 0, "deflated_pages stayed 0")

    # readable by everyone, writable by root only
    out = t.g.check(f"{NOBODY} 'id -u; cat {dev}/balloon/actual_pages {dev}/balloon/features'")
    t.eq(out.split()[0], "65534", "uid of the unprivileged reader")
    out = "\n".join(out.split("\n")[1:])
    t.eq(int(out.split()[0]), a["actual_pages"], "actual_pages read by uid 65534")
    for attr in ("reserve_mib", "max_balloon_pct", "inflate"):
        rc, out = t.g.run(f"{NOBODY} 'echo 1 > {dev}/balloon/{attr}'")
        t.check(rc != 0 and "denied" in out, f"uid 65534 wrote {attr}: rc {rc} {out!r}")
    rc, out = t.g.run(f"echo 1 > {dev}/balloon/actual_pages")
    t.check(rc != 0, "root wrote the read-only actual_pages")
    modes = t.g.check(f"stat -c '%n %a' {dev}/balloon/*")
    for line in modes.splitlines():
        path, mode = line.split()
        name = path.rsplit("/", 1)[1]
        want_mode = "644" if name in ("reserve_mib", "max_balloon_pct", "inflate") else "444"
        t.eq(mode, want_mode, f"mode of {name}")
    t.g.check(f"test -z \"$(ls -A {dev}/balloon | grep -v '^[a-z_]*$')\"")


@case()
def case_stats_counter(t):
    """stats_requests counts the host's requests: QMP's last-update moves
    once per request, and the figures sent are the guest's."""
    only_vballoon(t)
    t.load_driver()
    n0 = int(t.bsys("stats_requests"))
    t.qmp.qom_set(t.balloon_qom, "guest-stats-polling-interval", 1)
    st = wait_stats(t, 0)
    updates = 0
    for _ in range(4):
        st = wait_stats(t, st["last-update"])
        updates += 1
    compare_stats(t, st, "polled every second")
    t.qmp.qom_set(t.balloon_qom, "guest-stats-polling-interval", 0)
    time.sleep(1.5)
    n = int(t.bsys("stats_requests")) - n0
    # the host asked at least once per update seen, and not wildly more
    t.check(updates <= n <= updates + 4,
            f"stats_requests rose by {n} for {updates} QMP updates")
    t.log(f"stats_requests +{n} for {updates} updates seen by QMP")


def trace_records(t, event):
    """(pages, order) of each record of vballoon:<event> in the trace buffer."""
    out = t.g.read(f"{TRACING}/trace")
    recs = re.findall(rf"{event}: pages=(\d+)(?: order=(\d+))?", out)
    return [(int(p), int(o or 0)) for p, o in recs]


@case()
def case_tracepoints(t):
    """Enabled, the vballoon events record every inflate and deflate batch,
    and their page counts add up to what sysfs and /proc/vmstat counted;
    disabled, nothing is recorded."""
    only_vballoon(t)
    t.load_driver()
    events = t.g.check(f"ls {TRACING}/events/vballoon").split()
    for ev in ("vballoon_inflate", "vballoon_deflate", "vballoon_target", "vballoon_stats",
               "vballoon_oom_deflate", "vballoon_reserve_deflate", "vballoon_migrate",
               "vballoon_hint_round", "vballoon_report"):
        t.check(ev in events, f"no tracepoint {ev}: {events}")
    size_kb = t.g.read(f"{TRACING}/buffer_size_kb").split()[0]
    t.g.check(f"echo 0 > {TRACING}/tracing_on; echo > {TRACING}/trace; "
              f"echo 4096 > {TRACING}/buffer_size_kb")

    # off: inflating records nothing
    t.balloon(t.mem - 64 * MiB)
    t.eq(trace_records(t, "vballoon_inflate"), [], "records with the events off")

    t.g.check(f"echo 1 > {TRACING}/events/vballoon/enable; echo 1 > {TRACING}/tracing_on")
    v0 = t.g.vmstat()
    n0 = int(t.bsys("stats_requests"))
    t.qmp.qom_set(t.balloon_qom, "guest-stats-polling-interval", 1)
    # 384 MiB, not lower: the trace buffer comes out of what the guest can
    # spare (with 16 MiB per CPU, 6.1 stopped 2 MiB short of 256 MiB in CI)
    t.balloon(t.keep(384))
    t.balloon(t.mem - 64 * MiB)
    time.sleep(1.5)
    t.qmp.qom_set(t.balloon_qom, "guest-stats-polling-interval", 0)
    time.sleep(1.5)
    t.g.check(f"echo 0 > {TRACING}/tracing_on")
    n1 = int(t.bsys("stats_requests"))
    stats = re.findall(r"vballoon_stats: nr=(\d+)", t.g.read(f"{TRACING}/trace"))
    t.eq(len(stats), n1 - n0, "vballoon_stats records vs stats_requests")
    t.check(stats and set(stats) == {"16"}, f"stats records carry {set(stats)} statistics")
    v1 = t.g.vmstat()
    inf = trace_records(t, "vballoon_inflate")
    dfl = trace_records(t, "vballoon_deflate")
    t.check(inf and dfl, f"{len(inf)} inflate and {len(dfl)} deflate records")
    t.eq(sum(p for p, _ in inf), v1["balloon_inflate"] - v0["balloon_inflate"],
         "pages in vballoon_inflate records vs /proc/vmstat balloon_inflate")
    t.eq(sum(p for p, _ in dfl), v1["balloon_deflate"] - v0["balloon_deflate"],
         "pages in vballoon_deflate records vs /proc/vmstat balloon_deflate")
    t.check(all(p <= 2 * MiB // PAGE for p, _ in inf), "an inflate batch above 2 MiB")
    huge = sum(p for p, o in inf if o == 9)
    t.log(f"{len(inf)} inflate batches, {huge} pages from 2 MiB blocks; {len(dfl)} deflate batches")
    trace = t.g.read(f"{TRACING}/trace")
    targets = re.findall(r"vballoon_target: target=(\d+)", trace)
    t.check(str((t.mem - t.keep(384)) // PAGE) in targets,
            f"no vballoon_target record of the 384 MiB target: {targets}")
    t.check(re.search(r"vballoon_inflate: pages=\d+ order=\d+ duration_ns=[1-9]", trace),
            "inflate records carry no duration")
    # the guest runs more cases: give the buffer's memory back
    t.g.check(f"echo 0 > {TRACING}/events/vballoon/enable; echo > {TRACING}/trace; "
              f"echo {size_kb} > {TRACING}/buffer_size_kb")
    t.balloon(t.mem)


@case(core=True)
def case_debugfs(t):
    """/sys/kernel/debug/vballoon/virtioN: pages by zone add up to what the
    balloon holds, the page migration scheme is the kernel's, targets and
    the stats last sent are there, and no kernel address is printed."""
    only_vballoon(t)
    dev = t.load_driver()
    t.qmp.qom_set(t.balloon_qom, "guest-stats-polling-interval", 1)
    t.balloon(t.keep(512))
    time.sleep(1.5)
    name = dev.rsplit("/", 1)[1]
    text = t.g.read(f"/sys/kernel/debug/vballoon/{name}")
    t.log(text)
    t.check(not re.search(r"[0-9a-f]{12,}", text), "debugfs prints something like an address")
    f = dict(re.findall(r"^(\w+): (.*)$", text, re.M))
    held = t.mem - t.keep(512)
    t.eq(int(f["actual_units"]) * PAGE, held, "actual_units")
    t.eq(int(f["target_units"]) * PAGE, held, "target_units")
    zones = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", f["pages_by_zone"])}
    t.eq(sum(zones.values()), held // PAGE, "pages_by_zone summed")
    t.eq(f["page_migration"], migration_scheme(t), "page_migration")
    t.check(f["last_target_change"].startswith(f"{held // PAGE} units"),
            f"last_target_change: {f['last_target_change']}")
    stats = dict(re.findall(r"(\w+)=(\d+)", f["last_stats"]))
    t.eq(sorted(stats), sorted(["swap_in", "swap_out", "major_faults", "minor_faults",
                                "free", "total", "available", "caches",
                                "hugetlb_allocations", "hugetlb_failures", "oom_kills",
                                "alloc_stalls", "async_scans", "direct_scans",
                                "async_reclaims", "direct_reclaims"]),
         "stats in last_stats")
    t.near(int(stats["total"]) // 1024, t.g.meminfo()["MemTotal"], 4096,
           "last_stats total (kB) vs MemTotal")
    # the six statistics QEMU 7.2 does not show: each against the guest's
    # own counter, read after the driver's sample (7.x keeps the reclaim
    # ones as node statistics, which /proc/vmstat shows all the same)
    vs = t.g.vmstat()
    for name, keys, unit in (("async_scans", ["pgscan_kswapd"], t.page),
                             ("direct_scans", ["pgscan_direct"], t.page),
                             ("async_reclaims", ["pgsteal_kswapd"], t.page),
                             ("direct_reclaims", ["pgsteal_direct"], t.page),
                             ("oom_kills", ["oom_kill"], 1),
                             ("alloc_stalls",
                              [k for k in vs if k.startswith("allocstall_")], 1)):
        now = sum(vs[k] for k in keys) * unit
        got = int(stats[name])
        t.check(got <= now <= got + max(now // 10, 4 * MiB),
                f"last_stats {name} {got} vs /proc/vmstat {'+'.join(keys)} {now}")
    rc, _ = t.g.run(f"{NOBODY} 'cat /sys/kernel/debug/vballoon/{name}'")
    t.check(rc != 0, "uid 65534 read debugfs")
    t.balloon(t.mem)


# wakeup_count counts only events that could abort a suspend under way
WAKEUP_STATS = ("active_count", "active", "total_time_ms")


def wakeup(t, power):
    """The device's wakeup source, from its power/wakeup_* attributes."""
    return {k: int(t.g.read(f"{power}/wakeup_{k}")) for k in WAKEUP_STATS}


def wakeup_idle(t, power, what, timeout=20):
    """Wait until nothing holds the wakeup source (for 1 s); returns it."""
    deadline = time.monotonic() + timeout
    since = None
    while True:
        w = wakeup(t, power)
        if w["active"]:
            since = None
        elif since is None:
            since = time.monotonic()
        elif time.monotonic() - since >= 1:
            return w
        t.check(time.monotonic() < deadline, f"{what}: the wakeup source is "
                f"still held after {timeout} s ({w})")
        time.sleep(0.2)


@case(timeout=300)
def case_wakeup(t):
    """With wakeup enabled on the device (power/wakeup, as autosleeping
    systems do), an adjustment and a statistics request each hold the
    device's wakeup source until the driver has answered: wakeup counts
    and time rise with a new target and with the host's polling; nothing
    is held once the balloon is still, on a target the guest refuses too."""
    dev = t.load_driver()
    power = f"{dev}/power"
    t.g.write(f"{power}/wakeup", "enabled")
    w0 = wakeup_idle(t, power, "after enabling")
    t.balloon(t.keep(512))
    w1 = wakeup_idle(t, power, "after a 512 MiB target")
    t.log(f"wakeup source over the inflate: {w0} -> {w1}")
    t.check(w1["active_count"] > w0["active_count"], "an adjustment held no wakeup source")
    t.check(w1["total_time_ms"] > w0["total_time_ms"], "the wakeup source was held 0 ms")

    t.qmp.qom_set(t.balloon_qom, "guest-stats-polling-interval", 1)
    try:
        n0 = int(t.bsys("stats_requests")) if t.driver == "vballoon" else None
        time.sleep(5)
        w2 = wakeup(t, power)
    finally:
        t.qmp.qom_set(t.balloon_qom, "guest-stats-polling-interval", 0)
    stats = t.qmp.qom_get(t.balloon_qom, "guest-stats")
    t.check(stats["last-update"] > 0, "QMP saw no statistics")
    held = w2["active_count"] - w1["active_count"]
    t.log(f"5 s of 1 s stats polling: the wakeup source held {held} times")
    t.check(held >= 3, f"the wakeup source held {held} times for 5 s of stats requests")
    if n0 is not None:
        t.check(int(t.bsys("stats_requests")) - n0 >= 3, "stats_requests did not rise")
    w3 = wakeup_idle(t, power, "after the stats polling stopped")

    # a target the guest refuses: the driver backs off, holding nothing
    t.qmp.balloon(64 * MiB)
    t.qmp.wait_actual(64 * MiB, 120, settle=4)
    w4 = wakeup_idle(t, power, "backing off a refused target")
    t.check(w4["active_count"] > w3["active_count"], "the refused target held no wakeup source")
    t.balloon(t.mem)
    wakeup_idle(t, power, "deflated")
