#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""vballoon the way a distribution ships it: tests of the Debian package
and of a Debian 12 guest booting with it.

On this machine (root): build vballoon-dkms_<VERSION>_all.deb from a copy of
the tree, lintian it, install it (DKMS builds and installs the module for
every kernel with headers), check dkms status and modinfo, purge it and check
that nothing is left; then make install / make uninstall for every kernel.

In QEMU: a Debian 12 root file system (debootstrap minbase + kmod + udev,
cached in $VB_CACHE/distro/) with the kernel's own modules, the DKMS-built
vballoon.ko in updates/dkms and the package's modprobe.d file, booted with
its own udev. udev must load vballoon and not virtio_balloon, the balloon
must follow QMP, "modprobe -r vballoon" must give a full balloon back, and
with the README's "Turning ballooning off" lines no driver may bind (and
"modprobe virtio_balloon" by name loads virtio_balloon, not vballoon).
Last, vballoon is taken out of the kernel's tree as DKMS leaves a kernel it
did not build for: udev must bind virtio_balloon, the balloon must follow
QMP, and the kernel log must say why.

With --upgrade (DISTRO_UPGRADE=1; --upgrade-only for this part alone): a
Debian 13 guest (debootstrap trixie with its 6.12 kernel, headers and dkms,
the package installed in a chroot of it, cached in $VB_CACHE/distro/) boots its
own kernel and initramfs, then apt installs trixie-backports' 7.x kernel and
headers from a local repository in the image, offline: DKMS must build
vballoon in the kernel's postinst, and the 7.x boot must bind vballoon.
Then the cloud flavour of that kernel, installed without headers, must boot
with virtio_balloon and the install rule's line naming it.

Secure Boot (--secureboot-only for this part alone; --no-secureboot skips
it): a Debian 12 guest (debootstrap bookworm with its signed kernel,
headers, dkms, shim-signed, grub-efi-amd64-signed and mokutil, the package
installed in a chroot of it, where DKMS signs vballoon with its own key;
cached in $VB_CACHE/secureboot) on a GPT disk with an EFI system partition,
booted by OVMF with Microsoft's keys and the DKMS key in MokList, as
MokManager leaves it. Secure Boot must be on and the kernel locked down,
the key in the kernel's keyrings, vballoon bound, signed by it and
following QMP; an unsigned vballoon and one signed with another key are
refused; and at a boot where vballoon is refused (the key not enrolled, an
unsigned module in its place) udev binds virtio_balloon and the install
rule logs modprobe's error.

