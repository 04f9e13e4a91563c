# SPDX-License-Identifier: GPL-2.0
"""Guest architectures: what differs between an x86_64 and an arm64 guest.

Everything else in the harness is the same for both; a kernel's platform
follows from its release string (Debian's arm64 kernels end in -arm64 or
-arm64-16k).  x86_64 kernels are the host's own, installed under /boot and
/lib/modules, or other Debian suites' (5.10, 7.x) unpacked under
$VB_CACHE/x86/root by scripts/kernels.sh setup; arm64 kernels are Debian's
packages unpacked (not installed) under build/arm64/root by
scripts/arm64.sh --guest.

A guest runs on a QEMU host (Host): this machine's own QEMU (7.2 on
Debian 12), or one that scripts/hosts.sh set up from another release
(Debian 13's 10.0, run through its own root's loader by a wrapper under
$VB_CACHE/qemu/*-bin). HOST_QEMU names the one to use by default.
"""
import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
ARM64_ROOT = REPO / "build" / "arm64" / "root"
DEBUG_ROOT = REPO / "build" / "debug" / "root"
VB_CACHE = Path(os.environ.get("VB_CACHE") or "/var/cache/vballoon")
SUITES_ROOT = VB_CACHE / "x86" / "root"
HOSTS_DIR = VB_CACHE / "qemu"


@dataclass(frozen=True)
class Host:
    """A QEMU to run guests with."""
    name: str               # its major.minor, e.g. "7.2", "10.0"
    version: str            # e.g. "7.2.22"
    bindir: Path = None     # its qemu-system-* wrappers; None: from PATH

    @property
    def system(self):
        """This machine's own QEMU (the one make deps installs)."""
        return self.bindir is None

    @property
    def version_tuple(self):
        return tuple(int(x) for x in self.name.split("."))

    def qemu(self, binary):
        """The command that runs binary (e.g. qemu-system-x86_64) here."""
        return binary if self.bindir is None else str(self.bindir / binary)

    def has(self, binary):
        if self.bindir is None:
            return shutil.which(binary) is not None
        return os.access(self.bindir / binary, os.X_OK)

    def __str__(self):
        return f"QEMU {self.version}" + ("" if self.system else f" ({self.bindir})")


def _short(version):
    return ".".join(version.split(".")[:2])


