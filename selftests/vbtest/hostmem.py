# SPDX-License-Identifier: GPL-2.0
"""The host's memory behind a guest: huge pages reserved for a guest on
hugetlbfs memory, and the transparent huge pages of a QEMU process.

QEMU discards a host page larger than 4 KiB only once all its 4 KiB
pieces arrive in one buffer (one descriptor chain) of the inflate queue:
a guest on 2 MiB hugetlb pages shows whether the driver sends whole
2 MiB blocks that way, by the host's HugePages_Free.
"""
import contextlib
import fcntl
import time
from pathlib import Path

from .migration import sibling

NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")
HUGE_KB = 2048
# One reservation at a time on this machine, whoever runs it: each
# restores the count it found.
LOCK = Path("/run/lock/vballoon-hugepages.lock")


def host_meminfo():
    """The host's /proc/meminfo: kB, or a count for HugePages_*."""
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        out[key] = int(rest.split()[0])
    return out


def huge_free():
    """The host's free 2 MiB hugetlb pages (HugePages_Free)."""
    return host_meminfo()["HugePages_Free"]


def anon_huge_kb(pid):
    """AnonHugePages of a process in kB (its THP-backed anonymous memory,
    from /proc/PID/smaps_rollup)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def hugepages(t, count):
    """Reserve count more 2 MiB pages in /proc/sys/vm/nr_hugepages for the
    case, and always set back the number found (t.skip when this runner
    may not, or the host cannot spare them)."""
    if Path("/proc/meminfo").read_text().find("Hugepagesize:       2048 kB") < 0:
        t.skip("the host's default huge page size is not 2 MiB")
    try:
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        lock = open(LOCK, "w")
    except OSError as e:
        t.skip(f"cannot reserve huge pages here: {e}")
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = int(NR_HUGEPAGES.read_text())
        try:
            NR_HUGEPAGES.write_text(f"{before + count}\n")
        except OSError as e:
            t.skip(f"cannot write {NR_HUGEPAGES}: {e}")
        try:
            got = int(NR_HUGEPAGES.read_text()) - before
            t.log(f"host: nr_hugepages {before} -> {before + got} (asked {count} more)")
            if got < count:
                t.skip(f"the host gave {got} of {count} huge pages (fragmented memory)")
            yield got
        finally:
            # the number found, unless someone else changed it meanwhile
            # (another tool that does not take the lock): then take back
            # only what this reservation added
            now = int(NR_HUGEPAGES.read_text())
            back = before if now == before + count else max(now - count, 0)
            NR_HUGEPAGES.write_text(f"{back}\n")
            t.log(f"host: nr_hugepages {now} -> {int(NR_HUGEPAGES.read_text())} "
                  f"(found {before})")


def hugetlb_args(mib):
    """QEMU arguments for guest RAM of mib MiB on 2 MiB hugetlb pages (a
    memfd on hugetlbfs)."""
    return ["-object", f"memory-backend-memfd,id=m0,size={mib}M,hugetlb=on,"
            "hugetlbsize=2M", "-machine", "memory-backend=m0"]


@contextlib.contextmanager
def hugetlb_guest(t, mib=None):
    """A guest like the case's own (same kernel, image and QEMU host), its
    RAM on 2 MiB hugetlb pages reserved for it and given back afterwards;
    yields the running VM. mib defaults to the case's RAM."""
    mib = mib or t.config.mem
    if mib % 2 or t.config.ram_pad or t.extra:
        t.fail(f"hugetlb guest RAM must be whole 2 MiB pages: {mib} MiB "
               f"+ {t.extra} bytes")
    with hugepages(t, mib // 2):
        vm = sibling(t, "hugetlb", t.config.merged(mem=mib, qemu_args=hugetlb_args(mib)))
        try:
            t0 = time.monotonic()
            t.check(vm.start(), f"hugetlb guest did not boot: {vm.qemu_log()[-500:]}")
            t.log(f"hugetlb guest up in {time.monotonic() - t0:.1f} s; host HugePages_Free "
                  f"{huge_free()}")
            yield vm
        finally:
            vm.stop()
