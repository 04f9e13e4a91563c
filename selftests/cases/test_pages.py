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
    t.balloon(t.keep(256))
    t.balloon(t.mem)
    t.unload_driver()
    mi0 = t.g.meminfo()
    base = t.g.free_kb(drop_caches=True)
    t.load_driver()
    t.balloon(t.keep(256))
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
            t.qmp.balloon(t.keep(256))
            time.sleep(0.3)
        t.unload_driver()
        # the host's figure and the guest's are back where they started
        t.eq(t.qmp.query_balloon(), t.mem, f"host's actual after unload {i}")
        t.eq(t.g.meminfo()["MemTotal"], mi0["MemTotal"], f"MemTotal after unload {i}")
        t.qmp.balloon(t.mem)
    v = t.g.vmstat()
    t.eq(v["balloon_inflate"], v["balloon_deflate"], "pages inflated vs deflated overall")