@functools.lru_cache(maxsize=None)
def hosts():
    """Every QEMU host found here: this machine's own first (if it has
    one), then those of scripts/hosts.sh, without a second of the same
    version."""
    out = []
    for binary in ("qemu-system-x86_64", "qemu-system-aarch64"):
        if shutil.which(binary):
            r = subprocess.run([binary, "--version"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
            m = re.search(r"version (\d+\.\d+(?:\.\d+)?)", r.stdout)
            if m:
                out.append(Host(_short(m.group(1)), m.group(1)))
                break
    for f in sorted(HOSTS_DIR.glob("*-bin/version")):
        version = f.read_text().strip()
        if version and all(h.name != _short(version) for h in out):
            out.append(Host(_short(version), version, f.parent))
    return out


def host(name=None):
    """The host called name (its major.minor or full version), by default
    HOST_QEMU's, or this machine's own QEMU. Exits naming the hosts there
    are when there is none of that name."""
    name = name or os.environ.get("HOST_QEMU") or None
    found = hosts()
    if name is None:
        if found:
            return found[0]
        raise SystemExit("no QEMU here (run make deps)")
    name = name.removeprefix("qemu-")
    for h in found:
        if name in (h.name, h.version):
            return h
    raise SystemExit(f"no QEMU host {name!r} here (there are: "
                     f"{', '.join(h.name for h in found) or 'none'}; make deps "
                     "sets up scripts/hosts.sh's)")


@dataclass(frozen=True)
class Platform:
    name: str              # "x86_64" or "arm64"
    root: Path             # where boot/vmlinuz-* and lib/modules/* live
    qemu: str
    machine: tuple         # QEMU machine/CPU arguments before -accel
    console: str           # the guest's first serial port (its console)
    agent_dev: str         # the guest device the agent talks on
    cc: str                # compiler for the static guest programs
    busybox: Path
    tags: tuple = ()       # what @case(arches=...) may name besides name
    cmdline: str = ""      # added to every guest's kernel command line
    mem_extra: int = 0     # MiB of RAM added to every guest (Context.keep)
    pci_cmdline: str = ""  # added on machines with PCI (not microvm)

    def kernel(self, kver):
        return self.root / "boot" / f"vmlinuz-{kver}"

    def modules(self, kver):
        return self.root / "lib" / "modules" / kver

    def agent_args(self, sock, mmio=False):
        """QEMU arguments for the agent's channel, a server socket at sock;
        mmio: on virtio-mmio (microvm) rather than PCI."""
        chardev = f"socket,id=agent,path={sock},server=on,wait=off"
        if self.name == "x86_64" and not mmio:
            return ["-chardev", chardev, "-serial", "chardev:agent"]
        # virt and microvm have one UART: the agent gets a virtio console
        # (/dev/hvc0)
        serial = "virtio-serial-device" if mmio else "virtio-serial-pci"
        return ["-chardev", chardev, "-device", f"{serial},id=vser0",
                "-device", "virtconsole,chardev=agent,bus=vser0.0"]

    def kernels(self):
        """Release strings of the kernels of this platform found here."""
        boot = self.root / "boot"
        out = []
        for p in sorted(boot.glob("vmlinuz-*")):
            kver = p.name[len("vmlinuz-"):]
            if platform_of(kver) is self and self.modules(kver).is_dir():
                out.append(kver)
        return out


X86_64 = Platform("x86_64", Path("/"), "qemu-system-x86_64", (), "ttyS0",
                  "/dev/ttyS1", "gcc", Path("/bin/busybox"))
# Other suites' x86_64 kernels (scripts/kernels.sh): guests like the host's.
X86_SUITES = Platform("x86_64", SUITES_ROOT, "qemu-system-x86_64", (), "ttyS0",
                      "/dev/ttyS1", "gcc", Path("/bin/busybox"))
# GICv3 with its ITS, as arm64 cloud hosts have (virtio-pci devices with
# MSI-X vectors use it).
ARM64 = Platform("arm64", ARM64_ROOT, "qemu-system-aarch64",
                 ("-M", "virt,gic-version=3"),
                 "ttyAMA0", "/dev/hvc0", "aarch64-linux-gnu-gcc",
                 ARM64_ROOT / "bin" / "busybox")
# The debug kernel of make check-debug (scripts/debug-kernel.sh): x86_64,
# built here, installed under build/debug/root. Every x86_64 case runs on
# it, and the cases for "debug" (kmemleak, fault injection) only there.
# Its RCU stall timeout is the longest there is: TCG runs the vCPUs of a
# KASAN kernel one after the other, and a stall of 65 s (6500 jiffies) was
# seen at boot, in virtio_mmio's init, with nothing of the balloon loaded.
# acpi=noirq: under KASAN and lockdep the AML interpreter runs the PIIX
# _PRT method's loop past ACPICA's 30 s limit (AE_AML_LOOP_TIMEOUT) and the
# balloon's PCI INT A gets no GSI, hence no interrupt; the BIOS's $PIR
# table routes it instead. Not on microvm: no PCI there, and its
# virtio-mmio devices take their interrupts from ACPI (with acpi=noirq the
# agent's virtio console never appeared).
# no5lvl: with -cpu max the kernel runs 5-level paging, and identify_cpu()
# rebuilds the boot CPU's feature bits, LA57 among them, with interrupts
# on; an interrupt in that window (1 boot in 11) had KASAN judge the
# 5-level direct map by the 4-level layout: "BUG: KASAN: wild-memory-access
# in do_raw_spin_lock" at 0.004 s, before any module.
# 256 MiB more RAM: KASAN's shadow takes an eighth of it and the debug
# options' own objects about 150 MiB more; a 1 GiB guest's balloon stopped
# at 334-362 MiB on targets of 256 MiB. Cases name low targets with
# Context.keep(), which adds the same 256 MiB: the balloon holds as much
# as on the other platforms.
X86_DEBUG = Platform("x86_64", DEBUG_ROOT, "qemu-system-x86_64", (), "ttyS0",
                     "/dev/ttyS1", "gcc", Path("/bin/busybox"), ("debug",),
                     "rcupdate.rcu_cpu_stall_timeout=300 no5lvl", 256, "acpi=noirq")
# Found without --kernel; the debug kernel is asked for by name.
PLATFORMS = (X86_64, X86_SUITES, ARM64)


def platform_of(kver):
    """The platform a kernel release string belongs to."""
    if kver.endswith("-arm64") or kver.endswith("-arm64-16k"):
        return ARM64
    if kver.endswith("-vbdebug"):
        return X86_DEBUG
    # the host's own kernel wins over a copy of the same release
    if not X86_64.kernel(kver).exists() and X86_SUITES.kernel(kver).exists():
        return X86_SUITES
    return X86_64


def runs_on(kver, arches):
    """Whether a case declared for arches runs on kver's guests."""
    plat = platform_of(kver)
    return plat.name in arches or any(t in arches for t in plat.tags)


def native(kver):
    """Whether kver's guests have the host's architecture (KVM possible)."""
    return platform_of(kver).name == os.uname().machine


def page_size(kver):
    """The guest's page size in bytes, from the kernel's configuration."""
    cfg = platform_of(kver).root / "boot" / f"config-{kver}"
    if cfg.exists():
        text = cfg.read_text()
        for size, opt in ((16384, "CONFIG_ARM64_16K_PAGES=y"),
                          (65536, "CONFIG_ARM64_64K_PAGES=y")):
            if opt in text:
                return size
    return 4096


def all_kernels():
    """Every kernel of every platform with an image and modules here."""
    return [k for p in PLATFORMS for k in p.kernels()]


def available(plat, qemu_host=None):
    """Whether the QEMU host (by default host()) can run guests of plat
    (its QEMU for them, and busybox here)."""
    return (qemu_host or host()).has(plat.qemu) and plat.busybox.exists()
