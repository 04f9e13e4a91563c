# SPDX-License-Identifier: GPL-2.0
"""The balloon's statistics as QMP shows them, against the guest's own."""
import time

# The statistics of the virtio spec (tags 0-15), as QEMU names them in
# guest-stats. QEMU 7.2 knows the first 10 and ignores the other tags;
# QEMU 9.1 and later (Debian 13's 10.0) show all 16.
STATS = ("stat-swap-in", "stat-swap-out", "stat-major-faults", "stat-minor-faults",
         "stat-free-memory", "stat-total-memory", "stat-available-memory",
         "stat-disk-caches", "stat-htlb-pgalloc", "stat-htlb-pgfail",
         "stat-oom-kills", "stat-alloc-stalls", "stat-async-scans",
         "stat-direct-scans", "stat-async-reclaims", "stat-direct-reclaims")
# what QEMU shows for a statistic the guest did not send
UNSET = (1 << 64) - 1


def host_stats(t):
    """The statistics the case's QEMU shows."""
    return STATS if t.host.version_tuple >= (9, 1) else STATS[:10]


def guest_counters(vs, page):
    """{statistic: (the guest's counter from /proc/vmstat, slack)}: the
    value the driver sends, and how far it may trail a later reading."""
    def get(*keys):
        return sum(vs.get(k, 0) for k in keys)
    stalls = [k for k in vs if k.startswith("allocstall_")]
    mib4 = 4 << 20
    return {
        "stat-swap-in": (get("pswpin") * page, mib4),
        "stat-swap-out": (get("pswpout") * page, mib4),
        "stat-major-faults": (get("pgmajfault"), 100),
        "stat-minor-faults": (get("pgfault"), 2000),
        "stat-htlb-pgalloc": (get("htlb_buddy_alloc_success"), 0),
        "stat-htlb-pgfail": (get("htlb_buddy_alloc_fail"), 0),
        "stat-oom-kills": (get("oom_kill"), 0),
        "stat-alloc-stalls": (get(*stalls), 16),
        "stat-async-scans": (get("pgscan_kswapd") * page, mib4),
        "stat-direct-scans": (get("pgscan_direct") * page, mib4),
        "stat-async-reclaims": (get("pgsteal_kswapd") * page, mib4),
        "stat-direct-reclaims": (get("pgsteal_direct") * page, mib4),
    }


def wait_stats(t, newer_than, timeout=20):
    """guest-stats once its last-update is newer than newer_than."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = t.qmp.qom_get(t.balloon_qom, "guest-stats")
        if st["last-update"] > newer_than:
            return st
        time.sleep(0.2)
    t.fail(f"guest-stats not updated after {timeout} s (last-update {newer_than})")


def compare_stats(t, st, when):
    """guest-stats against /proc/meminfo and /proc/vmstat read right after:
    every statistic the host shows (all 16 on QEMU 9.1 and later), each
    with the guest's own figure. vballoon sends them all; the in-tree
    driver of older kernels sends fewer, which then show as unset."""
    mi, vs = t.g.meminfo(), t.g.vmstat()
    s = st["stats"]
    t.log(f"{when}: guest-stats {s}")
    t.eq(sorted(s), sorted(host_stats(t)), f"{when}: statistics {t.host} shows")
    unset = [k for k in host_stats(t) if s[k] == UNSET]
    if t.driver == "vballoon":
        t.eq(unset, [], f"{when}: statistics vballoon did not send")
    for stat, kb, tol in (("stat-total-memory", mi["MemTotal"], 0.01),
                          ("stat-free-memory", mi["MemFree"], 0.05),
                          ("stat-available-memory", mi["MemAvailable"], 0.05),
                          ("stat-disk-caches",
                           mi["Cached"] + mi["Buffers"] + mi["SwapCached"], 0.05)):
        if stat in unset:
            continue
        got = s[stat] // 1024
        # 5% of the figure, but never less than 4 MiB: the guest moves
        # between the driver's sample and ours
        t.near(got, kb, max(tol * kb, 4096), f"{when}: {stat} (kB) vs /proc/meminfo")
    t.check(0 < s["stat-minor-faults"] <= vs["pgfault"],
            f"{when}: minor faults {s['stat-minor-faults']} vs pgfault {vs['pgfault']}")
    t.eq(s["stat-swap-in"], 0, f"{when}: swap in (no swap in the guest)")
    # the counters only rise: ours, read later, is the driver's or a bit more
    for stat, (now, slack) in guest_counters(vs, t.page).items():
        if stat not in s or stat in unset:
            continue
        got = s[stat]
        t.check(got <= now <= got + max(now // 20, slack),
                f"{when}: {stat} {got} vs the guest's {now} (slack {max(now // 20, slack)})")
    t.log(f"{when}: {len(host_stats(t)) - len(unset)} statistics as the guest's own")
