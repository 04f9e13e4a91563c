# SPDX-License-Identifier: GPL-2.0
"""Live migration to a file and back into a new QEMU, and the guest's
memory pattern checked on either side."""
import time

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
    """Another QEMU (the same host) for the same kernel and image, next to
    the case's own."""
    return VM(t.kver, t.vm.initrd, config,
              t.vm.workdir.parent / f"{t.vm.workdir.name}-{name}", t.vm.accel,
              t.vm.host)


def check_console(t, vm, what):
    """No kernel warning on another QEMU's console (the runner checks the
    case's own)."""
    bad = console_problems(vm.console.text())
    t.check(not bad, f"{what}'s console: " + "; ".join(bad[:5]))


def resume_image(t, img, resume):
    """Resume the image img in a new QEMU: resume(vm2, img) checks it.

    No retry: a resume that crashes fails the case. Under TCG the case's
    guest needs ram_pad (see VM.ram_kib), or QEMU 7.2 loses guest writes
    during the migration and resumes crash, with either driver.
    """
    vm2 = sibling(t, "dst", t.config)
    try:
        resume(vm2, img)
    finally:
        vm2.stop()
        img.unlink(missing_ok=True)
