# SPDX-License-Identifier: GPL-2.0
"""The host's memory behind the guest: huge pages given back."""
import time

from vbtest import MiB, case
from vbtest.hostmem import anon_huge_kb, huge_free, hugetlb_guest
from vbtest.migration import check_console

# A buffer holds a whole 2 MiB block only with batch at 512 frame numbers.
BLOCK_PFNS = 512


def huge_blocks_mib(g):
    """The guest's free memory in free blocks of 2 MiB or more (MiB), and
    the MiB on its per-CPU lists, which merge into blocks only when the
    lists overflow: (blocks, pcp)."""
    blocks = 0
    for line in g.read("/proc/buddyinfo").splitlines():
        counts = [int(x) for x in line.split()[4:]]
        blocks += sum(n << order for order, n in enumerate(counts) if order >= 9)
    pcp = sum(int(line.split()[1]) for line in g.read("/proc/zoneinfo").splitlines()
              if line.strip().startswith("count:"))
    return blocks * 4 // 1024, pcp * 4 // 1024


@case(timeout=420, fresh=True, core=True)
def case_hugetlb_inflate(t):
    """A guest on 2 MiB hugetlb pages (memory-backend-memfd, hugetlb=on)
    touches and frees most of its memory, then inflates half of it: the
    host's HugePages_Free rises by at least 90% of the ballooned MiB / 2,
    as QEMU discards a host huge page only when all its 4 KiB pieces come
    in one buffer; deflating gives the guest its 2 MiB blocks back whole."""
    if t.driver != "vballoon":
        t.skip("vballoon's huge_first")
    t.load_driver()
    batch = int(t.g.read("/sys/module/vballoon/parameters/batch"))
    t.eq(batch, BLOCK_PFNS, "default batch (frame numbers per buffer)")
    t.eq(t.g.read("/sys/module/vballoon/parameters/huge_first").strip(), "Y", "huge_first")
    t.unload_driver()

    with hugetlb_guest(t) as vm:
        g, qmp = vm.guest, vm.qmp
        mem = vm.ram_kib * 1024
        g.check(f"insmod /lib/{t.driver}.ko")
        # every guest page faulted in on the host, then free again
        hog = g.meminfo()["MemAvailable"] // 1024 - 96
        out = g.check(f"memhog {hog}", timeout=180)
        t.check(f"touched {hog} MiB" in out, f"memhog {hog}:\n{out}")
        free0 = huge_free()
        blocks0, pcp0 = huge_blocks_mib(g)
        t.log(f"guest touched and freed {hog} MiB: host HugePages_Free {free0}; "
              f"guest {blocks0} MiB in free 2 MiB blocks, {pcp0} MiB on per-CPU lists")
        target = mem // 2
        total0 = g.meminfo()["MemTotal"]
        qmp.balloon(target)
        actual = qmp.wait_actual(target, 180)
        held = mem - actual
        t.near(g.meminfo()["MemTotal"], total0 - held // 1024, 2048,
               "guest MemTotal (kB) with half its memory ballooned")
        # QEMU discards as it takes each buffer: give the last ones a moment
        deadline = time.monotonic() + 10
        want = int(0.9 * (held // MiB) / 2)
        while huge_free() - free0 < want and time.monotonic() < deadline:
            time.sleep(0.5)
        rose = huge_free() - free0
        t.log(f"ballooned {held // MiB} MiB: HugePages_Free rose by {rose} "
              f"(want >= {want}); QEMU's AnonHugePages {anon_huge_kb(vm.proc.pid)} kB")
        t.check(rose >= want, f"HugePages_Free rose by {rose} for {held // MiB} MiB "
                f"ballooned: want >= {want} (90% of the 2 MiB pages)")
        blocks1, pcp1 = huge_blocks_mib(g)
        t.log(f"guest {blocks1} MiB in free 2 MiB blocks, {pcp1} MiB on per-CPU lists")
        t.check(blocks0 - blocks1 >= 0.9 * held // MiB,
                f"inflating {held // MiB} MiB took {blocks0 - blocks1} MiB of free "
                "2 MiB blocks: want whole blocks")
        # deflate gives the blocks back whole: they merge into free 2 MiB
        # blocks again (but for what the per-CPU lists keep as single pages)
        qmp.balloon(mem)
        qmp.wait_actual(mem, 180)
        blocks2, pcp2 = huge_blocks_mib(g)
        t.log(f"deflated: guest {blocks2} MiB in free 2 MiB blocks, {pcp2} MiB on "
              "per-CPU lists")
        t.check(blocks2 - blocks1 + pcp2 - pcp1 >= 0.9 * held // MiB,
                f"deflating {held // MiB} MiB gave back {blocks2 - blocks1} MiB of free "
                f"2 MiB blocks ({pcp2 - pcp1} MiB more on per-CPU lists): want whole blocks")
        check_console(t, vm, "hugetlb guest")
