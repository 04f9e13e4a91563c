# SPDX-License-Identifier: GPL-2.0
"""Live migration to a file and back into a new QEMU, and the guest's
memory pattern checked on either side."""
import re
import time

from .guest import GuestDead
from .vm import VM, console_problems


def migrate(qmp, uri, bandwidth=32 << 20, timeout=300):
    """Migrate (by default at QEMU's default 32 MiB/s); returns query-migrate's
    ram section.

    Hints only help if the guest answers before the first pass has sent the
    pages. Debian's kernels zero every page they allocate (init_on_alloc),
    hinted blocks included: under TCG a round over 800 MiB takes about 2 s.
    """
    qmp.cmd("migrate-set-parameters", max_bandwidth=bandwidth)
    qmp.cmd("migrate", uri=uri)
    deadline = time.monotonic() + timeout
    while True:
        info = qmp.cmd("query-migrate")
        if info.get("status") == "completed":
            # QEMU says completed from its migration thread and leaves the
            # finish-migrate run state in a bottom half a little later;
            # `cont` in between fails with "Migration is not finalized yet"
            while qmp.cmd("query-status")["status"] == "finish-migrate":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"still in finish-migrate after {timeout} s")
                time.sleep(0.05)
            return info["ram"]
        if info.get("status") in ("failed", "cancelled"):
            raise RuntimeError(f"migration {info.get('status')}: {info}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"migration not done in {timeout} s: {info}")
        time.sleep(0.2)


def verify_pattern(t, guest, job, what, timeout=120):
    """Ask a "pattern hold" job (SIGUSR1) to verify its memory; it must say
    "verify ok". guest may be another QEMU's guest than the job's own (the
    job's files and pid come along with a migration)."""
    out = f"/tmp/.job{job.n}.out"
    n = len(guest.read(out).splitlines())
    guest.check(f"kill -USR1 {job.pid}")
    deadline = time.monotonic() + timeout
    while True:
        res = [x for x in guest.read(out).splitlines()[n:] if x.startswith("verify")]
        if res:
            break
        t.check(time.monotonic() < deadline, f"{what}: pattern did not answer")
        time.sleep(0.5)
    t.check(res[0].startswith("verify ok"), f"{what}: {res[0]}")
    t.log(f"{what}: {res[0]}")


def sibling(t, name, config):
    """Another QEMU for the same kernel and image, next to the case's own."""
    return VM(t.kver, t.vm.initrd, config,
              t.vm.workdir.parent / f"{t.vm.workdir.name}-{name}", t.vm.accel)


def check_console(t, vm, what):
    """No kernel warning on another QEMU's console (the runner checks the
    case's own)."""
    bad = console_problems(vm.console.text())
    t.check(not bad, f"{what}'s console: " + "; ".join(bad[:5]))


def resume_retrying(t, img, remigrate, resume):
    """Resume the image img in a new QEMU: resume(vm2, img) checks it.

    Under TCG, QEMU 7.2 sometimes resumes an image into a kernel crash in
    the idle or timer path (RIP a ktime value, 0 or 0xe): about 1 run in 3
    after free page hinting, with the in-tree virtio_balloon as often as
    with vballoon; once (check-debug, 2026-11-30) after a plain migration
    of a full balloon. A resumed guest whose console shows a crash, or that
    hangs with a silent one, gets a new image (remigrate(path) migrates the
    source again) and a new QEMU, up to 5 in all (three in a row crashed
    once on 7.3). Not retried: any failure
    without a crash, a crash whose faulting instruction (RIP) is in the
    driver's module, and anything under KVM. A crash elsewhere with the
    driver only further down the stack is retried: CI of 4799577 saw the
    kernel's list check catch a corrupted workqueue list in a resumed
    guest when vballoon's config interrupt queued its work, where other
    resumes of the same case died in the idle path or on a stack guard
    page. A bug of the driver's own repeats on every attempt and still
    fails the case.
    """
    attempts = 5 if t.vm.accel == "tcg" else 1
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            img = img.with_name(f"{img.stem.split('@')[0]}@{attempt}.mig")
            remigrate(img)
        vm2 = sibling(t, f"dst{attempt}", t.config)
        try:
            resume(vm2, img)
            return
        except Exception as e:
            text = vm2.console.text()
            crash = console_problems(text)
            ours = re.search(rf"RIP: \S+ \[{t.driver}\]", text)
            if not (crash or isinstance(e, GuestDead)) or ours or \
                    attempt == attempts:
                raise
            t.log(f"attempt {attempt}: the resumed guest crashed ({type(e).__name__}: "
                  f"{str(e)[:80]}); console: {'; '.join(crash[:2])}")
        finally:
            vm2.stop()
            img.unlink(missing_ok=True)
