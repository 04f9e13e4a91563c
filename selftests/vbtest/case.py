# SPDX-License-Identifier: GPL-2.0
"""Case declaration, discovery and the context a case runs with."""
import importlib.util
import inspect
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from .platform import page_size
from .qmp import BALLOON_QOM
from .vm import VMConfig

MiB = 1 << 20
GiB = 1 << 30
CASES_DIR = Path(__file__).resolve().parent.parent / "cases"
# Guest architectures a case runs on (selftests/vbtest/platform.py); most
# run on x86_64 only, the core set on arm64 (16 KiB pages) too.
X86_ONLY = ("x86_64",)
ALL_ARCHES = ("x86_64", "arm64")
DEBUG_ONLY = ("debug",)         # make check-debug's kernel only


class CaseFailure(Exception):
    """A check in a case failed."""


class Skip(Exception):
    """The case does not apply (missing feature, kernel, ...)."""


@dataclass
class Spec:
    """One runnable case (a case function, or one variant of it)."""
    name: str
    func: object
    config: VMConfig
    timeout: int = 300
    allow_oom: bool = False
    fresh: bool = False
    params: dict = field(default_factory=dict)
    variant: str = ""
    topic: str = ""
    arches: tuple = X86_ONLY
    core: bool = False

    def group_key(self, kver):
        """Specs with the same key may share one booted guest."""
        return (kver, self.config, self.name if self.fresh else "")


def case(name=None, *, mem=1024, smp=2, device=None, cmdline="", qemu_args=(),
         timeout=300, allow_oom=False, fresh=False, variants=None, arches=X86_ONLY,
         machine="", core=False, ram_pad=0):
    """Declare a case_* function's guest configuration.

    mem       guest RAM in MiB
    device    virtio-balloon-pci properties, e.g. {"deflate-on-oom": "on"}
    cmdline   appended to the guest kernel command line
    qemu_args extra QEMU arguments
    timeout   seconds for the whole case (boot not included)
    allow_oom tolerate the Call Trace of OOM-killer reports on the console
    fresh     run in a guest of its own (no sharing with other cases)
    arches    guest architectures to run on (X86_ONLY or ALL_ARCHES)
    machine   "" (virtio-pci) or "microvm" (x86, the balloon on virtio-mmio)
    ram_pad   KiB of RAM added under TCG (cases resuming a migrated image:
              see VM.ram_kib)
    core      one of the core cases, which run on every kernel (the rest run
              on the kernels the runner is given with --full, or on all
              without --core)
    variants  {suffix: overrides}: run once per entry as "name[suffix]";
              overrides may hold mem, smp, device, cmdline, qemu_args, machine (merged
              into the above) and params (a dict handed to the case as t.params)
    """
    def wrap(func):
        base = name or func.__name__[len("case_"):]
        cfg = VMConfig.make(mem, smp, device, cmdline, qemu_args, machine, ram_pad)
        specs = []
        for suffix, over in (variants or {"": {}}).items():
            over = dict(over)
            params = over.pop("params", {})
            specs.append(Spec(f"{base}[{suffix}]" if suffix else base, func,
                              cfg.merged(**over), timeout, allow_oom, fresh,
                              params, suffix, arches=tuple(arches), core=core))
        func.vbtest_specs = specs
        return func
    return wrap


