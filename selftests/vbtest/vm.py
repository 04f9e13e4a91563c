# SPDX-License-Identifier: GPL-2.0
"""QEMU launcher: one guest = QEMU process + QMP + agent + console log."""
import ctypes
import os
import re
import signal
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .guest import Guest
from .platform import host as default_host, native, page_size, platform_of
from .qmp import BALLOON_QOM, QMP

# Passed explicitly so results do not depend on QEMU's version defaults.
DEVICE_DEFAULTS = {"deflate-on-oom": "off", "page-poison": "on",
                   "free-page-reporting": "off"}
BASE_CMDLINE = "panic=-1 loglevel=7 mitigations=off"
BOOT_TIMEOUT = 120


@dataclass(frozen=True)
class VMConfig:
    """What a guest looks like; cases with equal configs share a guest."""
    mem: int = 1024                 # MiB
    smp: int = 2
    device: tuple = ()              # sorted (property, value) of virtio-balloon-pci
    cmdline: str = ""               # appended to BASE_CMDLINE
    qemu_args: tuple = ()           # extra QEMU arguments
    machine: str = ""               # "" (pc / virt, virtio-pci) or "microvm" (virtio-mmio)
    ram_pad: int = 0                # KiB of RAM added under TCG (see VM.ram_kib)

    @classmethod
    def make(cls, mem=1024, smp=2, device=None, cmdline="", qemu_args=(), machine="",
             ram_pad=0):
        dev = dict(DEVICE_DEFAULTS)
        for k, v in (device or {}).items():
            dev[k] = {True: "on", False: "off"}.get(v, str(v))
        return cls(mem, smp, tuple(sorted(dev.items())), cmdline.strip(),
                   tuple(qemu_args), machine, ram_pad)

    def merged(self, mem=None, smp=None, device=None, cmdline="", qemu_args=(),
               machine=None, ram_pad=None):
        """A copy with device properties merged and cmdline/args appended."""
        dev = dict(self.device)
        dev.update(device or {})
        return VMConfig.make(mem or self.mem, smp or self.smp, dev,
                             f"{self.cmdline} {cmdline}",
                             self.qemu_args + tuple(qemu_args),
                             self.machine if machine is None else machine,
                             self.ram_pad if ram_pad is None else ram_pad)

    @property
    def mmio(self):
        """The balloon on virtio-mmio (QEMU's microvm machine)."""
        return self.machine == "microvm"

    @property
    def dev(self):
        return dict(self.device)

    def describe(self):
        changed = [f"{k}={v}" for k, v in self.device if DEVICE_DEFAULTS.get(k) != v]
        parts = [f"{self.mem}M" + (f"+{self.ram_pad}K" if self.ram_pad else ""),
                 f"smp{self.smp}"] + changed
        if self.machine:
            parts.insert(0, self.machine)
        if self.cmdline:
            parts.append(repr(self.cmdline))
        if self.qemu_args:
            parts.append(" ".join(self.qemu_args))
        return " ".join(parts)


# -- console watchdog ---------------------------------------------------------
BAD = re.compile(r"BUG:|WARNING:|Oops|KASAN|lockdep|Call Trace|Kernel panic")
ALWAYS_BAD = re.compile(r"BUG:|WARNING:|Oops|KASAN|lockdep|Kernel panic")
OOM_START = re.compile(r"invoked oom-killer:")
OOM_END = re.compile(r"Out of memory( and no killable processes)?:|oom_reaper:")
OOM_VICTIM = re.compile(r"Killed process \d+ \((.+?)\)")
ALLOC_FAIL = re.compile(r"(\S+): page allocation failure:")
TRACE_END = re.compile(r"</TASK>")


def console_problems(text, allow_oom=False):
    """Lines of text that should fail a case.

    With allow_oom, two kinds of stack dump are tolerated: the OOM-killer
    report (from "invoked oom-killer:" to "Out of memory: Killed process"),
    and a "page allocation failure" of a task the OOM killer has killed (its
    pending fault fails while it dies; up to the end of that stack, </TASK>).
    Anything else, including BUG/WARNING inside such a block, is a problem.
    """
    bad, block_end, victims = [], None, set()
    for line in text.splitlines():
        if allow_oom and block_end is None:
            m = ALLOC_FAIL.search(line)
            if OOM_START.search(line):
                block_end = OOM_END
            elif m and m.group(1) in victims:
                block_end = TRACE_END
        if block_end is not None:
            m = OOM_VICTIM.search(line)
            if m:
                victims.add(m.group(1)[:15])    # comm is at most 15 chars
            if ALWAYS_BAD.search(line):
                bad.append(line)
            if block_end.search(line):
                block_end = None
        elif BAD.search(line):
            bad.append(line)
    return bad


