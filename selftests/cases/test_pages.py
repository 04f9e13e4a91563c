# SPDX-License-Identifier: GPL-2.0
"""Balloon pages: compaction moves them, data survives, unload returns them."""
import time

from vbtest import ALL_ARCHES, MiB, case


def compact_until_migrated(t, tries=5):
    """Compact memory until balloon_migrate moves; returns pages migrated."""
    m0 = t.g.vmstat()["balloon_migrate"]
    for _ in range(tries):
        t.g.check("echo 1 > /proc/sys/vm/compact_memory", timeout=120)
        moved = t.g.vmstat()["balloon_migrate"] - m0
        if moved:
            return moved
    return 0


def fragment(t, files):
    """Fill free memory with 1 MiB tmpfs files, to be punched (every other one
    deleted) later. (/tmp is a tmpfs limited to half the RAM by default.)"""
    t.g.check("mount -o remount,size=90% /tmp")
    t.g.check(f"tmpfill fill /tmp/frag {files} 1024", timeout=180)


@case(timeout=400, arches=ALL_ARCHES, core=True)
def case_compaction(t):
    """Compaction migrates balloon pages: balloon_migrate rises, the host is
    told (inflate new, deflate old) so actual and MemTotal do not move, and
    deflating afterwards returns every page.

    The balloon inflates first (with huge_first it takes whole free 2 MiB
    blocks, spread over the zone by the shuffling page allocator); 1 MiB
    tmpfs files then fill the rest and every other one is deleted, leaving
    holes for compaction to move balloon pages into."""
    t.load_driver()
    v0 = t.g.vmstat()
    target = t.mem - 256 * MiB
    t.balloon(target)
    fragment(t, t.g.meminfo()["MemAvailable"] // 1024 - 96)
    t.g.check("tmpfill punch /tmp/frag", timeout=120)
    total = t.g.meminfo()["MemTotal"]
    moved = compact_until_migrated(t)
    t.check(moved > 0, "compaction migrated no balloon page")
    t.log(f"compaction migrated {moved} balloon pages")
    t.eq(t.qmp.query_balloon(), target, "host's actual after compaction")
    t.eq(t.g.meminfo()["MemTotal"], total, "MemTotal (kB) after compaction")
    t.g.check("tmpfill clear /tmp/frag", timeout=120)
    t.balloon(t.mem)
    v1 = t.g.vmstat()
    t.eq(v1["balloon_inflate"] - v0["balloon_inflate"], 256 * MiB // t.page,
         "balloon_inflate delta")
    t.eq(v1["balloon_deflate"] - v0["balloon_deflate"], 256 * MiB // t.page,
         "balloon_deflate delta")


@case(timeout=600, arches=ALL_ARCHES)
def case_integrity(t):
    """A pattern over most of the guest's free memory, and checksummed tmpfs
    files, stay intact through inflate, compaction and deflate cycles."""
    t.load_driver()
    avail = t.g.meminfo()["MemAvailable"] // 1024
    hold = avail - 352
    job = t.g.spawn(f"pattern hold {hold} 7")
    job.wait_output(r"^holding", timeout=240)
    t.g.check("tmpfill fill /tmp/sums 64 1024 && md5sum /tmp/sums/* > /tmp/md5",
              timeout=120)

    def verify(step):
        n = len(job.output().splitlines())
        job.signal("USR1")
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            lines = job.output().splitlines()[n:]
            res = [line for line in lines if line.startswith("verify")]
            if res:
                t.check(res[0].startswith("verify ok"), f"after {step}: {res[0]}")
                break
            time.sleep(0.5)
        else:
            t.fail(f"after {step}: pattern did not answer")
        t.g.check("md5sum -c -s /tmp/md5", timeout=120)
        t.log(f"pattern and tmpfs checksums intact after {step}")

    target = t.mem - 200 * MiB
    for cycle in range(2):
        t.balloon(target)
        verify(f"inflate {cycle}")
        t.g.check("tmpfill punch /tmp/sums && md5sum /tmp/sums/* > /tmp/md5",
                  timeout=120)
        t.g.check("echo 1 > /proc/sys/vm/compact_memory", timeout=120)
        verify(f"compaction {cycle}")
        t.balloon(t.mem)
        verify(f"deflate {cycle}")
        t.g.check("tmpfill fill /tmp/sums 64 1024 && md5sum /tmp/sums/* > /tmp/md5",
                  timeout=120)
    job.signal("TERM")


@case(timeout=400, arches=ALL_ARCHES, core=True)
def case_unload(t):
    """rmmod with a full balloon returns every page to the guest and tells
    the host (actual back to the full size); 20 load/unload cycles too,
    including unload in the middle of an inflate."""
    # A first inflate makes the guest settle things it keeps (CI once saw
    # 20 MiB less MemAvailable after the first cycle on 6.12, in a guest
    # that had just run another case): measure after one full cycle.
    t.load_driver()
    t.balloon(t.keep_full())
    t.balloon(t.mem)
    t.unload_driver()
    mi0 = t.g.meminfo()
    base = t.g.free_kb(drop_caches=True)
    t.load_driver()
    t.balloon(t.keep_full())
    t.check(t.g.meminfo()["MemTotal"] < mi0["MemTotal"] - 700 * 1024,
            "MemTotal did not drop with the balloon")
    t.unload_driver()
    t.eq(t.qmp.query_balloon(), t.mem, "host's actual after rmmod")
    mi = t.g.meminfo()
    t.eq(mi["MemTotal"], mi0["MemTotal"], "MemTotal (kB) after rmmod")
    # Nothing lost: the free page count is back. MemAvailable is not the
    # figure to compare (CI saw it 20 MiB lower after rmmod on 6.12 while
    # the free counts matched to 24 pages: it moves with watermarks and
    # cache); free pages plus the per-CPU lists, which 6.12 lets grow to
    # 1/8 of a zone after a large free, are. Allow 8 MiB for what the
    # guest's own processes allocate meanwhile, and a few seconds.
    want = base - 8 * 1024
    deadline = time.monotonic() + 20
    while True:
        have = t.g.free_kb(drop_caches=True)
        if have >= want or time.monotonic() > deadline:
            break
        time.sleep(1)
    t.check(have >= want, f"{have} kB free after rmmod, {base} kB before "
            "loading (MemFree + per-CPU lists)")
    t.log(f"free after rmmod {have} kB, before {base} kB")

    for i in range(20):
        t.load_driver()
        if i % 4 == 1:
            t.balloon(t.mem - 64 * MiB)
        elif i % 4 == 3:
            # leave while the inflate is under way
            t.qmp.balloon(t.keep_full())
            time.sleep(0.3)
        t.unload_driver()
        # the host's figure and the guest's are back where they started
        t.eq(t.qmp.query_balloon(), t.mem, f"host's actual after unload {i}")
        t.eq(t.g.meminfo()["MemTotal"], mi0["MemTotal"], f"MemTotal after unload {i}")
        t.qmp.balloon(t.mem)
    v = t.g.vmstat()
    t.eq(v["balloon_inflate"], v["balloon_deflate"], "pages inflated vs deflated overall")


# A 1 GiB DIMM placed at 16 TiB of guest-physical memory, onlined movable:
# its page frame numbers in 4 KiB units need 33 bits, more than the
# protocol's 32.
HIGH_DIMM = dict(
    cmdline="memhp_default_state=online_movable",
    qemu_args=["-m", "1G,slots=2,maxmem=32T", "-cpu", "max,phys-bits=46",
               "-object", "memory-backend-ram,id=m1,size=1G",
               "-device", "pc-dimm,id=d1,memdev=m1,addr=0x100000000000"])
HIGH_WARNING = "memory at or above 16 TiB cannot be named to the host"


def movable_free_pages(t):
    """Free pages of the Movable zone (the DIMM), from /proc/zoneinfo."""
    zone = None
    for line in t.g.read("/proc/zoneinfo").splitlines():
        words = line.split()
        if line.startswith("Node"):
            zone = words[-1]
        elif zone == "Movable" and words[:2] == ["pages", "free"]:
            return int(words[2])
    t.fail("no Movable zone in /proc/zoneinfo: the DIMM was not onlined movable")


@case(timeout=900, fresh=True, **HIGH_DIMM)
def case_high_memory(t):
    """Memory at 16 TiB and above cannot be named in the protocol's 32-bit
    frame numbers: the balloon keeps such pages out (counted in sysfs
    high_pages, said once in the log) and inflates from the memory below,
    so every tmpfs file survives and the host gets exactly the target.
    The in-tree virtio_balloon truncates the numbers and the guest dies."""
    t.mem += 1024 * MiB                     # the DIMM counts in QEMU's RAM
    t.g.check("mount -o remount,size=90% /tmp")
    t.g.check("tmpfill fill /tmp/frag 1100 1024", timeout=300)
    t.g.check("tmpfill punch /tmp/frag", timeout=120)
    t.g.check("md5sum /tmp/frag/* > /tmp/md5", timeout=300)
    # the host holds the guest's free memory too: the balloon's shows in RSS
    t.g.check(f"memhog {t.g.meminfo()['MemAvailable'] // 1024 - 96}", timeout=300)
    t.load_driver()
    high_free = movable_free_pages(t)
    t.log(f"Movable zone (the DIMM at 16 TiB): {high_free * t.page // MiB} MiB free")
    t.check(high_free * t.page >= 64 * MiB, "the DIMM has too little free memory to matter")
    rss0 = t.rss()["VmRSS"]
    free0 = t.g.meminfo()["MemFree"]
    target = t.mem - 500 * MiB
    t.balloon(target, timeout=300)
    t.g.check("md5sum -c -s /tmp/md5", timeout=300)
    b = t.bsys() if t.driver == "vballoon" else {}
    if b:
        t.log(f"sysfs high_pages {b['high_pages']} after a 500 MiB inflate")
        t.check(b["high_pages"] > 0, "no high page was kept out of the balloon")
        # each free page of the DIMM is taken at most once per inflate
        t.check(b["high_pages"] <= high_free + 1024,
                f"high_pages {b['high_pages']}: the DIMM's {high_free} free pages "
                "were taken more than once")
    # the pages kept out went back once the inflate was over
    free1 = t.g.meminfo()["MemFree"]
    t.near(free0 - free1, 500 * 1024, 48 * 1024, "MemFree fall (kB) with 500 MiB inflated")
    t.near(movable_free_pages(t), high_free, 16 * MiB // t.page,
           "free pages of the DIMM after the inflate")
    drop = rss0 - t.rss()["VmRSS"]
    t.log(f"QEMU RSS fell by {drop // 1024} MiB")
    t.check(drop >= 400 * 1024, f"QEMU RSS fell by {drop} kB only")
    t.balloon(t.mem)
    t.g.check("md5sum -c -s /tmp/md5", timeout=300)
    # a second inflate: the log still says it once
    t.balloon(target, timeout=300)
    t.g.check("md5sum -c -s /tmp/md5", timeout=300)
    if b:
        log = t.g.check("dmesg")
        t.eq(log.count(HIGH_WARNING), 1, "log lines about memory above 16 TiB")
    t.balloon(t.mem)


@case(mem=4096, timeout=600, fresh=True)
def case_compact_inflating(t):
    """Compaction keeps migrating balloon pages while a long inflate is
    under way (the driver holds its lock only to queue each batch, so
    migration's trylock mostly succeeds): on a 4 GiB guest with holes in
    its memory, balloon_migrate rises between two readings during which
    the host's actual also moved; the target is still reached, the files
    intact, and sysfs, /proc/vmstat and the host agree."""
    t.load_driver()
    # 1.5 GiB of 1 MiB files, every other one deleted: holes to move into
    fragment(t, 1536)
    t.g.check("tmpfill punch /tmp/frag", timeout=120)
    t.g.check("md5sum /tmp/frag/* > /tmp/md5", timeout=300)
    # all but 512 MiB of what the guest has left: well above its floor
    target = t.mem - (t.g.meminfo()["MemAvailable"] // 1024 - 512) * MiB
    loop = t.g.spawn("while :; do echo 1 > /proc/sys/vm/compact_memory; done")
    try:
        t.qmp.balloon(target)
        samples = []
        deadline = time.monotonic() + 300
        while True:
            actual = t.qmp.query_balloon()
            samples.append((actual, t.g.vmstat()["balloon_migrate"]))
            if actual == target:
                break
            t.check(time.monotonic() < deadline, f"actual {actual}, target {target}: "
                    "not reached in 300 s")
            time.sleep(0.3)
    finally:
        loop.signal("TERM")
    both = sum(1 for a, b in zip(samples, samples[1:]) if a[0] != b[0] and a[1] != b[1])
    moved = samples[-1][1] - samples[0][1]
    t.log(f"inflate of {(t.mem - target) // MiB} MiB: {len(samples)} readings, "
          f"{both} with the balloon and balloon_migrate both moving, "
          f"{moved} pages migrated")
    t.check(both >= 1, "no balloon page migrated while the balloon was growing")
    t.g.check("md5sum -c -s /tmp/md5", timeout=300)
    t.g.check("tmpfill clear /tmp/frag", timeout=120)
    t.balloon(t.mem)