def discover(cases_dir=CASES_DIR):
    """All specs from cases/test_*.py: every function named case_*."""
    specs = []
    for path in sorted(Path(cases_dir).glob("test_*.py")):
        modname = f"vbtest_cases.{path.stem}"
        spec = importlib.util.spec_from_file_location(modname, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        funcs = [f for n, f in inspect.getmembers(mod, inspect.isfunction)
                 if n.startswith("case_") and f.__module__ == modname]
        for func in sorted(funcs, key=lambda f: f.__code__.co_firstlineno):
            if not hasattr(func, "vbtest_specs"):
                case()(func)
            for s in func.vbtest_specs:
                s.topic = path.stem[len("test_"):]
                specs.append(s)
    names = [s.name for s in specs]
    dups = {n for n in names if names.count(n) > 1}
    if dups:
        raise SystemExit(f"duplicate case names: {', '.join(sorted(dups))}")
    return specs


class Context:
    """What a case function gets (conventionally named t).

    Attributes: kver, driver (module name), host (the QEMU: platform.Host,
    e.g. host.version_tuple >= (9, 1)), spec, config, params, vm, g
    (Guest), qmp (QMP), mem (guest RAM in bytes), balloon_qom (QOM path),
    page (the guest's page size in bytes; the balloon protocol counts 4 KiB
    units whatever it is, sysfs *_pages and /proc/vmstat count guest pages),
    extra (bytes of RAM added to config.mem: the platform's, and the
    ram_pad under TCG; in mem).
    """

    def __init__(self, spec, vm, kver, driver, verbose=False):
        self.spec, self.vm, self.kver, self.driver = spec, vm, kver, driver
        self.host = vm.host     # the QEMU running the guest (platform.Host)
        self.ended = False      # the case ends the guest on purpose
        self.config = spec.config
        self.params = spec.params
        self.g = vm.guest
        self.qmp = vm.qmp
        self.mem = vm.ram_kib * 1024
        self.extra = self.mem - spec.config.mem * MiB
        self.page = page_size(kver)
        self.balloon_qom = BALLOON_QOM
        self.notes = []
        self.verbose = verbose
        self._vmstat0 = None
        self.t0 = time.monotonic()

    def keep(self, mib):
        """The target that leaves the guest mib MiB, plus the RAM its
        platform adds for its own kernel (the debug kernel's 256 MiB): the
        balloon holds as much on every platform."""
        return mib * MiB + self.extra

    def keep_full(self):
        """keep() of a full balloon: 256 MiB, or 320 with 16 KiB pages. After
        a large free such a guest's per-CPU lists may hold up to its low
        watermark, free memory that MemAvailable, and so vballoon's floor,
        do not count: at 256 MiB the floor refuses the last MiB."""
        return self.keep(320 if self.page > 4096 else 256)

    # -- reporting --------------------------------------------------------
    def log(self, msg):
        """A diagnostic line: printed with -v, and always when the case fails."""
        line = f"[{time.monotonic() - self.t0:6.1f}s] {msg}"
        self.notes.append(line)

    def fail(self, msg):
        raise CaseFailure(msg)

    def skip(self, reason):
        raise Skip(reason)

    def check(self, cond, msg):
        if not cond:
            raise CaseFailure(msg)

    def eq(self, got, want, what):
        if got != want:
            raise CaseFailure(f"{what}: got {got!r}, want {want!r}")
        self.log(f"{what}: {got!r} as expected")

    def near(self, got, want, tol, what):
        if abs(got - want) > tol:
            raise CaseFailure(f"{what}: got {got}, want {want} +- {tol} (off by {got - want})")
        self.log(f"{what}: {got} (want {want} +- {tol})")

    # -- driver -----------------------------------------------------------
    def driver_loaded(self):
        return self.g.exists(f"/sys/module/{self.driver}")

    def load_driver(self, params="", bind=True, timeout=60):
        """insmod /lib/<driver>.ko params; with bind, wait until it drives the device.

        Returns the sysfs path of the balloon device (or None if bind=False).
        """
        self._vmstat0 = self.g.vmstat() if self.driver == "vballoon" else None
        self.g.check(f"insmod /lib/{self.driver}.ko {params}", timeout)
        if not bind:
            return None
        dev = self.g.sysfs_balloon_dev()
        self.check(dev is not None, "no virtio balloon device in guest sysfs")
        deadline = time.monotonic() + timeout
        while not self.g.exists(f"{dev}/driver"):
            if time.monotonic() > deadline:
                self.fail(f"{self.driver} loaded but {dev} has no driver after {timeout} s")
            time.sleep(0.2)
        self.log(f"{self.driver} loaded ({params or 'no params'}), drives {dev}")
        return dev

    def bsys(self, name=None):
        """vballoon's sysfs attributes (balloon/): one as str, or all as a dict
        (numbers as int)."""
        d = f"{self.g.sysfs_balloon_dev()}/balloon"
        if name:
            return self.g.read(f"{d}/{name}").strip()
        out = self.g.check(f"cd {d} && for f in *; do echo \"$f=$(cat $f)\"; done")
        attrs = {}
        for line in out.splitlines():
            k, _, v = line.partition("=")
            attrs[k] = int(v) if v.lstrip("-").isdigit() else v
        return attrs

    def check_counters(self, timeout=20):
        """vballoon's sysfs agrees with the host and /proc/vmstat: actual with
        query-balloon, pages inflated/deflated/migrated with the vmstat balloon
        counters since the driver was loaded, and inflated - deflated with
        what it holds. Waits (up to timeout) for the balloon to be still."""
        if self.ended or self.driver != "vballoon" or self._vmstat0 is None \
                or not self.driver_loaded():
            return
        deadline = time.monotonic() + timeout
        prev = None
        while True:
            a = self.bsys()
            host = self.qmp.query_balloon()
            vm = self.g.vmstat()
            still = prev is not None and prev["actual_bytes"] == a["actual_bytes"]
            agree = self.mem - a["actual_bytes"] == host
            # a pass that began between the two readings (a retry, the end
            # of pressure) shows in the counters read after: look again
            if still and agree and self.bsys() == a:
                break
            if time.monotonic() > deadline:
                # one reading takes seconds on a loaded debug guest: at
                # the deadline, agreeing is enough
                if agree:
                    break
                self.fail(f"sysfs actual_bytes {a['actual_bytes']} never settled to "
                          f"the host's balloon {self.mem - host}")
            prev = a
            time.sleep(0.5)
        v0 = self._vmstat0
        self.eq(a["inflated_pages"] - a["deflated_pages"], a["actual_pages"],
                "sysfs inflated_pages - deflated_pages vs actual_pages")
        for key, attr in (("balloon_inflate", "inflated_pages"),
                          ("balloon_deflate", "deflated_pages"),
                          ("balloon_migrate", "migrated_pages")):
            self.eq(a[attr], vm[key] - v0[key], f"sysfs {attr} vs /proc/vmstat {key}")
        self.check(a["oom_deflated_pages"] + a["reserve_deflated_pages"]
                   + a.get("pressure_deflated_pages", 0)
                   <= a["deflated_pages"], f"deflate counters disagree: {a}")
        # /proc/meminfo "Balloon:" (v6.16 on) counts every balloon's pages,
        # a node statistic: fold the CPUs' pending deltas before reading it
        # (the kernel does so only every second).
        self.g.run("cat /proc/sys/vm/stat_refresh")
        mi = self.g.meminfo()
        if "Balloon" in mi and len(self.g.balloon_devs()) == 1:
            self.eq(mi["Balloon"], a["actual_pages"] * self.page // 1024,
                    "/proc/meminfo Balloon (kB) vs sysfs actual_pages")

    def new_device(self):
        """A new balloon device was bound (hot plug): its sysfs counters
        start from zero, so compare them with /proc/vmstat from here."""
        self._vmstat0 = self.g.vmstat() if self.driver == "vballoon" else None

    def reboot(self, timeout=120):
        """reboot -f in the guest: the kernel shuts every device down and
        restarts, and QEMU (-no-reboot) exits. Returns the seconds it took;
        fails if QEMU still runs after timeout (a shutdown that hangs)."""
        self.ended = True
        t0 = time.monotonic()
        self.g.run("(sleep 0.2; reboot -f) </dev/null >/dev/null 2>&1 &", 10)
        while self.vm.alive():
            if time.monotonic() - t0 > timeout:
                self.fail(f"QEMU still runs {timeout} s after reboot -f: "
                          "the guest's shutdown hangs")
            time.sleep(0.2)
        self.g.dead = True
        return time.monotonic() - t0

    def suspend_resume(self):
        """ACPI S3 and QMP system_wakeup; returns once the guest has resumed.
        Fails if the guest's echo mem fails (the freezer gave up, a
        driver's suspend failed)."""
        self.g.write("/tmp/s3.sh", "sleep 1; echo mem > /sys/power/state; echo s3-$?\n")
        mark = self.vm.console.mark()
        since = len(self.qmp.events)
        job = self.g.spawn("sh /tmp/s3.sh")
        self.check(self.qmp.wait_event("SUSPEND", timeout=60, since=since),
                   "no SUSPEND event in 60 s")
        self.eq(self.qmp.cmd("query-status")["status"], "suspended", "QEMU's status")
        time.sleep(1)
        self.qmp.cmd("system_wakeup")
        # The agent's serial port is reset at wakeup: talk to the guest only
        # once it has resumed its devices.
        deadline = time.monotonic() + 60
        while "PM: suspend exit" not in self.vm.console.text(mark):
            self.check(time.monotonic() < deadline, "the guest did not resume")
            time.sleep(0.2)
        self.eq(job.wait_output(r"s3-(\d+)", timeout=60).group(1), "0",
                "echo mem exit status")

    def unload_driver(self, timeout=120):
        self.g.check(f"rmmod {self.driver}", timeout)

    # -- balloon ----------------------------------------------------------
    def balloon(self, target, wait=True, timeout=120, settle=None):
        """Set the balloon target (guest RAM in bytes); optionally wait for it."""
        t = time.monotonic()
        self.qmp.balloon(target)
        if not wait:
            return None
        try:
            actual = self.qmp.wait_actual(target, self._left(timeout), settle)
        except TimeoutError as e:
            raise CaseFailure(str(e)) from None
        self.log(f"balloon -> {target // MiB} MiB: actual {actual // MiB} MiB "
                 f"after {time.monotonic() - t:.1f} s")
        return actual

    def wait_actual(self, target, timeout=120, settle=None):
        try:
            return self.qmp.wait_actual(target, self._left(timeout), settle)
        except TimeoutError as e:
            raise CaseFailure(str(e)) from None

    def rss(self):
        """Host RSS of QEMU: {'VmRSS', 'RssAnon', 'AnonHugePages'} in kB."""
        return self.vm.rss()

    def _left(self, timeout):
        if self.g.deadline is None:
            return timeout
        return max(1, min(timeout, self.g.deadline - time.monotonic()))

    # -- cleanup (run by the runner after every case) ---------------------
    def reset(self):
        """Bring the shared guest back to its boot state; raises if it cannot."""
        self.g.kill_jobs()
        self.qmp.balloon(self.mem)
        if self.driver_loaded():
            try:
                self.qmp.wait_actual(self.mem, 120)
            except TimeoutError as e:
                raise CaseFailure(f"cleanup: balloon did not deflate: {e}") from None
            self.g.check(f"rmmod {self.driver}", 120)
        self.g.check("rm -rf /tmp/* /tmp/.job*")
        leftover = [m for m in self.g.modules() if m == self.driver]
        if leftover:
            raise CaseFailure("cleanup: driver still loaded")


def sh(*args):
    """Quote arguments for a guest shell command line."""
    return " ".join(shlex.quote(str(a)) for a in args)
