# SPDX-License-Identifier: GPL-2.0
"""Guest image: static guest programs and a cached, per-kernel initramfs.

The initramfs is a plain (uncompressed) newc cpio written here, so neither
cpio(1) nor root is needed.  It is cached under build/selftests/initramfs by
the hash of everything that goes into it.
"""
import hashlib
import lzma
import os
import re
import subprocess
from pathlib import Path

from .platform import X86_64, platform_of

SELFTESTS = Path(__file__).resolve().parent.parent
GUEST_SRC = SELFTESTS / "guest"
BUSYBOX = X86_64.busybox

# Loaded by /init (with their dependencies) unless built in.
TRANSPORT = ["virtio", "virtio_ring", "virtio_pci_legacy_dev",
             "virtio_pci_modern_dev", "virtio_pci", "virtio_mmio",
             "virtio_console"]

CFLAGS = ["-static", "-O2", "-Wall", "-Wextra"]
KEEP_IMAGES = 4


def build_guest_programs(outdir, plat=X86_64):
    """Compile selftests/guest/*.c for plat into outdir (when stale);
    {name: path}."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    progs = {}
    for src in sorted(GUEST_SRC.glob("*.c")):
        exe = outdir / src.stem
        if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
            tmp = exe.with_suffix(".tmp")
            subprocess.run([plat.cc, *CFLAGS, "-o", str(tmp), str(src)], check=True)
            os.replace(tmp, exe)
        progs[src.stem] = exe
    return progs


def module_name(path):
    """'kernel/drivers/virtio/virtio_pci.ko.xz' -> 'virtio_pci'."""
    base = os.path.basename(str(path))
    return re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base).replace("-", "_")


def read_module(path):
    """The module as plain ELF (busybox insmod cannot decompress)."""
    path = str(path)
    if path.endswith(".xz"):
        with lzma.open(path) as f:
            return f.read()
    if path.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", path], check=True,
                              stdout=subprocess.PIPE).stdout
    if path.endswith(".gz"):
        import gzip
        with gzip.open(path) as f:
            return f.read()
    return Path(path).read_bytes()


def modinfo(data):
    """The .modinfo key=value strings of a module (first value per key)."""
    info = {}
    for m in re.finditer(rb"(?:^|\0)(vermagic|depends|name)=([^\0]*)", data):
        info.setdefault(m.group(1).decode(), m.group(2).decode(errors="replace"))
    return info


class KernelModules:
    """modules.dep / modules.builtin of one kernel (installed, or unpacked
    for another architecture)."""

    def __init__(self, kver):
        self.root = platform_of(kver).modules(kver)
        self.deps = {}
        self.paths = {}
        for line in (self.root / "modules.dep").read_text().splitlines():
            mod, _, deps = line.partition(":")
            name = module_name(mod)
            self.paths[name] = mod
            self.deps[name] = [module_name(d) for d in deps.split()]
        builtin = self.root / "modules.builtin"
        self.builtin = set()
        if builtin.exists():
            self.builtin = {module_name(l) for l in builtin.read_text().split()}

    def path(self, name):
        return self.root / self.paths[name] if name in self.paths else None

    def load_order(self, names):
        """Loadable modules for names, dependencies first; built-ins skipped."""
        order = []

        def visit(name):
            if name in order or name in self.builtin:
                return
            if name not in self.deps:
                raise FileNotFoundError(f"module {name} not found in {self.root}")
            for dep in self.deps[name]:
                visit(dep)
            order.append(name)

        for n in names:
            visit(n)
        return order


class Cpio:
    """Minimal newc archive writer."""

    def __init__(self):
        self.entries = []   # (name, mode, data, rdev)

    def dir(self, name, mode=0o755):
        self.entries.append((name, 0o040000 | mode, b"", (0, 0)))

    def file(self, name, data, mode=0o644):
        self.entries.append((name, 0o100000 | mode, data, (0, 0)))

    def symlink(self, name, target):
        self.entries.append((name, 0o120777, target.encode(), (0, 0)))

    def chardev(self, name, major, minor, mode=0o600):
        self.entries.append((name, 0o020000 | mode, b"", (major, minor)))

    def digest(self):
        h = hashlib.sha256()
        for name, mode, data, rdev in self.entries:
            h.update(f"{name}\0{mode}\0{rdev}\0{len(data)}\0".encode())
            h.update(data)
        return h.hexdigest()

    def write(self, path):
        tmp = Path(str(path) + ".tmp")
        with open(tmp, "wb") as f:
            ino = 1
            for name, mode, data, (major, minor) in self.entries + [("TRAILER!!!", 0, b"", (0, 0))]:
                nameb = name.encode() + b"\0"
                fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, major, minor, len(nameb), 0]
                hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
                f.write(hdr + nameb + b"\0" * ((-len(hdr) - len(nameb)) % 4))
                f.write(data + b"\0" * (-len(data) % 4))
                ino += 1
        os.replace(tmp, path)


def build_initramfs(kver, driver_ko, cachedir, progs):
    """Build (or reuse) the initramfs for kver; returns its path.

    driver_ko: path of the balloon module to install as /lib/<name>.ko.  Its
    own dependencies (from .modinfo depends=) are loaded by /init with the
    transport; the balloon module itself is not.
    """
    kmods = KernelModules(kver)
    plat = platform_of(kver)
    drv = read_module(driver_ko)
    drv_name = modinfo(drv).get("name") or module_name(driver_ko)
    drv_deps = [d for d in modinfo(drv).get("depends", "").split(",") if d]
    wanted = [m for m in TRANSPORT if m in kmods.deps or m in kmods.builtin]
    order = kmods.load_order(wanted + drv_deps)

    c = Cpio()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp", "root"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3, 0o666)
    c.file("init", (GUEST_SRC / "init.sh").read_bytes(), 0o755)
    c.file("bin/busybox", plat.busybox.read_bytes(), 0o755)
    # The applet list comes from the host's busybox-static: an arm64 one
    # cannot run here, and Debian builds both from the same configuration.
    applets = subprocess.run([str(BUSYBOX), "--list"], check=True,
                             stdout=subprocess.PIPE, text=True).stdout.split()
    for a in sorted(set(applets) - set(progs) - {"busybox"}):
        c.symlink(f"bin/{a}", "busybox")
    c.symlink("sbin", "bin")
    for name, exe in sorted(progs.items()):
        c.file(f"bin/{name}", Path(exe).read_bytes(), 0o755)
    for m in order:
        c.file(f"lib/modules/{m}.ko", read_module(kmods.path(m)))
    c.file("etc/modules", "".join(f"{m}.ko\n" for m in order).encode())
    # an unprivileged user, for cases that check what non-root may do
    c.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
           b"nobody:x:65534:65534:nobody:/tmp:/bin/sh\n")
    c.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    c.file(f"lib/{drv_name}.ko", drv)

    cachedir = Path(cachedir)
    cachedir.mkdir(parents=True, exist_ok=True)
    out = cachedir / f"{kver}-{drv_name}-{c.digest()[:16]}.cpio"
    if out.exists():
        out.touch()
    else:
        c.write(out)
    # keep the few most recent images per kernel and driver (another run may
    # still be about to boot one of them)
    old = sorted(cachedir.glob(f"{kver}-{drv_name}-*.cpio"),
                 key=lambda p: p.stat().st_mtime, reverse=True)[KEEP_IMAGES:]
    for p in old:
        p.unlink(missing_ok=True)
    return out, drv_name