class Console:
    """The guest's first serial port, written by QEMU to a file."""

    def __init__(self, path):
        self.path = Path(path)

    def mark(self):
        return self.path.stat().st_size if self.path.exists() else 0

    def text(self, start=0):
        if not self.path.exists():
            return ""
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read().decode(errors="replace")

    def tail(self, n=40):
        return self.text().splitlines()[-n:]


def _die_with_parent():
    """No QEMU outlives a killed runner (PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


class VM:
    """A running guest.  Use boot() to get one that answers commands."""

    def __init__(self, kver, initrd, config, workdir, accel="tcg", host=None):
        self.kver, self.initrd, self.config, self.accel = kver, initrd, config, accel
        # the QEMU that runs it (platform.Host): HOST_QEMU's by default
        self.host = host or default_host()
        self.plat = platform_of(kver)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        # AF_UNIX paths are limited to 107 bytes
        sockdir = self.workdir
        if len(str(sockdir / "agent.sock")) > 100:
            sockdir = Path(tempfile.mkdtemp(prefix="vbt-"))
        self.sockdir = sockdir
        self.console = Console(self.workdir / "console.log")
        self.qmp = QMP(sockdir / "qmp.sock")
        if config.mmio:
            # virtio-balloon-device is the VirtIODevice itself
            self.qmp.virtio_path = BALLOON_QOM
        self.guest = Guest(sockdir / "agent.sock", page_size(kver) // 1024)
        self.proc = None
        self.boot_time = None

    @property
    def ram_kib(self):
        """The guest's RAM in KiB: config.mem, the platform's extra and,
        under TCG, config.ram_pad. Cases that resume a live-migrated image
        pad by 8 KiB: QEMU 7.2's dirty bitmap sync takes a fast path for a
        RAM block of whole 256 KiB words (cpu_physical_memory_sync_dirty_bitmap)
        that clears the migration dirty bits without re-arming TCG's TLB
        write tracking, so a vCPU keeps writing pages through TLB entries
        marked dirty and the writes are never sent; the image resumes into
        crashes, with either driver. Any other size takes the per-page
        path, which re-arms it (tlb_reset_dirty)."""
        c = self.config
        pad = c.ram_pad if self.accel == "tcg" else 0
        return (c.mem + self.plat.mem_extra) * 1024 + pad

    def argv(self):
        c, p = self.config, self.plat
        if self.accel == "kvm":
            accel = ["-accel", "kvm", "-cpu", "max"]
        else:
            accel = ["-accel", "tcg,thread=single", "-cpu", "max"]
        balloon = "virtio-balloon-device" if c.mmio else "virtio-balloon-pci"
        props = [f"{k}={v}" for k, v in c.device]
        if p.name == "arm64" and self.accel == "tcg" and \
                c.dev.get("free-page-hint") == "on" and \
                self.host.version_tuple < (10, 0):
            # QEMU 7.2 signals the used free page hints from its hinting
            # iothread without the big lock, and the arm GIC under TCG
            # aborts on that ("gicv3_cpuif_update: assertion failed").
            # The guest asks for no interrupt on that queue (it has no
            # callback: both drivers poll it), but with EVENT_IDX the
            # first used buffer still crosses used_event 0 and signals.
            # Without EVENT_IDX the no-interrupt flag holds throughout
            # (vballoon declines it there; the in-tree driver does not).
            # QEMU 10.0 still signals from the iothread, but gives the
            # balloon MSI-X vectors, and the free page queue, which has no
            # callback, gets none: the signal goes nowhere, and the in-tree
            # driver with EVENT_IDX hints through a migration there.
            props.append("event_idx=off")
        dev = ",".join([balloon, "id=balloon0"] + props)
        agent_dev = "/dev/hvc0" if c.mmio else p.agent_dev
        machine = ("-M", "microvm") if c.mmio else p.machine
        extra = ""
        if c.mmio and self.accel == "tcg":
            # microvm has no HPET and no ACPI PM timer: the kernel
            # calibrates the TSC against the PIT, which fails under TCG on
            # a loaded host and the boot stops there. Name a frequency; the
            # clocksource watchdog still judges the TSC.
            extra = "tsc_early_khz=2000000"
        cmdline = (f"console={p.console},115200 vbagent={agent_dev} {BASE_CMDLINE} "
                   f"{p.cmdline} {'' if c.mmio else p.pci_cmdline} {extra} {c.cmdline}")
        return [self.host.qemu(p.qemu), *machine, *accel, "-m", f"{self.ram_kib}K",
                "-smp", str(c.smp),
                # named threads: a QEMU core or hang shows which one
                "-name", "vbtest,debug-threads=on",
                "-display", "none", "-nodefaults", "-no-user-config",
                "-no-reboot", "-monitor", "none",
                "-kernel", str(p.kernel(self.kver)), "-initrd", str(self.initrd),
                "-append", cmdline.strip(),
                "-chardev", f"file,id=con,path={self.console.path}",
                "-serial", "chardev:con",
                *p.agent_args(f"{self.sockdir}/agent.sock", c.mmio),
                "-qmp", f"unix:{self.sockdir}/qmp.sock,server=on,wait=off",
                "-device", dev, *c.qemu_args]

    def start(self, timeout=BOOT_TIMEOUT, incoming=None):
        """Start QEMU and wait for the agent; True if the guest is ready.

        With incoming (a migration URI such as "exec:cat FILE"), QEMU takes
        the guest from a migration instead of booting it: wait until it runs.
        """
        t0 = time.monotonic()
        argv = self.argv()
        if incoming:
            argv += ["-incoming", incoming]
        (self.workdir / "qemu.cmd").write_text(" ".join(argv) + "\n")
        self.stderr = open(self.workdir / "qemu.log", "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=self.stderr, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent)
        try:
            self.qmp.connect()
            self.guest.connect()
        except (OSError, TimeoutError):
            return False
        if incoming:
            while self.qmp.cmd("query-status")["status"] != "running":
                if not self.alive() or time.monotonic() - t0 > timeout:
                    return False
                time.sleep(0.2)
        elif not self.guest.wait_ready(timeout, alive=self.alive):
            return False
        self.boot_time = time.monotonic() - t0
        return True

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None:
            return
        if self.alive():
            try:
                self.qmp.cmd("quit", timeout=5)
            except Exception:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.qmp.close()
        self.guest.close()
        self.stderr.close()
        if self.sockdir != self.workdir:
            shutil.rmtree(self.sockdir, ignore_errors=True)

    def qemu_log(self):
        return (self.workdir / "qemu.log").read_text(errors="replace")

    def rss(self):
        """Host memory of the QEMU process in kB: VmRSS, RssAnon, AnonHugePages."""
        out = {}
        for name in ("status", "smaps_rollup"):
            for line in Path(f"/proc/{self.proc.pid}/{name}").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "AnonHugePages") and rest.strip().endswith("kB"):
                    out[key] = int(rest.split()[0])
        return out


def boot(kver, initrd, config, workdir, accel, attempts=2, log=lambda s: None,
         host=None):
    """Boot a guest on the QEMU host (by default HOST_QEMU's), retrying
    once (TCG occasionally oopses in early boot).

    Returns (vm, None) or (None, failed_vm_of_the_last_attempt).
    """
    last = None
    for attempt in range(1, attempts + 1):
        vm = VM(kver, initrd, config, Path(f"{workdir}-a{attempt}"), accel, host)
        if vm.start():
            return vm, None
        log(f"boot attempt {attempt} of {kver} [{config.describe()}] failed")
        vm.stop()
        last = vm
    return None, last


def probe_kvm(kver, initrd, workdir, timeout=30, host=None):
    """'kvm' if /dev/kvm exists and boots a guest within timeout, else 'tcg'.

    Only a guest of the host's own architecture can use KVM.
    """
    if not native(kver) or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    vm = VM(kver, initrd, VMConfig.make(mem=256, smp=1), workdir, accel="kvm", host=host)
    try:
        return "kvm" if vm.start(timeout) else "tcg"
    finally:
        vm.stop()
