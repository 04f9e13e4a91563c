# SPDX-License-Identifier: GPL-2.0
"""Guest pages larger than the protocol's 4 KiB units (arm64 16 KiB pages).

The device counts in 4 KiB units; a guest with 16 KiB pages balloons four
units per page. The driver rounds the host's target up to whole guest pages
(as the spec and the in-tree driver do), so the balloon settles instead of
inflating and deflating around an unreachable figure, and actual never
claims part of a page. On a 4 KiB guest the same checks hold trivially.
"""
import time

from vbtest import ALL_ARCHES, MiB, case

UNIT = 4096


def round_up(n, m):
    return (n + m - 1) // m * m


@case(arches=ALL_ARCHES, timeout=300)
def case_rounding(t):
    """Targets that are not a multiple of the guest page: the balloon holds
    the target rounded up to whole pages, query-balloon, sysfs, MemTotal
    and /proc/vmstat all say so, the balloon stays put, and deflating
    returns exactly what was inflated."""
    t.load_driver()
    mi0, v0 = t.g.meminfo(), t.g.vmstat()
    t.log(f"guest page {t.page} bytes, {t.page // UNIT} units per page")
    offsets = (UNIT, 2 * UNIT, 3 * UNIT, 5 * UNIT, 7 * UNIT, 0)
    for i, off in enumerate(offsets):
        target = 512 * MiB - off
        t.qmp.balloon(target)
        # the host's units, rounded up to whole guest pages
        held = round_up(t.mem - target, t.page)
        want = t.mem - held
        actual = t.wait_actual(want, 120)
        t.eq(actual, want, f"query-balloon for {target} bytes")
        a = t.bsys()
        t.eq(a["actual_bytes"], held, f"sysfs actual_bytes for {target} bytes")
        t.eq(a["actual_pages"], held // t.page, f"sysfs actual_pages for {target} bytes")
        t.eq(a["target_pages"], held // t.page, f"sysfs target_pages for {target} bytes")
        t.eq(a["target_bytes"], held, f"sysfs target_bytes for {target} bytes")
        t.eq(t.g.meminfo()["MemTotal"], mi0["MemTotal"] - held // 1024,
             f"MemTotal (kB) for {target} bytes")
        v = t.g.vmstat()
        t.eq(v["balloon_inflate"] - v["balloon_deflate"]
             - (v0["balloon_inflate"] - v0["balloon_deflate"]), held // t.page,
             f"pages in the balloon by /proc/vmstat for {target} bytes")
        if i == 0:
            # settled: no inflate/deflate churn around a target it cannot hit
            time.sleep(3)
            v2 = t.g.vmstat()
            t.eq((v2["balloon_inflate"], v2["balloon_deflate"]),
                 (v["balloon_inflate"], v["balloon_deflate"]),
                 "balloon_inflate/deflate 3 s after settling")
            t.eq(t.qmp.query_balloon(), want, "query-balloon 3 s after settling")

    # a target just under the full size still takes one whole page
    t.qmp.balloon(t.mem - UNIT)
    t.eq(t.wait_actual(t.mem - t.page, 60), t.mem - t.page,
         "query-balloon for the full size less 4 KiB")
    t.balloon(t.mem)
    v = t.g.vmstat()
    t.eq(v["balloon_deflate"] - v0["balloon_deflate"],
         v["balloon_inflate"] - v0["balloon_inflate"], "pages deflated vs inflated")
    t.eq(t.g.meminfo()["MemTotal"], mi0["MemTotal"], "MemTotal (kB) after deflating")
    t.eq(t.bsys("actual_pages"), "0", "sysfs actual_pages after deflating")
