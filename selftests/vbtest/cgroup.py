# SPDX-License-Identifier: GPL-2.0
"""A host memory cgroup for a set of QEMU processes (make overcommit).

The cgroup v1 memory controller (/sys/fs/cgroup/memory) or, where the host
has only the unified hierarchy, cgroup v2. A process's memory is charged to
the group it was in when it allocated: v1 hosts that refuse
memory.move_charge_at_immigrate never move charges, so QEMU must enter the
group before it starts. wrap() gives the argv of a shell that writes its own
pid to cgroup.procs and then execs QEMU (the pid stays QEMU's).
"""
import os
import time
from pathlib import Path

V1 = Path("/sys/fs/cgroup/memory")
V2 = Path("/sys/fs/cgroup")


def available():
    """None if a memory cgroup can be made here, else why not."""
    if os.geteuid() != 0:
        return "not root"
    if (V1 / "memory.limit_in_bytes").exists():
        return None
    if "memory" in (V2 / "cgroup.controllers").read_text().split() \
            if (V2 / "cgroup.controllers").exists() else False:
        return None
    return "no memory cgroup controller"


class MemCgroup:
    """A memory cgroup made for this run; remove() takes it away."""

    def __init__(self, name):
        self.v1 = (V1 / "memory.limit_in_bytes").exists()
        base = V1 if self.v1 else V2
        if not self.v1:
            # the v2 controller must be enabled for the root's children
            (V2 / "cgroup.subtree_control").write_text("+memory")
        self.path = base / f"{name}-{os.getpid()}"
        self.path.mkdir()

    def _file(self, v1, v2):
        return self.path / (v1 if self.v1 else v2)

    def _int(self, v1, v2):
        s = self._file(v1, v2).read_text().strip()
        return 1 << 62 if s == "max" else int(s)

    def wrap(self, argv):
        """argv run inside the group from its first allocation on."""
        return ["/bin/sh", "-c", 'echo $$ >"$0" && exec "$@"',
                str(self.path / "cgroup.procs"), *argv]

    def set_limit(self, nbytes):
        self._file("memory.limit_in_bytes", "memory.max").write_text(str(int(nbytes)))
        if not self.v1:
            (self.path / "memory.swap.max").write_text("0")

    def limit(self):
        return self._int("memory.limit_in_bytes", "memory.max")

    def usage(self):
        return self._int("memory.usage_in_bytes", "memory.current")

    def reset_peak(self):
        if self.v1:
            (self.path / "memory.max_usage_in_bytes").write_text("0")
            (self.path / "memory.failcnt").write_text("0")
        elif (self.path / "memory.peak").exists():
            (self.path / "memory.peak").write_text("0")

    def peak(self):
        """Highest usage since reset_peak() (None: this kernel keeps none)."""
        f = self._file("memory.max_usage_in_bytes", "memory.peak")
        return int(f.read_text()) if f.exists() else None

    def events(self):
        """{'oom_kill': processes the group's OOM killer killed, 'limit_hit':
        times an allocation met the limit (v1 failcnt, v2 max events)}."""
        if self.v1:
            oc = dict(line.split() for line in
                      (self.path / "memory.oom_control").read_text().splitlines())
            return {"oom_kill": int(oc.get("oom_kill", 0)),
                    "limit_hit": int((self.path / "memory.failcnt").read_text())}
        ev = dict(line.split() for line in
                  (self.path / "memory.events").read_text().splitlines())
        return {"oom_kill": int(ev.get("oom_kill", 0)), "limit_hit": int(ev.get("max", 0))}

    def pids(self):
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    def remove(self, timeout=10):
        """rmdir the group once its processes are gone (the caller ends
        them: we kill nothing we did not start). A v1 group keeps charges
        of page cache after its processes leave; rmdir moves them to the
        parent."""
        if not self.path.exists():
            return
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        try:
            self.path.rmdir()
        except OSError as e:
            raise RuntimeError(f"cannot remove {self.path} ({e}); processes "
                               f"still in it: {self.pids()}") from None
