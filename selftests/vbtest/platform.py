# SPDX-License-Identifier: GPL-2.0
"""Guest architectures: what differs between an x86_64 and an arm64 guest.

Everything else in the harness is the same for both; a kernel's platform
follows from its release string (Debian's arm64 kernels end in -arm64 or
-arm64-16k).  x86_64 kernels are the host's own, installed under /boot and
/lib/modules, or other Debian suites' (5.10, 7.x) unpacked under
$VB_CACHE/x86/root by scripts/kernels.sh setup; arm64 kernels are Debian's
packages unpacked (not installed) under build/arm64/root by
scripts/arm64.sh --guest.
"""
import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
ARM64_ROOT = REPO / "build" / "arm64" / "root"
DEBUG_ROOT = REPO / "build" / "debug" / "root"
VB_CACHE = Path(os.environ.get("VB_CACHE") or "/var/cache/vballoon")
SUITES_ROOT = VB_CACHE / "x86" / "root"


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


def available(plat):
    """Whether this host can run guests of plat (QEMU and busybox there)."""
    return any(os.access(Path(d) / plat.qemu, os.X_OK)
               for d in os.environ.get("PATH", "/usr/bin").split(":")) \
        and plat.busybox.exists()