Output is TAP; the last line is "N passed, N failed".  See
selftests/README.md and Documentation/installation.rst.
"""
import argparse
import dataclasses
import fcntl
import hashlib
import inspect
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).resolve().parent))

from vbtest import initramfs, tap  # noqa: E402
from vbtest.guest import GuestDead, GuestError  # noqa: E402
from vbtest.qmp import BALLOON_QOM, QMPError  # noqa: E402
from vbtest.platform import VB_CACHE, X86_64  # noqa: E402
from vbtest.vm import BASE_CMDLINE, VM, VMConfig, boot, console_problems, probe_kvm  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent / "distro"
BUILD = REPO / "build" / "distro"
# Root file systems and images outlive the clone, as the kernels do.
CACHE = VB_CACHE / "distro"
PKG = "vballoon-dkms"
SUITE = "bookworm"
DEBOOTSTRAP = ["--variant=minbase", "--include=kmod,udev"]
BALLOON_ALIAS = "virtio:d00000005v00001AF4"
MODPROBE_CONF = Path("/etc/modprobe.d/vballoon.conf")
# The kernel log lines of modprobe.d/vballoon.conf's install rule.
LOG_TAG = "modprobe.d/vballoon.conf: "
LOG_VBALLOON = LOG_TAG + "vballoon loaded in place of virtio_balloon"
LOG_BLACKLISTED = LOG_TAG + "vballoon is blacklisted: loading virtio_balloon"
LOG_MISSING = LOG_TAG + "no vballoon for kernel {kver}: loading virtio_balloon"
MiB = 1 << 20
GUEST_MIB = 1024
INFLATE_MIB = 256
TAIL = 30
APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300"]


class Fail(Exception):
    """A check failed."""


class Skip(Exception):
    """A step cannot run here."""


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def sh(argv, log=None, ok=(0,), **kw):
    """Run argv; returns stdout+stderr.  Output also goes to log (a Path)."""
    p = subprocess.run([str(a) for a in argv], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, **kw)
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(shlex.quote(str(a)) for a in argv)}\n{p.stdout}"
                    f"[exit {p.returncode}]\n")
    if p.returncode not in ok:
        tail = "\n".join(p.stdout.splitlines()[-TAIL:])
        raise Fail(f"{' '.join(str(a) for a in argv)}: exit {p.returncode}\n{tail}")
    return p.stdout


# -- TAP ----------------------------------------------------------------------
class Tap(tap.Tap):
    """TAP output of the steps; the plan line comes last."""

    def step(self, name, fn, *args):
        """Run fn(note, *args) as one test; returns its value or None."""
        notes = []
        t0 = time.monotonic()
        status, why, value = "ok", [], None
        try:
            value = fn(notes.append, *args)
        except Skip as e:
            status, why = "skip", [str(e)]
        except Fail as e:
            status, why = "fail", str(e).splitlines()
        except (GuestError, GuestDead, QMPError, TimeoutError, OSError) as e:
            status, why = "fail", f"{type(e).__name__}: {e}".splitlines()
        except Exception:
            status, why = "fail", traceback.format_exc().splitlines()
        secs = time.monotonic() - t0
        with self.lock:
            self.line(name, status, why, secs)
            lines = list(why) if status == "fail" else []
            if status == "fail" or self.verbose:
                lines += notes + [f"time {secs:.1f} s"]
            self.comment(lines)
        return value if status == "ok" else None

    def summary(self, wall):
        print(f"1..{self.n}")
        return self.totals(wall, 4)


def readme_blacklist():
    """(file, lines) of README.md's "Turning ballooning off" section."""
    text = (REPO / "README.md").read_text()
    m = re.search(r"^## Turning ballooning off\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    check(m, "README.md has no '## Turning ballooning off' section")
    sec = m.group(1)
    f = re.search(r"`(/etc/modprobe\.d/[^`]+\.conf)`", sec)
    check(f, "README.md's 'Turning ballooning off' names no /etc/modprobe.d/*.conf file")
    lines = [l[4:] for l in sec.splitlines() if l.startswith("    ") and l.strip()]
    return f.group(1), lines


def rst_blacklist(path):
    """(file, lines) of the "Turning ballooning off" section of an .rst file,
    or None when it has no such section."""
    text = path.read_text()
    m = re.search(r"^Turning ballooning off\n=+\n(.*?)(?=^\S[^\n]*\n[=-]+\n|\Z)",
                  text, re.M | re.S)
    if not m:
        return None
    sec = m.group(1)
    f = re.search(r"``(/etc/modprobe\.d/[^`]+\.conf)``", sec)
    check(f, f"{path.name}: 'Turning ballooning off' names no /etc/modprobe.d/*.conf file")
    block = re.search(r"::\n\n((?:(?:[ \t]+\S[^\n]*)?\n)+)", sec[f.end():])
    check(block, f"{path.name}: no literal block after {f.group(1)}")
    lines = [l.strip() for l in block.group(1).splitlines() if l.strip()]
    return f.group(1), lines


def step_docs(note):
    """README.md's lines, and every Documentation/*.rst that tells how to turn
    ballooning off (installation.rst must) says the same."""
    name, lines = readme_blacklist()
    note(f"README.md: {name}: {lines}")
    for drv in ("virtio_balloon", "vballoon"):
        check(f"blacklist {drv}" in lines,
              f"README.md's blacklist block lacks 'blacklist {drv}': {lines}")
    check("Documentation/installation.rst" in (REPO / "README.md").read_text(),
          "README.md does not point to Documentation/installation.rst")
    docs = REPO / "Documentation"
    check(rst_blacklist(docs / "installation.rst"),
          "installation.rst has no 'Turning ballooning off' section")
    for rst in sorted(docs.glob("*.rst")):
        got = rst_blacklist(rst)
        if got is not None:
            note(f"{rst.name}: {got[0]}: {got[1]}")
            check(got == (name, lines),
                  f"{rst.name} ({got[0]}: {got[1]}) and README.md ({name}: {lines}) differ")
    return name, lines


def step_version(note):
    version = (REPO / "VERSION").read_text().strip()
    changelog = sh(["dpkg-parsechangelog", "-l", REPO / "debian" / "changelog",
                    "-S", "Version"]).strip()
    note(f"VERSION {version}, debian/changelog {changelog}")
    check(changelog == version,
          f"debian/changelog is at {changelog}, VERSION at {version}: "
          f"add a changelog entry (dch -v {version})")
    conf = (REPO / "dkms.conf").read_text()
    check(re.search(r'^PACKAGE_VERSION="#MODULE_VERSION#"$', conf, re.M),
          "dkms.conf must take its version from VERSION "
          "(PACKAGE_VERSION=\"#MODULE_VERSION#\")")
    check(re.search(r'^PACKAGE_NAME="vballoon"$', conf, re.M),
          "dkms.conf: PACKAGE_NAME is not vballoon")
    return version


# -- the package on this machine -------------------------------------------------
def kernels_with_headers():
    return sorted(p.parent.name for p in Path("/lib/modules").glob("*/build")
                  if (p / "Makefile").exists())


def vballoon_leftovers(version):
    """What of vballoon is installed on this machine."""
    found = []
    st = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", PKG],
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if st.returncode == 0 and st.stdout.strip() not in ("", "un", "pn"):
        found.append(f"package {PKG} ({st.stdout.strip()})")
    for p in (Path("/var/lib/dkms/vballoon"), Path(f"/usr/src/vballoon-{version}"),
              MODPROBE_CONF):
        if p.exists():
            found.append(str(p))
    found += [str(p) for p in sorted(Path("/lib/modules").glob("*/updates/**/vballoon.ko*"))]
    return found


def copy_tree(dst):
    """The checkout's files (tracked and untracked, not ignored) into dst."""
    dst.mkdir(parents=True)
    git = subprocess.run(["git", "-C", REPO, "ls-files", "-z", "-c", "-o",
                          "--exclude-standard"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    if git.returncode == 0 and git.stdout:
        for rel in git.stdout.decode().split("\0"):
            src = REPO / rel
            if rel and src.is_file():
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst / rel)
    else:       # not a git checkout (a tarball): everything but build products
        shutil.rmtree(dst)
        shutil.copytree(REPO, dst, symlinks=True, ignore=shutil.ignore_patterns(
            "build", ".git", "__pycache__", "*.o", "*.ko", "*.mod", "*.mod.c",
            ".*.cmd", "*.order", "*.symvers"))


class Package:
    def __init__(self, run, version):
        self.run, self.version = run, version
        self.dir = run / "pkg"
        self.log = run / "package.log"
        self.deb = self.dir / f"{PKG}_{version}_all.deb"
        self.installed = False
        self.kernels = kernels_with_headers()
        self.modules = {}       # kver -> copy of the DKMS-built module
        self.conf = None        # copy of the installed modprobe.d file

    def build(self, note):
        # make deb builds in a copy of the sources: the tree stays clean.
        t0 = time.monotonic()
        sh(["make", "-C", REPO, "deb", f"DEB_DIR={self.dir}"], log=self.log)
        note(f"make deb (dpkg-buildpackage -us -uc -b): {time.monotonic() - t0:.1f} s")
        check(self.deb.exists(), f"no {self.deb.name}; built: "
              f"{sorted(p.name for p in self.dir.glob('*.deb'))}")
        fields = sh(["dpkg-deb", "-f", self.deb, "Package", "Version", "Architecture",
                     "Depends"])
        note(fields.strip())
        check(f"Version: {self.version}\n" in fields, f"{self.deb.name}: {fields}")
        files = sh(["dpkg-deb", "-c", self.deb])
        for want in (f"./usr/src/vballoon-{self.version}/dkms.conf",
                     f"./usr/src/vballoon-{self.version}/Makefile",
                     f"./usr/src/vballoon-{self.version}/Kbuild",
                     f"./usr/src/vballoon-{self.version}/VERSION",
                     f".{MODPROBE_CONF}"):
            check(re.search(rf" {re.escape(want)}$", files, re.M),
                  f"{self.deb.name} lacks {want}:\n{files}")
        conffiles = sh(["dpkg-deb", "--info", self.deb, "conffiles"])
        check(str(MODPROBE_CONF) in conffiles,
              f"{MODPROBE_CONF} is not a conffile (purge would leave it): {conffiles!r}")
        return self.deb

    def lintian(self, note):
        changes = next(self.dir.glob("*.changes"), None)
        check(changes, "no .changes file from dpkg-buildpackage")
        out = sh(["lintian", "--pedantic", "--display-info", "--display-experimental",
                  changes], log=self.log, ok=(0, 1),
                 env=dict(os.environ, LANG="C.UTF-8"))
        tags = [l for l in out.splitlines() if re.match(r"^[EWIPXNO]: ", l)]
        for t in tags:
            note(t)
        errors = [t for t in tags if t.startswith("E: ")]
        check(not errors, "lintian errors:\n" + "\n".join(errors))
        note(f"lintian: {len(tags)} tags, no errors" if tags else "lintian: no tags")

    def install(self, note):
        check(self.deb.exists(), "no package was built")
        left = vballoon_leftovers(self.version)
        check(not left, "vballoon is already installed on this machine; the test "
              "will not touch an installation it did not make. Remove it first "
              f"(apt-get purge {PKG}; make dkms-remove; make uninstall KVER=...):\n  "
              + "\n  ".join(left))
        check(self.kernels, "no kernel headers in /lib/modules/*/build")
        t0 = time.monotonic()
        self.installed = True
        out = sh(APT + ["install", "--no-install-recommends", self.deb.resolve()],
                 log=self.log, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        note(f"apt-get install ./{self.deb.name}: {time.monotonic() - t0:.1f} s")
        note("\n".join(l for l in out.splitlines() if "Building for" in l))
        status = sh(["dkms", "status", "vballoon"])
        note("dkms status:\n" + "\n".join(l for l in status.splitlines()
                                           if l.startswith("vballoon")))
        for kver in self.kernels:
            check(re.search(rf"^vballoon/{re.escape(self.version)}, {re.escape(kver)}, "
                            r"\S+: installed", status, re.M),
                  f"dkms status does not show vballoon installed for {kver}:\n{status}")
            info = sh(["modinfo", "-k", kver, "vballoon"])
            fields = dict((k.strip(), v.strip()) for k, _, v in
                          (l.partition(":") for l in info.splitlines()) if v)
            path = fields.get("filename", "")
            note(f"modinfo -k {kver}: {path}, version {fields.get('version')}, "
                 f"vermagic {fields.get('vermagic')}")
            check(re.fullmatch(rf"/lib/modules/{re.escape(kver)}/updates/dkms/"
                               r"vballoon\.ko(\.xz|\.zst|\.gz)?", path),
                  f"modinfo -k {kver} vballoon: {path}, not the DKMS module")
            check(fields.get("version") == self.version,
                  f"{path}: version {fields.get('version')}, want {self.version}")
            check(fields.get("vermagic", "").split(" ")[0] == kver,
                  f"{path}: vermagic {fields.get('vermagic')}")
            # What udev would load for the balloon: vballoon, and for
            # virtio_balloon the install rule instead of the module.
            dry = sh(["modprobe", "-S", kver, "--dry-run", "--show-depends",
                      BALLOON_ALIAS])
            loads = [Path(l.split()[1]).name for l in dry.splitlines()
                     if l.startswith("insmod ")]
            rules = [l for l in dry.splitlines() if l.startswith("install ")]
            note(f"modprobe -S {kver} --show-depends {BALLOON_ALIAS}: {loads}, "
                 f"{len(rules)} install rule(s)")
            check(any(n.startswith("vballoon.ko") for n in loads)
                  and not any(n.startswith("virtio_balloon.ko") for n in loads)
                  and len(rules) == 1 and "modprobe vballoon" in rules[0],
                  f"the balloon's alias resolves to {loads}, {rules} on {kver}")
            keep = self.run / "artifacts" / kver
            keep.mkdir(parents=True, exist_ok=True)
            self.modules[kver] = Path(shutil.copy2(path, keep))
        check(MODPROBE_CONF.exists(), f"{MODPROBE_CONF} not installed")
        check(MODPROBE_CONF.read_text() == (REPO / "modprobe.d" / "vballoon.conf").read_text(),
              f"{MODPROBE_CONF} is not the tree's modprobe.d/vballoon.conf")
        check(re.search(r"^install virtio_balloon ", MODPROBE_CONF.read_text(), re.M)
              and not re.search(r"^blacklist", MODPROBE_CONF.read_text(), re.M),
              f"{MODPROBE_CONF} has no install rule for virtio_balloon, or a blacklist")
        self.conf = Path(shutil.copy2(MODPROBE_CONF, self.run / "artifacts" / "vballoon.conf"))
        conf = Path(f"/usr/src/vballoon-{self.version}/dkms.conf").read_text()
        check(f'PACKAGE_VERSION="{self.version}"' in conf,
              f"installed dkms.conf has no PACKAGE_VERSION=\"{self.version}\"")

    def purge(self, note):
        check(self.installed, "the package was not installed")
        t0 = time.monotonic()
        sh(APT + ["purge", PKG], log=self.log,
           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        self.installed = False
        note(f"apt-get purge {PKG}: {time.monotonic() - t0:.1f} s")
        left = vballoon_leftovers(self.version)
        check(not left, "left after the purge:\n  " + "\n  ".join(left))
        status = sh(["dkms", "status", "vballoon"])
        check("vballoon" not in status, f"dkms status still shows: {status}")
        for kver in self.kernels:
            r = subprocess.run(["modinfo", "-k", kver, "-F", "filename", "vballoon"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            check(r.returncode != 0, f"modinfo -k {kver} still finds {r.stdout.strip()}")

    def cleanup(self):
        """After an error: do not leave the package on the machine."""
        if self.installed:
            subprocess.run(["dpkg", "--purge", PKG], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            self.installed = False


def step_make_install(note, run, version, kernels):
    """make install / make uninstall KVER=... from a copy of the tree."""
    left = vballoon_leftovers(version)
    check(not left, "vballoon is already installed:\n  " + "\n  ".join(left))
    src = run / "make-install"
    copy_tree(src)
    log = run / "make-install.log"
    installed = []
    try:
        for kver in kernels:
            t0 = time.monotonic()
            installed.append(kver)
            sh(["make", "-C", src, f"KVER={kver}", "install"], log=log)
            path = sh(["modinfo", "-k", kver, "-F", "filename", "vballoon"]).strip()
            vermagic = sh(["modinfo", "-k", kver, "-F", "vermagic", "vballoon"]).split(" ")[0]
            note(f"make install KVER={kver}: {path} ({time.monotonic() - t0:.1f} s)")
            check(re.fullmatch(rf"/lib/modules/{re.escape(kver)}/updates/vballoon\.ko(\.xz)?",
                               path), f"modinfo -k {kver}: {path}")
            check(vermagic == kver, f"{path}: vermagic {vermagic}")
            check(MODPROBE_CONF.read_text() ==
                  (REPO / "modprobe.d" / "vballoon.conf").read_text(),
                  f"{MODPROBE_CONF} is not modprobe.d/vballoon.conf")
    finally:
        for kver in installed:
            sh(["make", "-C", src, f"KVER={kver}", "uninstall"], log=log)
    left = vballoon_leftovers(version)
    check(not left, "left after make uninstall:\n  " + "\n  ".join(left))
    for kver in kernels:
        r = subprocess.run(["modinfo", "-k", kver, "vballoon"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        check(r.returncode != 0, f"modinfo -k {kver} still finds vballoon")
    note("make uninstall: module and modprobe.d file gone")


# -- the Debian guest -------------------------------------------------------------
def apt_mirror():
    """Debian's archive as this machine's APT reaches it: VB_MIRROR, or the
    sources in /etc/apt (scripts/mirror.sh); users sit behind local mirrors
    and caching proxies, so no archive host is named here."""
    return sh([REPO / "scripts" / "mirror.sh", "debian"]).strip()


def apt_env():
    """The environment for debootstrap and a chroot's apt: APT's HTTP proxy
    of this machine, if it has one, as http_proxy."""
    proxy = sh([REPO / "scripts" / "mirror.sh", "proxy"]).strip()
    return {"http_proxy": proxy} if proxy else {}


def umount_under(path):
    """Unmount whatever an interrupted debootstrap left mounted in path."""
    path = str(Path(path).resolve())
    mounts = [l.split()[1] for l in Path("/proc/self/mounts").read_text().splitlines()]
    for m in sorted((m for m in mounts if m == path or m.startswith(path + "/")),
                    reverse=True):
        subprocess.run(["umount", "-l", m])


def ensure_rootfs(note, mirror):
    """$VB_CACHE/distro/rootfs-bookworm.tar: made by debootstrap once, then reused."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tar = CACHE / f"rootfs-{SUITE}.tar"
    how = " ".join(DEBOOTSTRAP + [SUITE])
    stamp = CACHE / f"rootfs-{SUITE}.how"
    if tar.exists() and stamp.exists() and stamp.read_text().strip() == how:
        note(f"cached {tar} (debootstrap {how})")
        return tar
    mirror = mirror or apt_mirror()
    tmp = CACHE / f"rootfs-{SUITE}.tmp"
    umount_under(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.monotonic()
    sh(["debootstrap", *DEBOOTSTRAP, SUITE, tmp, mirror], log=CACHE / "debootstrap.log",
       env={**os.environ, **apt_env()})
    for deb in (tmp / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    sh(["tar", "--numeric-owner", "-C", tmp, "-cf", f"{tar}.tmp", "."])
    os.replace(f"{tar}.tmp", tar)
    stamp.write_text(how + "\n")
    shutil.rmtree(tmp)
    note(f"debootstrap {how} {mirror}: {time.monotonic() - t0:.0f} s, "
         f"{tar.stat().st_size >> 20} MiB")
    return tar


def link_tree(src, dst):
    """Hard-link (or copy) the files of src into dst."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            s, d = Path(dirpath) / name, dst / rel / name
            if s.is_symlink():
                os.symlink(os.readlink(s), d)
                continue
            try:
                os.link(s, d)
            except OSError:
                shutil.copy2(s, d)


def build_image(note, run, tar, modules, conf, agent):
    """A raw ext4 image: the root file system, the kernels' modules with the
    DKMS-built vballoon in updates/dkms, the package's modprobe.d file, and
    the test's init and agent."""
    t0 = time.monotonic()
    root = run / "root"
    root.mkdir()
    image = run / "rootfs.img"
    try:
        sh(["tar", "--numeric-owner", "-C", root, "-xf", tar])
        for kver, ko in sorted(modules.items()):
            src, dst = Path("/lib/modules") / kver, root / "usr/lib/modules" / kver
            dst.mkdir(parents=True)
            for f in src.iterdir():
                if f.is_file() and f.name.startswith("modules."):
                    shutil.copy2(f, dst)
            # The kernel's modules are only read (depmod writes the
            # modules.* copies above): hard links save copying them.
            link_tree(src / "kernel", dst / "kernel")
            (dst / "updates" / "dkms").mkdir(parents=True)
            shutil.copy2(ko, dst / "updates" / "dkms" / ko.name)
            sh(["depmod", "-b", root, kver])
        shutil.copy2(conf, root / "etc/modprobe.d/vballoon.conf")
        os.chmod(root / "etc/modprobe.d/vballoon.conf", 0o644)
        shutil.copy2(agent, root / "usr/local/sbin/vb-agent")
        shutil.copy2(HERE / "rootfs-init.sh", root / "usr/sbin/vb-init")
        os.chmod(root / "usr/sbin/vb-init", 0o755)
        (root / "etc/hostname").write_text("vballoon-distro\n")
        used = int(sh(["du", "-sxm", root]).split()[0])
        sh(["mkfs.ext4", "-q", "-F", "-L", "vbroot", "-d", root, image,
            f"{used * 5 // 4 + 512}M"], log=run / "image.log")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    note(f"{image.name}: {used} MiB of files ({', '.join(sorted(modules))}), "
         f"built in {time.monotonic() - t0:.1f} s")
    return image


def build_boot_initramfs(kver, out):
    """A small initramfs that mounts the root disk (virtio-blk, ext4)."""
    kmods = initramfs.KernelModules(kver)
    want = initramfs.TRANSPORT + ["virtio_blk", "crc32c_generic", "ext4"]
    order = kmods.load_order([m for m in want if m in kmods.deps or m in kmods.builtin])
    c = initramfs.Cpio()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "root"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3, 0o666)
    c.file("init", (HERE / "initramfs-init.sh").read_bytes(), 0o755)
    c.file("bin/busybox", initramfs.BUSYBOX.read_bytes(), 0o755)
    applets = sh([initramfs.BUSYBOX, "--list"]).split()
    for a in sorted(set(applets) - {"busybox"}):
        c.symlink(f"bin/{a}", "busybox")
    for m in order:
        c.file(f"lib/modules/{m}.ko", initramfs.read_module(kmods.path(m)))
    c.file("etc/modules", "".join(f"{m}.ko\n" for m in order).encode())
    c.write(out)
    return out


class DistroGuest:
    """One kernel's boots of the Debian image."""

    def __init__(self, run, kver, image, accel, blacklist):
        self.run, self.kver, self.accel = run, kver, accel
        self.blacklist = blacklist
        self.dir = run / kver
        self.dir.mkdir()
        self.initrd = build_boot_initramfs(kver, self.dir / "initramfs.cpio")
        self.disk = self.dir / "disk.qcow2"
        sh(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", image, self.disk])
        self.config = VMConfig.make(
            mem=GUEST_MIB, smp=2, cmdline="root=/dev/vda rw init=/usr/sbin/vb-init",
            qemu_args=["-drive", f"file={self.disk},if=virtio,format=qcow2"])
        self.vm = None
        self.boots = 0
        self.full = GUEST_MIB * MiB
        self.memtotal0 = None

    def boot(self, note):
        self.stop()
        self.boots += 1
        t0 = time.monotonic()
        vm, failed = boot(self.kver, self.initrd, self.config,
                          self.dir / f"boot{self.boots}", self.accel)
        if vm is None:
            raise Fail(f"boot {self.boots} of {self.kver} did not reach the agent; "
                       f"console (in {failed.workdir}):\n" + "\n".join(failed.console.tail(TAIL)))
        self.vm = vm
        coldplug = re.findall(r"init: .* coldplugged in .*", vm.console.text())
        note(f"boot {self.boots}: agent after {time.monotonic() - t0:.1f} s; "
             + (coldplug[-1] if coldplug else ""))
        return vm

    def stop(self):
        if self.vm is not None:
            self.vm.stop()
            self.vm = None

    def require_vm(self):
        check(self.vm is not None and self.vm.alive(), "no running guest (boot failed)")
        return self.vm

    def console_clean(self):
        bad = console_problems(self.vm.console.text())
        check(not bad, "the guest console shows:\n" + "\n".join(bad) +
              "\nlast lines:\n" + "\n".join(self.vm.console.tail(TAIL)))

    def kernel_log(self):
        """The install rule's lines in the guest's kernel log."""
        out = self.vm.guest.check("dmesg")
        return [l[l.index(LOG_TAG):].strip() for l in out.splitlines() if LOG_TAG in l]

    def balloon_state(self):
        """(loaded balloon modules, driver bound to the balloon device)."""
        g = self.vm.guest
        mods = [m for m in g.modules() if m in ("vballoon", "virtio_balloon")]
        dev = g.sysfs_balloon_dev()
        check(dev, "the guest has no virtio device 0x0005 (balloon) in /sys/bus/virtio")
        rc, link = g.run(f"readlink {dev}/driver")
        return mods, dev, Path(link.strip()).name if rc == 0 else None

    # -- steps --------------------------------------------------------------
    def step_autoload(self, note):
        self.boot(note)
        g = self.vm.guest
        mods, dev, drv = self.balloon_state()
        lsmod = g.check("lsmod")
        drivers = g.check("ls /sys/bus/virtio/drivers").split()
        note(f"loaded: {mods}; {dev}/driver -> {drv}; /sys/bus/virtio/drivers: {drivers}")
        check("virtio_balloon" not in mods and not re.search(r"^virtio_balloon ", lsmod, re.M),
              f"virtio_balloon is loaded:\n{lsmod}")
        check("vballoon" in mods and re.search(r"^vballoon ", lsmod, re.M),
              f"udev did not load vballoon:\n{lsmod}")
        check(drv == "vballoon", f"{dev} is bound to {drv}, not vballoon")
        check("virtio_balloon" not in drivers, f"virtio_balloon is registered: {drivers}")
        path = g.check("modinfo -F filename vballoon").strip()
        note(f"guest modinfo vballoon: {path}")
        check(path.startswith(f"/lib/modules/{self.kver}/updates/dkms/vballoon.ko"),
              f"the guest's vballoon is {path}, not the DKMS module")
        conf = g.check("cat /etc/modprobe.d/vballoon.conf")
        check("install virtio_balloon " in conf, f"/etc/modprobe.d/vballoon.conf: {conf}")
        log = self.kernel_log()
        note(f"kernel log: {log}")
        check(log == [LOG_VBALLOON], f"the kernel log has {log}, want [{LOG_VBALLOON!r}]")

    def step_balloon(self, note):
        vm = self.require_vm()
        check(self.balloon_state()[2] == "vballoon", "vballoon is not bound")
        actual = vm.qmp.query_balloon()
        check(actual == self.full, f"query-balloon actual {actual}, want {self.full}")
        self.memtotal0 = vm.guest.meminfo()["MemTotal"]
        target = self.full - INFLATE_MIB * MiB
        t0 = time.monotonic()
        vm.qmp.balloon(target)
        vm.qmp.wait_actual(target, timeout=120)
        memtotal = vm.guest.meminfo()["MemTotal"]
        note(f"balloon {target >> 20} MiB: actual reached in {time.monotonic() - t0:.1f} s; "
             f"MemTotal {self.memtotal0} -> {memtotal} kB")
        drop = self.memtotal0 - memtotal
        check(abs(drop - INFLATE_MIB * 1024) <= 4096,
              f"guest MemTotal dropped by {drop} kB, want {INFLATE_MIB * 1024} kB")

    def step_unload(self, note):
        vm = self.require_vm()
        g = vm.guest
        check(self.memtotal0, "no MemTotal from before the balloon (balloon failed)")
        target = self.full - INFLATE_MIB * MiB
        check(vm.qmp.query_balloon() == target, "the balloon is not full before modprobe -r")
        t0 = time.monotonic()
        g.check("modprobe -r vballoon", timeout=120)
        vm.qmp.wait_actual(self.full, timeout=30)
        memtotal = g.meminfo()["MemTotal"]
        mods, dev, drv = self.balloon_state()
        note(f"modprobe -r vballoon: {time.monotonic() - t0:.1f} s; actual "
             f"{vm.qmp.query_balloon() >> 20} MiB; MemTotal {memtotal} kB "
             f"(before the balloon {self.memtotal0} kB); loaded {mods}, driver {drv}")
        check(abs(memtotal - self.memtotal0) <= 1024,
              f"MemTotal {memtotal} kB after modprobe -r, {self.memtotal0} kB before inflating")
        check(not mods and drv is None, f"after modprobe -r: loaded {mods}, driver {drv}")
        self.console_clean()

    def step_blacklist(self, note):
        name, lines = self.blacklist
        vm = self.vm if self.vm is not None and self.vm.alive() else self.boot(note)
        # What the README tells the administrator to do, then a reboot.
        vm.guest.check(f"printf '%s\\n' {' '.join(shlex.quote(l) for l in lines)} "
                       f">{shlex.quote(name)} && sync")
        vm = self.boot(note)
        g = vm.guest
        note(f"{name}: {g.read(name).splitlines()}")
        mods, dev, drv = self.balloon_state()
        drivers = g.check("ls /sys/bus/virtio/drivers").split()
        note(f"loaded: {mods}; {dev}/driver -> {drv}; /sys/bus/virtio/drivers: {drivers}")
        check(not mods, f"balloon modules loaded with both blacklisted: {mods}")
        check(drv is None, f"{dev} is bound to {drv}")
        check(not {"vballoon", "virtio_balloon"} & set(drivers),
              f"a balloon driver is registered: {drivers}")
        # udev did see the device (so it was the blacklist that left it alone)
        props = g.check(f"udevadm info -q property {dev}")
        check(f"MODALIAS={BALLOON_ALIAS}" in props,
              f"udev has no record of {dev}:\n{props}")
        memtotal = g.meminfo()["MemTotal"]
        vm.qmp.balloon(self.full - INFLATE_MIB * MiB)
        seen = set()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5:
            seen.add(vm.qmp.query_balloon())
            time.sleep(0.5)
        after = g.meminfo()["MemTotal"]
        note(f"QMP balloon {(self.full >> 20) - INFLATE_MIB} MiB: actual over 5 s "
             f"{sorted(a >> 20 for a in seen)} MiB; MemTotal {memtotal} -> {after} kB")
        check(seen == {self.full}, f"actual moved without a driver: {sorted(seen)}")
        check(after == memtotal, f"MemTotal moved without a driver: {memtotal} -> {after}")
        check(not self.kernel_log(), f"the install rule ran: {self.kernel_log()}")
        self.console_clean()
        # A blacklist only stops alias lookups: by name, virtio_balloon still
        # loads, and the install rule must not bring in the blacklisted vballoon.
        g.check("modprobe virtio_balloon", timeout=60)
        mods, dev, drv = self.balloon_state()
        log = self.kernel_log()
        note(f"modprobe virtio_balloon: loaded {mods}, driver {drv}; kernel log: {log}")
        check(mods == ["virtio_balloon"] and drv == "virtio_balloon",
              f"modprobe virtio_balloon with both blacklisted: loaded {mods}, driver {drv}")
        check(log == [LOG_BLACKLISTED], f"the kernel log has {log}, want [{LOG_BLACKLISTED!r}]")

    def step_no_vballoon(self, note):
        """A kernel vballoon is not installed for keeps virtio_balloon."""
        name = self.blacklist[0]
        vm = self.vm if self.vm is not None and self.vm.alive() else self.boot(note)
        # As DKMS leaves a kernel it did not build for (7.x before the
        # dkms.conf fix): the kernel's tree without vballoon, no blacklist.
        vm.guest.check(f"rm -f {shlex.quote(name)} /lib/modules/{self.kver}/updates/dkms/"
                       f"vballoon.ko* && depmod && sync", timeout=300)
        vm = self.boot(note)
        g = vm.guest
        rc, out = g.run("modprobe -n -v vballoon")
        check(rc != 0, f"vballoon is still installed: {out}")
        mods, dev, drv = self.balloon_state()
        drivers = g.check("ls /sys/bus/virtio/drivers").split()
        log = self.kernel_log()
        note(f"loaded: {mods}; {dev}/driver -> {drv}; /sys/bus/virtio/drivers: {drivers}; "
             f"kernel log: {log}")
        check(mods == ["virtio_balloon"] and drv == "virtio_balloon",
              f"udev did not bind virtio_balloon: loaded {mods}, {dev}/driver -> {drv}")
        want = LOG_MISSING.format(kver=self.kver)
        check(log == [want], f"the kernel log has {log}, want [{want!r}]")
        actual = vm.qmp.query_balloon()
        check(actual == self.full, f"query-balloon actual {actual}, want {self.full}")
        memtotal0 = g.meminfo()["MemTotal"]
        target = self.full - INFLATE_MIB * MiB
        t0 = time.monotonic()
        vm.qmp.balloon(target)
        vm.qmp.wait_actual(target, timeout=120)
        memtotal = g.meminfo()["MemTotal"]
        note(f"balloon {target >> 20} MiB: actual reached in {time.monotonic() - t0:.1f} s; "
             f"MemTotal {memtotal0} -> {memtotal} kB")
        drop = memtotal0 - memtotal
        check(abs(drop - INFLATE_MIB * 1024) <= 4096,
              f"guest MemTotal dropped by {drop} kB, want {INFLATE_MIB * 1024} kB")
        self.console_clean()


# -- the upgrade: a Debian 13 guest moves to trixie-backports' kernel -----------
# The guest boots its own kernels and initramfs (initramfs-tools), read out of
# its disk image: what the kernel packages and DKMS's hooks wrote there is
# what boots, as on a real machine.
UP_SUITE = "trixie"
UP_BACKPORTS = "trixie-backports"
UP_DEBOOTSTRAP = ["--variant=minbase", "--include=kmod,udev"]
# dkms pulls no compiler itself: the headers package pulls its own gcc.
UP_PACKAGES = ["linux-image-amd64", "linux-headers-amd64", "dkms"]
UP_REPO = "/srv/repo"
# Written into the image after the chroot's work, for the guest's. Under
# TCG, dpkg's fsync of every file doubled the kernels' unpacking, and
# initramfs-tools' default MODULES=most spent minutes copying and
# compressing drivers no VM has: these are the settings of a lean VM.
UP_CONFIG = {
    "etc/dpkg/dpkg.cfg.d/unsafe-io": "force-unsafe-io\n",
    "etc/initramfs-tools/conf.d/modules-dep": "MODULES=dep\n",
}
# TCG runs apt, DKMS's build and update-initramfs several times slower
# than the host: generous timeouts, the steps report the times they took.
UP_APT_TIMEOUT = 1800


def in_chroot(root, cmd, log, ok=(0,)):
    """Run the shell command cmd in the chroot root, with /proc (objtool,
    DKMS) in a private mount namespace: the mount goes with the process."""
    proxy = " ".join(f"{k}={shlex.quote(v)}" for k, v in apt_env().items())
    script = ('mount -t proc proc "$1/proc" && exec chroot "$1" /usr/bin/env -i '
              'PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 '
              f'DEBIAN_FRONTEND=noninteractive {proxy} /bin/sh -ec "$2"')
    return sh(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
               "sh", root, cmd], log=log, ok=ok)


def cached_abi():
    """The trixie-backports kernel ABI scripts/kernels.sh set up last, if any."""
    f = VB_CACHE / "chroot" / "trixie.kver"
    return f.read_text().strip() if f.exists() else None


def ensure_trixie_rootfs(note, mirror):
    """$VB_CACHE/distro/rootfs-trixie.tar: debootstrap trixie with its 6.12 kernel,
    headers and dkms, and in /srv/repo the trixie-backports kernel (image and
    headers) plus its cloud flavour (no headers), with everything they pull
    that is not installed. apt's only source is then that repository.

    Made once, and again when scripts/kernels.sh has followed the archive to
    another 7.x ABI, so the test needs the network only when the archive moved.
    """
    tar = CACHE / f"rootfs-{UP_SUITE}.tar"
    stamp = CACHE / f"rootfs-{UP_SUITE}.how"
    how = " ".join(UP_DEBOOTSTRAP + [UP_SUITE, "+"] + UP_PACKAGES +
                   [f"+ {UP_BACKPORTS} repo"])
    if tar.exists() and stamp.exists():
        lines = stamp.read_text().splitlines()
        if lines[:1] == [how] and len(lines) == 3 and \
                cached_abi() in (None, lines[1].split()[0]):
            abi, cloud = lines[1].split()
            note(f"cached {tar} ({lines[2]}; repo: {abi}, {cloud})")
            return tar, stamp, abi, cloud, lines[2]
    mirror = mirror or apt_mirror()
    log = CACHE / f"rootfs-{UP_SUITE}.log"
    log.write_text("")
    tmp = CACHE / f"rootfs-{UP_SUITE}.tmp"
    umount_under(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.monotonic()
    sh(["debootstrap", *UP_DEBOOTSTRAP, UP_SUITE, tmp, mirror], log=log,
       env={**os.environ, **apt_env()})
    t1 = time.monotonic()
    (tmp / "etc/apt/sources.list").write_text(
        f"deb {mirror} {UP_SUITE} main\ndeb {mirror} {UP_BACKPORTS} main\n")
    for f in (tmp / "etc/apt/sources.list.d").glob("*"):
        f.unlink()
    # What a small VM has: no recommends, no translations. No daemon may
    # start in the chroot.
    (tmp / "etc/apt/apt.conf.d/90vballoon").write_text(
        'APT::Install-Recommends "false";\nAcquire::Languages "none";\n')
    (tmp / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
    os.chmod(tmp / "usr/sbin/policy-rc.d", 0o755)
    in_chroot(tmp, "apt-get update -q && apt-get install -y -q " + " ".join(UP_PACKAGES),
              log)
    t2 = time.monotonic()
    # The ABIs trixie-backports' metapackages point at today.
    abis = []
    for meta in ("linux-headers-amd64", "linux-image-cloud-amd64"):
        dep = in_chroot(tmp, f"apt-cache -t {UP_BACKPORTS} show --no-all-versions {meta}"
                        " | sed -n 's/^Depends: //p'", log)
        m = re.search(r"linux-(?:headers|image)-(\d[^ ,]*)", dep)
        check(m, f"{UP_BACKPORTS}'s {meta} depends on no kernel: {dep!r}")
        abis.append(m.group(1))
    abi, cloud = abis
    check(not abi.startswith("6.12"), f"{UP_BACKPORTS} has no newer kernel than 6.12: {abi}")
    in_chroot(tmp, f"mkdir -p {UP_REPO} && apt-get install -y -q --download-only -t {UP_BACKPORTS} "
              f"-o Dir::Cache::Archives={UP_REPO} linux-image-{abi} linux-headers-{abi} "
              f"linux-image-{cloud} && rm -rf {UP_REPO}/partial {UP_REPO}/lock && "
              f"cd {UP_REPO} && dpkg-scanpackages -m . /dev/null >Packages 2>/dev/null", log)
    debs = sorted(p.name for p in (tmp / UP_REPO.lstrip("/")).glob("*.deb"))
    check(any(d.startswith(f"linux-modules-{abi}_") for d in debs),
          f"{UP_REPO} lacks linux-modules-{abi}: {debs}")
    # Offline from here on: the local repository is apt's only source.
    (tmp / "etc/apt/sources.list").write_text(f"deb [trusted=yes] file:{UP_REPO} ./\n")
    in_chroot(tmp, "rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin "
              "/var/cache/apt/archives/*.deb && apt-get update -q", log)
    (tmp / "usr/sbin/policy-rc.d").unlink()
    sh(["tar", "--numeric-owner", "-C", tmp, "-cf", f"{tar}.tmp", "."])
    os.replace(f"{tar}.tmp", tar)
    kver0 = next(p.name for p in (tmp / "usr/lib/modules").iterdir()
                 if (p / "modules.dep").exists())
    stamp.write_text(f"{how}\n{abi} {cloud}\n{kver0}\n")
    shutil.rmtree(tmp)
    note(f"debootstrap {UP_SUITE} {mirror}: {t1 - t0:.0f} s; {' '.join(UP_PACKAGES)}: "
         f"{t2 - t1:.0f} s ({kver0}); {UP_REPO}: {len(debs)} packages for {abi} and "
         f"{cloud}: {time.monotonic() - t2:.0f} s; {tar.stat().st_size >> 20} MiB")
    return tar, stamp, abi, cloud, kver0


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_upgrade_image(note, rootfs, deb, agent):
    """$VB_CACHE/distro/upgrade-KEY.img: the trixie root file system with the
    package installed, DKMS having built vballoon for 6.12 in a chroot as it
    would on the guest (the guest's own TCG time goes to the upgrade). KEY
    hashes everything that goes in; only the newest image is kept."""
    tar, stamp = rootfs[:2]
    st = tar.stat()
    key = hashlib.sha256("\0".join(
        [stamp.read_text(), f"{st.st_size} {st.st_mtime_ns}", sha256(deb), sha256(agent),
         (HERE / "rootfs-init.sh").read_text(), repr(sorted(UP_CONFIG.items()))]
    ).encode()).hexdigest()[:16]
    image = CACHE / f"upgrade-{key}.img"
    if image.exists():
        note(f"cached {image}")
        return image
    t0 = time.monotonic()
    log = CACHE / "upgrade-image.log"
    log.write_text("")
    root = CACHE / "upgrade-root.tmp"
    umount_under(root)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    try:
        sh(["tar", "--numeric-owner", "-C", root, "-xf", tar])
        shutil.copy2(deb, root / "tmp" / deb.name)
        out = in_chroot(root, f"apt-get install -y -q /tmp/{deb.name} && "
                        f"rm /tmp/{deb.name} && dkms status vballoon", log)
        note("in the chroot: " + "; ".join(l for l in out.splitlines()
                                           if l.startswith("vballoon/")))
        check(re.search(r"^vballoon/\S+, 6\.12\.\S+, x86_64: installed", out, re.M),
              f"DKMS did not install vballoon for 6.12 in the chroot:\n{out}")
        for path, text in UP_CONFIG.items():
            (root / path).write_text(text)
        shutil.copy2(agent, root / "usr/local/sbin/vb-agent")
        shutil.copy2(HERE / "rootfs-init.sh", root / "usr/sbin/vb-init")
        os.chmod(root / "usr/sbin/vb-init", 0o755)
        (root / "etc/hostname").write_text("vballoon-upgrade\n")
        used = int(sh(["du", "-sxm", root]).split()[0])
        # Room for the two kernels, DKMS's build and initramfs-tools.
        tmp = image.with_suffix(".tmp")
        sh(["mkfs.ext4", "-q", "-F", "-L", "vbroot", "-d", root, tmp,
            f"{used + 2048}M"], log=log)
        for old in CACHE.glob("upgrade-*.img"):
            old.unlink()
        os.replace(tmp, image)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    note(f"{image.name}: {used} MiB of files, built in {time.monotonic() - t0:.1f} s")
    return image


def debugfs_dump(image, path, out):
    """Copy the file path out of the ext4 image (no mount, no loop device)."""
    sh(["debugfs", "-R", f"dump {path} {out}", image])
    check(out.exists() and out.stat().st_size > 0, f"no {path} in {image.name}")
    return out


class ImageVM(VM):
    """A guest booting a kernel read out of its own disk image."""

    def __init__(self, kver, boot_root, initrd, config, workdir, accel):
        super().__init__(kver, initrd, config, workdir, accel)
        self.plat = dataclasses.replace(X86_64, root=boot_root)


class UpgradeGuest(DistroGuest):
    """The Debian 13 guest: booted on 6.12, upgraded to trixie-backports'
    kernel by apt from its local repository, then given a kernel without
    headers. One guest, one boot at a time."""

    def __init__(self, run, image, accel, kver0, abi, cloud):
        self.run, self.accel = run, accel
        self.kver, self.abi, self.cloud = kver0, abi, cloud
        self.dir = run / "upgrade"
        self.dir.mkdir()
        self.disk = self.dir / "disk.img"
        # A raw copy (sparse): debugfs reads the kernels out of it.
        sh(["cp", "--sparse=always", image, self.disk])
        self.config = VMConfig.make(
            mem=GUEST_MIB, smp=2, cmdline="root=/dev/vda rw init=/usr/sbin/vb-init",
            qemu_args=["-drive", f"file={self.disk},if=virtio,format=raw"])
        self.vm = None
        self.boots = 0
        self.full = GUEST_MIB * MiB
        self.memtotal0 = None
        self.paths = {kver0: (f"/boot/vmlinuz-{kver0}", f"/boot/initrd.img-{kver0}")}

    def boot(self, note, kver=None):
        """Boot kver (default: the last booted) from the disk's own files."""
        self.stop()
        self.kver = kver or self.kver
        check(self.kver in self.paths, f"{self.kver} is not installed in the guest")
        self.boots += 1
        t0 = time.monotonic()
        kroot = self.dir / f"boot{self.boots}-kernel"
        (kroot / "boot").mkdir(parents=True)
        vmlinuz, initrd = self.paths[self.kver]
        debugfs_dump(self.disk, vmlinuz, kroot / "boot" / f"vmlinuz-{self.kver}")
        initrd = debugfs_dump(self.disk, initrd, kroot / "initrd.img")
        vm = None
        for attempt in (1, 2):      # TCG occasionally oopses in early boot
            vm = ImageVM(self.kver, kroot, initrd, self.config,
                         self.dir / f"boot{self.boots}-a{attempt}", self.accel)
            if vm.start(timeout=240):
                break
            vm.stop()
            last, vm = vm, None
        if vm is None:
            raise Fail(f"boot {self.boots} of {self.kver} did not reach the agent; "
                       f"console (in {last.workdir}):\n" + "\n".join(last.console.tail(TAIL)))
        self.vm = vm
        uname = vm.guest.check("uname -r").strip()
        check(uname == self.kver, f"booted {uname}, not {self.kver}")
        coldplug = re.findall(r"init: .* coldplugged in .*", vm.console.text())
        note(f"boot {self.boots} ({self.kver}): agent after {time.monotonic() - t0:.1f} s; "
             + (coldplug[-1] if coldplug else ""))
        return vm

    def shutdown(self):
        """Flush the guest's writes before QEMU quits."""
        if self.vm is not None and self.vm.alive():
            self.vm.guest.check("sync", timeout=120)
        self.stop()

    def dkms_status(self, note):
        out = self.vm.guest.check("dkms status vballoon", timeout=120)
        lines = [l for l in out.splitlines() if l.startswith("vballoon/")]
        note(f"dkms status: {lines}")
        return lines

    def bound(self, note, want):
        """The balloon device is bound to want, the only balloon driver
        registered and loaded; the install rule logged why."""
        g = self.vm.guest
        mods, dev, drv = self.balloon_state()
        drivers = g.check("ls /sys/bus/virtio/drivers").split()
        log = self.kernel_log()
        note(f"loaded: {mods}; {dev}/driver -> {drv}; /sys/bus/virtio/drivers: {drivers}; "
             f"kernel log: {log}")
        other = {"vballoon": "virtio_balloon", "virtio_balloon": "vballoon"}[want]
        check(mods == [want] and drv == want,
              f"udev did not bind {want}: loaded {mods}, {dev}/driver -> {drv}")
        check(want in drivers and other not in drivers,
              f"/sys/bus/virtio/drivers has {drivers}")
        line = LOG_VBALLOON if want == "vballoon" else LOG_MISSING.format(kver=self.kver)
        check(log == [line], f"the kernel log has {log}, want [{line!r}]")

    def follows(self, note):
        """The balloon follows a QMP target: actual and the guest's MemTotal."""
        vm = self.require_vm()
        actual = vm.qmp.query_balloon()
        check(actual == self.full, f"query-balloon actual {actual}, want {self.full}")
        memtotal0 = vm.guest.meminfo()["MemTotal"]
        target = self.full - INFLATE_MIB * MiB
        t0 = time.monotonic()
        vm.qmp.balloon(target)
        vm.qmp.wait_actual(target, timeout=120)
        memtotal = vm.guest.meminfo()["MemTotal"]
        note(f"balloon {target >> 20} MiB: actual reached in {time.monotonic() - t0:.1f} s; "
             f"MemTotal {memtotal0} -> {memtotal} kB")
        drop = memtotal0 - memtotal
        check(abs(drop - INFLATE_MIB * 1024) <= 4096,
              f"guest MemTotal dropped by {drop} kB, want {INFLATE_MIB * 1024} kB")
        self.console_clean()

    def apt_install(self, note, pkgs):
        """apt-get install pkgs in the guest, from the local repository only;
        records where the new kernel's image and initramfs are."""
        g = self.require_vm().guest
        t0 = time.monotonic()
        rc, out = g.run(f"apt-get install -y --no-install-recommends {' '.join(pkgs)} "
                        "</dev/null 2>&1", timeout=UP_APT_TIMEOUT)
        # The agent passes the terminal's CRLF line ends through.
        out = re.sub(r"\r\n?", "\n", out)
        (self.dir / f"apt-{pkgs[0]}.log").write_text(out)
        secs = time.monotonic() - t0
        check(rc == 0, f"apt-get install {' '.join(pkgs)}: exit {rc}\n" +
              "\n".join(out.splitlines()[-TAIL:]))
        gets = [l for l in out.splitlines() if re.match(r"^(Get|Hit|Ign):", l)]
        check(all(f"file:{UP_REPO}" in l for l in gets),
              f"apt fetched from elsewhere than file:{UP_REPO}:\n" + "\n".join(gets))
        new = re.findall(r"^Unpacking (\S+) ", out, re.M)
        note(f"apt-get install {' '.join(pkgs)}: {secs:.0f} s; {len(new)} packages "
             f"unpacked: {' '.join(new)}")
        return out

    def locate(self, kver):
        """The new kernel's image and initramfs, as its packages left them."""
        g = self.vm.guest
        found = []
        for cands in ((f"/boot/vmlinuz-{kver}", f"/usr/lib/modules/{kver}/vmlinuz"),
                      (f"/boot/initrd.img-{kver}",)):
            rc, out = g.run("for f in " + " ".join(cands) + "; do "
                            "[ -f \"$f\" ] && readlink -f \"$f\" && break; done")
            check(out.strip(), f"none of {cands} in the guest")
            found.append(out.strip().splitlines()[0])
        self.paths[kver] = tuple(found)
        return found

    # -- steps --------------------------------------------------------------
    def step_612(self, note):
        self.boot(note)
        self.bound(note, "vballoon")
        lines = self.dkms_status(note)
        check(any(re.match(rf"vballoon/\S+, {re.escape(self.kver)}, \S+: installed", l)
                  for l in lines), f"dkms status: {lines}")
        check(not any(self.abi in l for l in lines), f"dkms status before the upgrade: {lines}")
        self.follows(note)

    def step_upgrade(self, note):
        out = self.apt_install(note, [f"linux-image-{self.abi}", f"linux-headers-{self.abi}"])
        # The kernel's postinst hook ran DKMS, in this apt run.
        dkms = [l.strip() for l in out.splitlines()
                if re.search(r"dkms:|vballoon|Building module|Installing /", l)]
        note("apt output, DKMS: " + " | ".join(dkms[:12]))
        check(re.search(r"^/etc/kernel/postinst\.d/dkms:$", out, re.M) and
              re.search(rf"^Autoinstall on {re.escape(self.abi)} succeeded for "
                        r"module\(s\) vballoon\.$", out, re.M),
              f"apt's output shows no DKMS build of vballoon for {self.abi}:\n" +
              "\n".join(out.splitlines()[-TAIL:]))
        lines = self.dkms_status(note)
        check(any(re.match(rf"vballoon/\S+, {re.escape(self.abi)}, \S+: installed", l)
                  for l in lines), f"dkms status has vballoon not installed for "
              f"{self.abi}: {lines}")
        path = self.vm.guest.check(f"modinfo -k {self.abi} -F filename vballoon").strip()
        note(f"modinfo -k {self.abi}: {path}")
        check(re.fullmatch(rf"/(usr/)?lib/modules/{re.escape(self.abi)}/updates/dkms/"
                           r"vballoon\.ko(\.xz|\.zst|\.gz)?", path),
              f"modinfo -k {self.abi} vballoon: {path}, not the DKMS module")
        note(f"boot files: {self.locate(self.abi)}")
        self.shutdown()

    def step_new_kernel(self, note):
        self.boot(note, self.abi)
        self.bound(note, "vballoon")
        self.follows(note)

    def step_no_headers(self, note):
        self.require_vm()
        out = self.apt_install(note, [f"linux-image-{self.cloud}"])
        hook = [l.strip() for l in out.splitlines() if re.search(r"dkms|header", l, re.I)]
        note("apt output, DKMS: " + " | ".join(hook[:8]))
        lines = self.dkms_status(note)
        check(not any(self.cloud in l for l in lines),
              f"dkms status has a line for {self.cloud}: {lines}")
        rc, out = self.vm.guest.run(f"modinfo -k {self.cloud} -F filename vballoon")
        check(rc != 0, f"{self.cloud} has a vballoon: {out}")
        note(f"boot files: {self.locate(self.cloud)}")
        self.shutdown()
        self.boot(note, self.cloud)
        self.bound(note, "virtio_balloon")
        self.follows(note)


# -- Secure Boot: a Debian 12 guest booted by OVMF through shim ----------------
# The guest boots as a Secure Boot machine does: OVMF with Microsoft's keys,
# Debian's signed shim, GRUB and kernel from an EFI system partition, the
# kernel in lockdown. What the kernel trusts beyond Debian's own key is the
# MOK list that shim hands it, so the DKMS key goes there.
SB_SUITE = "bookworm"
SB_DEBOOTSTRAP = ["--variant=minbase", "--include=kmod,udev"]
SB_PACKAGES = ["linux-image-amd64", "linux-headers-amd64", "dkms", "shim-signed",
               "grub-efi-amd64-signed", "mokutil", "keyutils", "openssl"]
# A lean initramfs (the disk driver and ext4), written before the kernel is
# installed; dpkg without fsync, as for the upgrade guest.
SB_CONFIG = {
    "etc/dpkg/dpkg.cfg.d/unsafe-io": "force-unsafe-io\n",
    "etc/initramfs-tools/conf.d/modules-list": "MODULES=list\n",
    "etc/initramfs-tools/modules": "virtio_pci\nvirtio_blk\next4\n",
}
SB_CACHE = VB_CACHE / "secureboot"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
SB_ESP_MIB = 64
SB_BOOT_TIMEOUT = 600
# DKMS 3.0's key (dkms creates it at the first build) and its subject.
DKMS_KEY = "/var/lib/dkms/mok.pub"
# Outside DKMS: built from the DKMS sources in the chroot, unsigned, and a
# copy signed with a key made for the test and never enrolled.
SB_UNSIGNED = "/root/vballoon-unsigned.ko"
SB_OTHERKEY = "/root/vballoon-otherkey.ko"
SHIM_LOCK_GUID = "605dab50-e046-4300-abb6-3dd810dd8b23"
EFI_CERT_X509_GUID = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072"
AUTH_VAR_STORE_GUID = "aaf32c78-947b-439a-a180-2e144ec37792"
LOG_FAILED = LOG_TAG + "vballoon failed to load"
# What insmod/modprobe and the kernel say of a refused module.
REFUSED = "Key was rejected by service"
REFUSED_UNSIGNED = "Loading of unsigned module is rejected"
REFUSED_KEY = "Loading of module with unavailable key is rejected"


def keep_newest(pattern, keep):
    """Remove the cached files or directories of pattern but keep."""
    for old in SB_CACHE.glob(pattern):
        if old != keep:
            shutil.rmtree(old) if old.is_dir() else old.unlink()


def ensure_sb_rootfs(note, mirror):
    """$VB_CACHE/secureboot/rootfs-KEY.tar: debootstrap bookworm with the
    signed boot chain, the kernel, its headers, dkms and mokutil. KEY hashes
    what goes in; the archive moving on does not rebuild it."""
    how = " ".join(SB_DEBOOTSTRAP + [SB_SUITE, "+"] + SB_PACKAGES) + \
        repr(sorted(SB_CONFIG.items()))
    key = hashlib.sha256(how.encode()).hexdigest()[:16]
    tar = SB_CACHE / f"rootfs-{key}.tar"
    if tar.exists():
        note(f"cached {tar}")
        return tar
    SB_CACHE.mkdir(parents=True, exist_ok=True)
    mirror = mirror or apt_mirror()
    log = SB_CACHE / "rootfs.log"
    log.write_text("")
    tmp = SB_CACHE / "rootfs.tmp"
    umount_under(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.monotonic()
    sh(["debootstrap", *SB_DEBOOTSTRAP, SB_SUITE, tmp, mirror], log=log,
       env={**os.environ, **apt_env()})
    t1 = time.monotonic()
    (tmp / "etc/apt/sources.list").write_text(f"deb {mirror} {SB_SUITE} main\n")
    (tmp / "etc/apt/apt.conf.d/90vballoon").write_text(
        'APT::Install-Recommends "false";\nAcquire::Languages "none";\n')
    (tmp / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
    os.chmod(tmp / "usr/sbin/policy-rc.d", 0o755)
    for path, text in SB_CONFIG.items():
        (tmp / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp / path).write_text(text)
    in_chroot(tmp, "apt-get update -q && apt-get install -y -q " + " ".join(SB_PACKAGES)
              + " && apt-get clean", log)
    (tmp / "usr/sbin/policy-rc.d").unlink()
    sh(["tar", "--numeric-owner", "-C", tmp, "-cf", f"{tar}.tmp", "."])
    os.replace(f"{tar}.tmp", tar)
    shutil.rmtree(tmp)
    keep_newest("rootfs-*.tar", tar)
    note(f"debootstrap {SB_SUITE} {mirror}: {t1 - t0:.0f} s; {' '.join(SB_PACKAGES)}: "
         f"{time.monotonic() - t1:.0f} s; {tar.stat().st_size >> 20} MiB")
    return tar


def make_gpt_disk(out, esp, root):
    """A GPT disk image: the EFI system partition esp, then the root file
    system root (both file system images)."""
    mib = 1 << 20
    esp_mib, root_mib = esp.stat().st_size // mib, -(-root.stat().st_size // mib)
    with open(out, "wb") as f:
        f.truncate((1 + esp_mib + root_mib + 1) * mib)
    table = ("label: gpt\n"
             f"start=2048, size={esp_mib * 2048}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, "
             "name=esp\n"
             f"start={(1 + esp_mib) * 2048}, size={root_mib * 2048}, "
             "type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n")
    sh(["sfdisk", "-q", out], input=table)
    for img, start in ((esp, 1), (root, 1 + esp_mib)):
        sh(["dd", f"if={img}", f"of={out}", "bs=1M", f"seek={start}", "conv=notrunc,sparse",
            "status=none"])


def ensure_sb_image(note, tar, deb, agent):
    """$VB_CACHE/secureboot/image-KEY/: disk.img (the ESP with shim, GRUB and
    a grub.cfg, the root file system with the package installed: DKMS built
    and signed vballoon in the chroot, making its key), mok.der (that key)
    and kver. KEY hashes everything that goes in."""
    key = hashlib.sha256("\0".join(
        [tar.name, sha256(deb), sha256(agent), (HERE / "rootfs-init.sh").read_text(),
         inspect.getsource(ensure_sb_image), inspect.getsource(make_gpt_disk)]
    ).encode()).hexdigest()[:16]
    out = SB_CACHE / f"image-{key}"
    if (out / "disk.img").exists():
        note(f"cached {out}")
        return out
    t0 = time.monotonic()
    log = SB_CACHE / "image.log"
    log.write_text("")
    tmp = SB_CACHE / "image.tmp"
    root = tmp / "root"
    umount_under(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        sh(["tar", "--numeric-owner", "-C", root, "-xf", tar])
        # build is an absolute link: it resolves inside the chroot only
        kvers = [p.name for p in (root / "usr/lib/modules").iterdir()
                 if (p / "build").is_symlink()]
        check(len(kvers) == 1, f"kernels with headers in the image: {kvers}")
        kver = kvers[0]
        shutil.copy2(deb, root / "tmp" / deb.name)
        out_ = in_chroot(root, f"apt-get install -y -q /tmp/{deb.name} && rm /tmp/{deb.name}"
                         " && dkms status vballoon", log)
        note("in the chroot: " + "; ".join(
            l.strip() for l in out_.splitlines()
            if l.startswith("vballoon/") or "Signing" in l or "MOK" in l or "key" in l))
        check(re.search(rf"^vballoon/\S+, {re.escape(kver)}, x86_64: installed", out_, re.M),
              f"DKMS did not install vballoon for {kver} in the chroot:\n{out_}")
        check((root / DKMS_KEY.lstrip("/")).exists(), f"DKMS made no {DKMS_KEY}")
        # The module outside DKMS: kbuild's "modules" signs nothing.
        k = shlex.quote(kver)
        in_chroot(root, f"cp -r /usr/src/vballoon-* /root/vb-build && "
                  f"make -C /lib/modules/{k}/build M=/root/vb-build modules && "
                  f"cp /root/vb-build/vballoon.ko {SB_UNSIGNED} && "
                  f"cp /root/vb-build/vballoon.ko {SB_OTHERKEY} && rm -rf /root/vb-build && "
                  "openssl req -new -x509 -nodes -days 36500 -newkey rsa:2048 "
                  "-subj '/CN=vballoon selftest key, not enrolled/' "
                  "-keyout /root/otherkey.priv -outform DER -out /root/otherkey.der && "
                  f"/usr/lib/linux-kbuild-{k.rsplit('.', 1)[0]}/scripts/sign-file sha256 "
                  f"/root/otherkey.priv /root/otherkey.der {SB_OTHERKEY}", log)
        out.mkdir(exist_ok=True)
        shutil.copy2(root / DKMS_KEY.lstrip("/"), out / "mok.der")
        shutil.copy2(agent, root / "usr/local/sbin/vb-agent")
        shutil.copy2(HERE / "rootfs-init.sh", root / "usr/sbin/vb-init")
        os.chmod(root / "usr/sbin/vb-init", 0o755)
        (root / "etc/hostname").write_text("vballoon-secureboot\n")
        # The removable media path: with no boot entry in its variables,
        # OVMF starts EFI/BOOT/BOOTX64.EFI, shim then grubx64.efi beside it,
        # and the signed GRUB reads EFI/debian/grub.cfg.
        esp = tmp / "esp"
        for d in ("EFI/BOOT", "EFI/debian"):
            (esp / d).mkdir(parents=True)
        for src, dst in (("usr/lib/shim/shimx64.efi.signed", "EFI/BOOT/BOOTX64.EFI"),
                         ("usr/lib/shim/mmx64.efi.signed", "EFI/BOOT/mmx64.efi"),
                         ("usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
                          "EFI/BOOT/grubx64.efi")):
            shutil.copy2(root / src, esp / dst)
        cmdline = (f"root=/dev/vda2 rw init=/usr/sbin/vb-init console=ttyS0,115200 "
                   f"{BASE_CMDLINE}")
        cfg = (f"set timeout=0\nset root=(hd0,gpt2)\n"
               f"linux /boot/vmlinuz-{kver} {cmdline}\ninitrd /boot/initrd.img-{kver}\nboot\n")
        for d in ("EFI/BOOT", "EFI/debian"):
            (esp / d / "grub.cfg").write_text(cfg)
        sh(["mkfs.vfat", "-C", "-n", "ESP", tmp / "esp.img", SB_ESP_MIB * 1024], log=log)
        sh(["mcopy", "-s", "-i", tmp / "esp.img", esp / "EFI", "::/"], log=log)
        used = int(sh(["du", "-sxm", root]).split()[0])
        sh(["mkfs.ext4", "-q", "-F", "-L", "vbroot", "-d", root, tmp / "root.img",
            f"{used + 1024}M"], log=log)
        make_gpt_disk(out / "disk.tmp", tmp / "esp.img", tmp / "root.img")
        (out / "kver").write_text(kver + "\n")
        os.replace(out / "disk.tmp", out / "disk.img")
        keep_newest("image-*", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    note(f"{out.name}: {kver}, {used} MiB of files, built in {time.monotonic() - t0:.1f} s")
    return out


def efi_guid(text):
    return uuid.UUID(text).bytes_le


def add_moklist(src, dst, der):
    """Copy the OVMF variable store src to dst with MokList holding the X.509
    certificate der: what MokManager writes once a person confirms
    "mokutil --import". Non-volatile and boot-service only: shim deletes a
    MokList that the OS could have written (runtime access)."""
    fd = bytearray(Path(src).read_bytes())
    check(fd[40:44] == b"_FVH", f"{src}: no firmware volume header")
    store = struct.unpack_from("<H", fd, 48)[0]
    check(fd[store:store + 16] == efi_guid(AUTH_VAR_STORE_GUID),
          f"{src}: no authenticated variable store after the volume header")
    end = store + struct.unpack_from("<I", fd, store + 16)[0]
    name = "MokList\0".encode("utf-16-le")
    cert = Path(der).read_bytes()
    # EFI_SIGNATURE_LIST of one EFI_SIGNATURE_DATA (owner GUID + cert)
    esl = efi_guid(EFI_CERT_X509_GUID) + struct.pack("<III", 28 + 16 + len(cert), 0,
                                                     16 + len(cert)) + \
        efi_guid(SHIM_LOCK_GUID) + cert
    off = store + 28
    while off + 60 <= end and struct.unpack_from("<H", fd, off)[0] == 0x55AA:
        nsize, dsize = struct.unpack_from("<II", fd, off + 36)
        check(not (fd[off + 2] == 0x3F and fd[off + 60:off + 60 + nsize] == name),
              f"{src} already has a MokList")
        off = (off + 60 + nsize + dsize + 3) & ~3
    # AUTHENTICATED_VARIABLE_HEADER: StartId, State (added), Attributes
    # (NV|BS), MonotonicCount, TimeStamp, PubKeyIndex, NameSize, DataSize,
    # VendorGuid; then the name and the data.
    var = struct.pack("<HBBIQ16sIII", 0x55AA, 0x3F, 0, 0x3, 0, bytes(16), 0,
                      len(name), len(esl)) + efi_guid(SHIM_LOCK_GUID) + name + esl
    check(off + len(var) <= end and fd[off:off + len(var)] == b"\xff" * len(var),
          f"{src}: no room for MokList at {off:#x}")
    fd[off:off + len(var)] = var
    Path(dst).write_bytes(fd)
    return dst


class FirmwareVM(VM):
    """A guest booted by OVMF from its disk (q35, SMM, secure flash)."""

    def __init__(self, config, workdir, accel, disk, varstore):
        super().__init__("", None, config, workdir, accel)
        self.plat = X86_64
        self.disk, self.varstore = disk, varstore

    def argv(self):
        c, p = self.config, self.plat
        accel = ["-accel", "kvm"] if self.accel == "kvm" else ["-accel", "tcg,thread=single"]
        dev = ",".join(["virtio-balloon-pci", "id=balloon0"] +
                       [f"{k}={v}" for k, v in c.device])
        return [self.host.qemu(p.qemu), "-machine", "q35,smm=on", *accel, "-cpu", "max",
                "-global", "driver=cfi.pflash01,property=secure,value=on",
                "-global", "ICH9-LPC.disable_s3=1",
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,unit=1,file={self.varstore}",
                "-m", f"{self.ram_kib}K", "-smp", str(c.smp),
                "-name", "vbtest-sb,debug-threads=on",
                "-display", "none", "-nodefaults", "-no-user-config",
                "-no-reboot", "-monitor", "none",
                "-chardev", f"file,id=con,path={self.console.path}",
                "-serial", "chardev:con",
                *p.agent_args(f"{self.sockdir}/agent.sock"),
                "-qmp", f"unix:{self.sockdir}/qmp.sock,server=on,wait=off",
                "-drive", f"file={self.disk},if=virtio,format=qcow2",
                "-device", dev, *c.qemu_args]


class SecureBootGuest(UpgradeGuest):
    """The Secure Boot guest: its disk a qcow2 over the cached image, its
    variable store OVMF's with Microsoft's keys and the DKMS key in MokList."""

    def __init__(self, run, image, accel):
        self.run, self.accel = run, accel
        self.kver = (image / "kver").read_text().strip()
        self.dir = run / "secureboot"
        self.dir.mkdir()
        self.disk = self.dir / "disk.qcow2"
        sh(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
            image / "disk.img", self.disk])
        self.mok = image / "mok.der"
        self.varstore = add_moklist(OVMF_VARS, self.dir / "OVMF_VARS.fd", self.mok)
        self.config = VMConfig.make(mem=GUEST_MIB, smp=2)
        self.vm = None
        self.boots = 0
        self.boot_times = []
        self.full = GUEST_MIB * MiB
        self.memtotal0 = None

    def boot(self, note, varstore=None):
        """Boot from the disk; varstore: a pristine store to copy instead
        of the one with MokList."""
        self.stop()
        self.boots += 1
        t0 = time.monotonic()
        store = self.varstore
        if varstore is not None:
            store = Path(shutil.copy2(varstore, self.dir / f"boot{self.boots}-VARS.fd"))
        vm = FirmwareVM(self.config, self.dir / f"boot{self.boots}", self.accel,
                        self.disk, store)
        if not vm.start(timeout=SB_BOOT_TIMEOUT):
            vm.stop()
            raise Fail(f"boot {self.boots} did not reach the agent in {SB_BOOT_TIMEOUT} s; "
                       f"console (in {vm.workdir}):\n" + "\n".join(vm.console.tail(TAIL)))
        self.vm = vm
        secs = time.monotonic() - t0
        self.boot_times.append(secs)
        g = vm.guest
        g.check("mountpoint -q /sys/kernel/security || "
                "mount -t securityfs securityfs /sys/kernel/security; "
                "mountpoint -q /sys/firmware/efi/efivars || "
                "mount -t efivarfs efivarfs /sys/firmware/efi/efivars")
        up = float(g.check("cut -d' ' -f1 /proc/uptime").split()[0])
        coldplug = re.findall(r"init: .* coldplugged in .*", vm.console.text())
        note(f"boot {self.boots}: firmware to agent {secs:.1f} s (kernel up {up:.1f} s, "
             f"so firmware, shim and GRUB {secs - up:.1f} s); "
             + (coldplug[-1] if coldplug else ""))
        return vm

    def dmesg(self, pattern):
        return [l for l in self.vm.guest.check("dmesg").splitlines()
                if re.search(pattern, l)]

    # -- steps --------------------------------------------------------------
    def step_sb_state(self, note):
        """Secure Boot is on and the kernel is locked down."""
        self.boot(note)
        g = self.vm.guest
        con = self.vm.console.text()
        state = g.check("mokutil --sb-state 2>&1").strip()
        lockdown = g.read("/sys/kernel/security/lockdown").strip()
        lines = self.dmesg(r"[Ss]ecure ?[Bb]oot|[Ll]ockdown|locked down")
        note(f"mokutil --sb-state: {state!r}; /sys/kernel/security/lockdown: {lockdown!r}")
        note("dmesg: " + " | ".join(l.strip() for l in lines))
        check(state == "SecureBoot enabled", f"mokutil --sb-state: {state!r}")
        check(re.search(r"\[(integrity|confidentiality)\]", lockdown),
              f"the kernel is not locked down: {lockdown!r}")
        check(any("Secure boot enabled" in l for l in lines),
              "the kernel log does not say 'Secure boot enabled'")
        # The chain on the console: the firmware starts the removable path
        # (shim), GRUB, the kernel's EFI stub, and shim's MOK table is there.
        chain = ["BdsDxe: starting Boot", "Welcome to GRUB!",
                 "EFI stub: UEFI Secure Boot is enabled.", "MOKvar="]
        missing = [c for c in chain if c not in con]
        check(not missing, f"the console lacks {missing}")
        self.console_clean()

    def step_mok(self, note):
        """The DKMS key reached the kernel through shim's MOK list."""
        g = self.require_vm().guest
        test = g.run(f"mokutil --test-key {DKMS_KEY} 2>&1")[1].strip()
        subject = g.check(f"openssl x509 -inform DER -in {DKMS_KEY} -noout -subject").strip()
        cn = re.sub(r"^subject=\s*(CN\s*=\s*)?", "", subject)
        loaded = self.dmesg(r"Loaded X\.509 cert|MokListRT")
        keys = g.run("for k in .machine .platform .secondary_trusted_keys; do "
                     "echo \"$k: $(keyctl list %:$k 2>&1 | tr '\\n' ' ')\"; done")[1]
        note(f"mokutil --test-key {DKMS_KEY}: {test!r}; {subject}")
        note("dmesg: " + " | ".join(l.strip() for l in loaded))
        note("keyrings: " + " | ".join(keys.splitlines()))
        check(test.endswith("is already enrolled"), f"mokutil --test-key: {test!r}")
        check(any(f"Loaded X.509 cert '{cn}" in l for l in loaded),
              f"the kernel log has no \"Loaded X.509 cert '{cn}...\"")
        check(cn in keys, f"no keyring holds '{cn}':\n{keys}")
        self.cn = cn

    def step_sb_autoload(self, note):
        """udev loaded the DKMS-built vballoon; its signer is the DKMS key."""
        g = self.require_vm().guest
        mods, dev, drv = self.balloon_state()
        log = self.kernel_log()
        info = {f: g.check(f"modinfo -F {f} vballoon").strip()
                for f in ("filename", "signer", "sig_key", "sig_hashalgo")}
        taint = int(g.read("/proc/sys/kernel/tainted").strip())
        note(f"loaded: {mods}; {dev}/driver -> {drv}; kernel log: {log}")
        note(f"modinfo vballoon: {info}; tainted {taint}")
        check(mods == ["vballoon"] and drv == "vballoon",
              f"udev did not bind vballoon: loaded {mods}, {dev}/driver -> {drv}")
        check(log == [LOG_VBALLOON], f"the kernel log has {log}, want [{LOG_VBALLOON!r}]")
        check(info["filename"].startswith(f"/lib/modules/{self.kver}/updates/dkms/"),
              f"the guest's vballoon is {info['filename']}, not the DKMS module")
        check(info["signer"] == getattr(self, "cn", "DKMS module signing key"),
              f"modinfo -F signer vballoon: {info['signer']!r}")
        # TAINT_UNSIGNED_MODULE (E, bit 13): a module loaded unverified
        check(not taint & (1 << 13), f"the kernel is tainted {taint}: an unsigned module")

    def step_sb_balloon(self, note):
        """The balloon follows QMP (actual, MemTotal, sysfs) and serves
        statistics to a polling host."""
        vm = self.require_vm()
        g = vm.guest
        self.follows(note)
        bal = f"{g.sysfs_balloon_dev()}/balloon"
        sysfs = {f: int(g.read(f"{bal}/{f}").strip()) for f in ("target_bytes", "actual_bytes")}
        note(f"sysfs: {sysfs}")
        want = INFLATE_MIB * MiB
        check(sysfs == {"target_bytes": want, "actual_bytes": want},
              f"sysfs has {sysfs}, want {want} in the balloon")
        n0 = int(g.read(f"{bal}/stats_requests").strip())
        # the statistics sent at probe are no host request: count from them
        last = vm.qmp.qom_get(BALLOON_QOM, "guest-stats").get("last-update", 0)
        vm.qmp.qom_set(BALLOON_QOM, "guest-stats-polling-interval", 1)
        try:
            deadline, updates = time.monotonic() + 60, 0
            while updates < 3 and time.monotonic() < deadline:
                st = vm.qmp.qom_get(BALLOON_QOM, "guest-stats")
                if st["last-update"] > last:
                    last, updates = st["last-update"], updates + 1
                time.sleep(0.5)
        finally:
            vm.qmp.qom_set(BALLOON_QOM, "guest-stats-polling-interval", 0)
        check(updates >= 3, f"guest-stats updated {updates} times in 60 s")
        total = st["stats"]["stat-total-memory"] // 1024
        memtotal = g.meminfo()["MemTotal"]
        n = int(g.read(f"{bal}/stats_requests").strip()) - n0
        note(f"guest-stats: {updates} updates, stat-total-memory {total} kB, MemTotal "
             f"{memtotal} kB; stats_requests +{n}")
        check(abs(total - memtotal) <= 1024, f"stat-total-memory {total} kB, MemTotal "
              f"{memtotal} kB")
        check(n >= updates, f"stats_requests rose by {n} for {updates} updates")
        vm.qmp.balloon(self.full)
        vm.qmp.wait_actual(self.full, timeout=120)

    def refused(self, note, ko, want, why):
        """insmod ko fails with want; the kernel log says why."""
        g = self.require_vm().guest
        mark = len(g.check("dmesg").splitlines())
        rc, out = g.run(f"insmod {ko} 2>&1")
        new = g.check("dmesg").splitlines()[mark:]
        signer = g.run(f"modinfo -F signer {ko}")[1].strip()
        note(f"insmod {ko} (signer {signer!r}): exit {rc}: {out.strip()}")
        note("dmesg: " + " | ".join(l.strip() for l in new))
        check(rc != 0, f"insmod {ko} succeeded")
        check(want in out, f"insmod {ko}: {out.strip()!r}, want {want!r}")
        check(any(l.endswith(why) for l in new),
              f"the kernel log does not say {why!r}:\n" + "\n".join(new))
        mods, dev, drv = self.balloon_state()
        check(drv == "vballoon", f"{dev} is bound to {drv} after the refused insmod")
        self.console_clean()
        return out.strip(), new

    def step_unsigned(self, note):
        self.refused(note, SB_UNSIGNED, REFUSED, REFUSED_UNSIGNED)

    def step_otherkey(self, note):
        self.refused(note, SB_OTHERKEY, REFUSED, REFUSED_KEY)

    def fallback(self, note, why):
        """vballoon refused at boot (the kernel log says why): udev bound
        virtio_balloon through the install rule, which logged modprobe's
        error, and the balloon follows QMP."""
        mods, dev, drv = self.balloon_state()
        log = self.kernel_log()
        seen = self.dmesg(re.escape(why))
        note(f"loaded: {mods}; {dev}/driver -> {drv}; kernel log: {log}")
        note("dmesg: " + " | ".join(l.strip() for l in seen))
        check(mods == ["virtio_balloon"] and drv == "virtio_balloon",
              f"udev did not bind virtio_balloon: loaded {mods}, {dev}/driver -> {drv}")
        check(seen, f"the kernel log does not say {why!r}")
        want = f"{LOG_FAILED} (ERROR: could not insert 'vballoon': {REFUSED}): " \
            "loading virtio_balloon"
        check(log == [want], f"the kernel log has {log}, want [{want!r}]")
        self.follows(note)

    def step_not_enrolled(self, note):
        """The administrator skipped mokutil --import: the variable store
        without MokList. The DKMS-signed vballoon is refused."""
        self.shutdown()
        self.boot(note, OVMF_VARS)
        g = self.vm.guest
        test = g.run(f"mokutil --test-key {DKMS_KEY} 2>&1")[1].strip()
        note(f"mokutil --test-key {DKMS_KEY}: {test!r}")
        check(test.endswith("is not enrolled"), f"mokutil --test-key: {test!r}")
        self.fallback(note, REFUSED_KEY)

    def step_refused_boot(self, note):
        """An unsigned vballoon where DKMS put the signed one: refused at
        boot, and udev binds virtio_balloon through the install rule."""
        vm = self.require_vm()
        vm.guest.check(f"cp {SB_UNSIGNED} /lib/modules/{self.kver}/updates/dkms/vballoon.ko"
                       " && depmod && sync", timeout=300)
        self.shutdown()
        self.boot(note)
        self.fallback(note, REFUSED_UNSIGNED)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel", action="append", metavar="KVER",
                   help="kernel to boot (repeatable); default: every kernel with headers "
                        "and /boot/vmlinuz-KVER")
    p.add_argument("--no-boot", action="store_true", help="only the package tests")
    p.add_argument("-j", "--jobs", type=int, default=2, metavar="N",
                   help="guests running at a time, one per kernel (default: 2)")
    p.add_argument("--no-make-install", action="store_true",
                   help="skip the make install/uninstall test")
    p.add_argument("--mirror", help="Debian's archive for debootstrap (default: "
                                    "VB_MIRROR, or this machine's APT sources)")
    p.add_argument("--accel", choices=["kvm", "tcg"], help="skip the KVM probe")
    p.add_argument("--upgrade", action="store_true",
                   default=os.environ.get("DISTRO_UPGRADE") == "1",
                   help="also the Debian 13 guest upgraded to trixie-backports' kernel "
                        "(default with DISTRO_UPGRADE=1 in the environment)")
    p.add_argument("--upgrade-only", action="store_true",
                   help="only the package build and the Debian 13 upgrade guest")
    p.add_argument("--no-secureboot", action="store_true",
                   help="skip the Secure Boot guest (OVMF, shim, the DKMS key in MokList)")
    p.add_argument("--secureboot-only", action="store_true",
                   help="only the package build and the Secure Boot guest")
    p.add_argument("--keep", action="store_true", help="keep the run directory")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print every step's notes and timing")
    return p.parse_args()


def main():
    args = parse_args()
    t_start = time.monotonic()
    tap = Tap(args.verbose)
    if os.geteuid() != 0:
        def needs_root(note):
            raise Skip("needs root (dpkg, dkms, debootstrap)")
        tap.step("distro", needs_root)
        return tap.summary(time.monotonic() - t_start)

    BUILD.mkdir(parents=True, exist_ok=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    # One run at a time per machine: the package is installed system-wide.
    # The Secure Boot guest alone installs nothing here; its cache has a
    # lock of its own.
    lockdir = Path("/run/lock") if Path("/run/lock").is_dir() else BUILD
    lock = open(lockdir / ("vballoon-sb-test.lock" if args.secureboot_only
                           else "vballoon-distro-test.lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        tap.diag("another distro test is running; waiting for it")
        fcntl.flock(lock, fcntl.LOCK_EX)
    run = BUILD / time.strftime("run-%Y%m%d-%H%M%S")
    run.mkdir(parents=True)
    tap.diag(f"run dir {run}")

    blacklist = tap.step("distro/docs", step_docs)
    version = tap.step("distro/version", step_version) or \
        (REPO / "VERSION").read_text().strip()
    pkg = Package(run, version)
    kernels = args.kernel or [k for k in pkg.kernels if Path(f"/boot/vmlinuz-{k}").exists()]
    guests = []

    def host_side():
        """Purge the package, then make install / uninstall."""
        try:
            tap.step("distro/deb-purge", pkg.purge)
        finally:
            pkg.cleanup()
        if not args.no_make_install:
            tap.step("distro/make-install", step_make_install, run, version, pkg.kernels)

    def prepare(note):
        check(pkg.conf and all(k in pkg.modules for k in kernels),
              f"no DKMS-built module from the package for "
              f"{[k for k in kernels if k not in pkg.modules]} (deb-install failed)")
        check(blacklist, "no blacklist lines from README.md (distro/docs failed)")
        tar = ensure_rootfs(note, args.mirror)
        progs = initramfs.build_guest_programs(REPO / "build" / "selftests" / "bin")
        image = build_image(note, run, tar, {k: pkg.modules[k] for k in kernels},
                            pkg.conf, progs["agent"])
        accel = args.accel
        if accel is None:
            accel = "tcg"
            if os.access("/dev/kvm", os.R_OK | os.W_OK):
                probe_initrd, _ = initramfs.build_initramfs(
                    kernels[0], pkg.modules[kernels[0]], BUILD / "initramfs", progs)
                accel = probe_kvm(kernels[0], probe_initrd, run / "kvm-probe")
        note(f"accel {accel}")
        return image, accel

    # The upgrade guest uses the KVM probe's answer when the Debian 12
    # guests' preparation makes one (it needs the host's module).
    accel_box = {"accel": args.accel}
    accel_known = threading.Event()
    if args.accel or args.upgrade_only or args.secureboot_only:
        accel_known.set()

    def prepare_and_probe(note):
        try:
            image, accel_box["accel"] = prepare(note)
            return image, accel_box["accel"]
        finally:
            accel_known.set()

    # The upgrade guest is the long pole (about as long as all the Debian 12
    # guests together): it keeps one of the --jobs slots to itself, and the
    # Debian 12 guests take turns in the others.
    upgrading = (args.upgrade or args.upgrade_only) and not args.no_boot
    slots = threading.Semaphore(max(1, args.jobs - upgrading))

    def prepare_upgrade(note):
        check(pkg.deb.exists(), "no package was built (distro/deb-build failed)")
        rootfs = ensure_trixie_rootfs(note, args.mirror)
        progs = initramfs.build_guest_programs(REPO / "build" / "selftests" / "bin")
        image = ensure_upgrade_image(note, rootfs, pkg.deb, progs["agent"])
        return image, rootfs[2:]

    def prepare_secureboot(note):
        check(pkg.deb.exists(), "no package was built (distro/deb-build failed)")
        for f in (OVMF_CODE, OVMF_VARS):
            check(f.exists(), f"no {f} (package ovmf): run make deps")
        SB_CACHE.mkdir(parents=True, exist_ok=True)
        with open(SB_CACHE / "lock", "w") as cache_lock:
            fcntl.flock(cache_lock, fcntl.LOCK_EX)
            tar = ensure_sb_rootfs(note, args.mirror)
            progs = initramfs.build_guest_programs(REPO / "build" / "selftests" / "bin")
            return ensure_sb_image(note, tar, pkg.deb, progs["agent"])

    def secureboot_side():
        """The Secure Boot guest: its image made beside the rest, its boots
        in a slot of the Debian 12 guests'."""
        image = tap.step("distro/secureboot/image", prepare_secureboot)
        accel_known.wait()
        steps = [("sb-state", "step_sb_state"), ("mok-enrolled", "step_mok"),
                 ("udev-autoload", "step_sb_autoload"),
                 ("balloon-stats", "step_sb_balloon"),
                 ("unsigned-refused", "step_unsigned"),
                 ("otherkey-refused", "step_otherkey"),
                 ("not-enrolled-fallback", "step_not_enrolled"),
                 ("unsigned-at-boot-fallback", "step_refused_boot")]
        guest = None
        if image:
            try:
                guest = SecureBootGuest(run, image, accel_box["accel"] or "tcg")
                guests.append(guest)
            except Exception as e:
                tap.diag(f"secureboot: cannot set up the guest: {e}")
        with slots:
            run_steps("distro/secureboot", guest, steps,
                      "no guest to run in (see distro/secureboot/image)")
        if guest and guest.boot_times:
            tap.diag("secureboot: firmware to agent " +
                     ", ".join(f"{t:.0f} s" for t in guest.boot_times))

    def upgrade_side():
        """The Debian 13 guest: prepared beside the rest, then booted one
        kernel at a time in its own slot."""
        prepared = tap.step("distro/upgrade/image", prepare_upgrade)
        accel_known.wait()
        steps = [("{k0}/udev-autoload", "step_612"),
                 ("apt-install-{abi}", "step_upgrade"),
                 ("{abi}/udev-autoload", "step_new_kernel"),
                 ("apt-install-{cloud}", "step_no_headers")]
        guest = None
        if prepared:
            image, (abi, cloud, kver0) = prepared
            names = dict(k0=kver0, abi=abi, cloud=cloud)
            try:
                guest = UpgradeGuest(run, image, accel_box["accel"] or "tcg",
                                     kver0, abi, cloud)
                guests.append(guest)
            except Exception as e:
                tap.diag(f"upgrade: cannot set up the guest: {e}")
        labels = [name.format(**names) if guest else name.split("/")[-1]
                  for name, _ in steps]
        run_steps("distro/upgrade", guest, zip(labels, (m for _, m in steps)),
                  "no guest to run in (see distro/upgrade/image)")

    def run_steps(prefix, guest, steps, missing):
        """TAP step per (label, method of guest); each fails with missing
        when there is no guest. Stops the guest at the end."""
        try:
            for label, meth in steps:
                if guest is None:
                    tap.step(f"{prefix}/{label}", lambda note: check(False, missing))
                else:
                    tap.step(f"{prefix}/{label}", getattr(guest, meth))
        finally:
            if guest:
                guest.stop()

    def one_kernel(kver, prepared):
        with slots:
            one_kernel_steps(kver, prepared)

    def one_kernel_steps(kver, prepared):
        steps = [("udev-autoload", "step_autoload"), ("balloon", "step_balloon"),
                 ("modprobe-r", "step_unload"), ("blacklist-both", "step_blacklist"),
                 ("no-vballoon", "step_no_vballoon")]
        guest = None
        if prepared:
            try:
                guest = DistroGuest(run, kver, prepared[0], prepared[1], blacklist)
                guests.append(guest)
            except Exception as e:
                tap.diag(f"{kver}: cannot set up the guest: {e}")
        run_steps(f"distro/{kver}", guest, steps,
                  "no guest to run in (see distro/rootfs)")

    def parallel(*fns):
        threads = [threading.Thread(target=fn, daemon=True) for fn in fns]
        for th in threads:
            th.start()
        for th in threads:
            while th.is_alive():
                th.join(0.5)

    # The package is built and installed first: the guests boot its modules.
    # Then two things at a time, one per CPU: the machine's side (purge, make
    # install) beside the guest image, then the kernels' guests side by side.
    # The upgrade's chain starts once the package exists and runs beside
    # all of that.
    upgrade = None
    side = [upgrade_side] if upgrading else []
    if args.secureboot_only or not (args.no_boot or args.no_secureboot or
                                    args.upgrade_only):
        side.append(secureboot_side)
    try:
        tap.step("distro/deb-build", pkg.build)
        if side:
            upgrade = threading.Thread(target=lambda: parallel(*side), daemon=True)
            upgrade.start()
        if not (args.upgrade_only or args.secureboot_only):
            tap.step("distro/lintian", pkg.lintian)
            tap.step("distro/deb-install", pkg.install)
            prepared = []
            if args.no_boot:
                host_side()
            else:
                parallel(host_side, lambda: prepared.append(
                    tap.step("distro/rootfs", prepare_and_probe)))
                parallel(*[lambda k=k: one_kernel(k, prepared[0]) for k in kernels])
        while upgrade is not None and upgrade.is_alive():
            upgrade.join(0.5)
    except KeyboardInterrupt:
        print("# interrupted", flush=True)
        for g in list(guests):
            g.stop()
        return 130
    finally:
        pkg.cleanup()

    rc = tap.summary(time.monotonic() - t_start)
    if rc == 0 and not args.keep:
        shutil.rmtree(run, ignore_errors=True)
    else:
        print(f"# logs kept in {run}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
