# SPDX-License-Identifier: GPL-2.0
"""The host gets ballooned memory back."""
from vbtest import ALL_ARCHES, MiB, case


@case(arches=ALL_ARCHES)
def case_rss(t):
    """Dirty the guest's free memory, free it, inflate by 768 MiB: QEMU's RSS
    drops by >= 90% of that.

    memhog touches MemAvailable less 32 MiB (~800 MiB, at least 700): a page
    the guest never touched is not resident on the host, and which free pages
    the balloon takes is the driver's business.
    """
    t.load_driver()
    # warm up: QEMU translates the guest's inflate path now, so its own
    # growth (TCG code cache) does not eat into the RSS drop measured below
    t.balloon(t.mem - 16 * MiB)
    t.balloon(t.mem)
    hog = t.g.meminfo()["MemAvailable"] // 1024 - 32
    t.check(hog >= 700, f"only {hog + 32} MiB available in a {t.mem // MiB} MiB guest")
    out = t.g.check(f"memhog {hog}", timeout=180)
    t.check(f"memhog: touched {hog} MiB" in out, f"memhog did not get {hog} MiB:\n{out}")
    # drop_caches around every reading: an inflate under pressure reclaims
    # page cache and slab, which CI once saw add 27 MiB of free memory
    # (6.1, a guest that had run other cases); slab counted in, where a
    # KASAN kernel's quarantine keeps freed objects (12 MiB in a second)
    free_before = t.g.free_kb(drop_caches=True, slab=True)
    rss0 = t.rss()
    t.log(f"QEMU before inflating: {rss0}")

    target = t.keep(256)
    t.balloon(target)
    rss1 = t.rss()
    t.log(f"QEMU after inflating: {rss1}")
    balloon_kb = (t.mem - target) // 1024
    drop = rss0["VmRSS"] - rss1["VmRSS"]
    t.check(drop >= 0.9 * balloon_kb,
            f"QEMU RSS dropped by {drop // 1024} MiB, want >= 90% of "
            f"{balloon_kb // 1024} MiB ({rss0['VmRSS'] // 1024} -> {rss1['VmRSS'] // 1024} MiB)")
    t.log(f"RSS drop {drop // 1024} MiB for a {balloon_kb // 1024} MiB balloon")
    # guest side: the pages came out of its free memory (8 MiB of slack for
    # what the guest allocates meanwhile; its per-CPU lists and batches
    # count pages, so four times that with 16 KiB pages)
    slack = 8192 * t.page // 4096
    t.near(t.g.free_kb(drop_caches=True, slab=True), free_before - balloon_kb, slack,
           "guest free memory (kB) after inflating")

    t.balloon(t.mem)
    t.near(t.g.free_kb(drop_caches=True, slab=True), free_before, slack,
           "guest free memory (kB) after deflating")
