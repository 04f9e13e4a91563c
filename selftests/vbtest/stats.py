# SPDX-License-Identifier: GPL-2.0
"""The balloon's statistics as QMP shows them, against the guest's own."""
import time


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
    """guest-stats against /proc/meminfo and /proc/vmstat read right after."""
    mi, vs = t.g.meminfo(), t.g.vmstat()
    s = st["stats"]
    t.log(f"{when}: guest-stats {s}")
    for stat, kb, tol in (("stat-total-memory", mi["MemTotal"], 0.01),
                          ("stat-free-memory", mi["MemFree"], 0.05),
                          ("stat-available-memory", mi["MemAvailable"], 0.05),
                          ("stat-disk-caches",
                           mi["Cached"] + mi["Buffers"] + mi["SwapCached"], 0.05)):
        got = s[stat] // 1024
        # 5% of the figure, but never less than 4 MiB: the guest moves
        # between the driver's sample and ours
        t.near(got, kb, max(tol * kb, 4096), f"{when}: {stat} (kB) vs /proc/meminfo")
    t.check(0 < s["stat-minor-faults"] <= vs["pgfault"],
            f"{when}: minor faults {s['stat-minor-faults']} vs pgfault {vs['pgfault']}")
    t.check(s["stat-major-faults"] <= vs["pgmajfault"],
            f"{when}: major faults {s['stat-major-faults']} vs {vs['pgmajfault']}")
    t.near(s["stat-minor-faults"], vs["pgfault"], max(vs["pgfault"] // 20, 2000),
           f"{when}: minor faults vs /proc/vmstat pgfault")
    t.eq(s["stat-swap-in"], 0, f"{when}: swap in (no swap in the guest)")
    t.eq(s["stat-htlb-pgalloc"], vs.get("htlb_buddy_alloc_success", 0),
         f"{when}: hugetlb allocations")
