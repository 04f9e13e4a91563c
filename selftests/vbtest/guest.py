# SPDX-License-Identifier: GPL-2.0
"""Host end of the guest command channel (see guest/agent.c for the protocol)."""
import re
import shlex
import socket
import time

HDR = re.compile(rb"@@VBA (\d+) (-?\d+) (\d+)\n")
READY = b"@@VBA READY\n"
# Added to every command's timeout before the host gives up on the agent
# (the agent kills the command itself at the timeout and still answers).
GRACE = 15


class GuestError(Exception):
    """A command in the guest failed (non-zero exit)."""


class GuestDead(Exception):
    """The guest stopped answering: the agent channel is unusable."""


class CaseTimeout(Exception):
    """The case used up its time budget."""


class Job:
    """A guest command running in the background (Guest.spawn)."""

    def __init__(self, guest, n, pid, cmd):
        self.g, self.n, self.pid, self.cmd = guest, n, pid, cmd
        self.base = f"/tmp/.job{n}"

    def output(self):
        """Everything the job printed so far (stdout+stderr)."""
        return self.g.check(f"cat {self.base}.out")

    def running(self):
        return self.g.run(f"test -e {self.base}.rc")[0] != 0

    def signal(self, sig="TERM"):
        self.g.check(f"kill -{sig} {self.pid}")

    def wait_output(self, regex, timeout=60, poll=0.5):
        """Wait until the output matches regex; returns the match."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.output()
            m = re.search(regex, out, re.M)
            if m:
                return m
            if not self.running():
                raise GuestError(f"job '{self.cmd}' exited before printing "
                                 f"/{regex}/; output:\n{out}")
            if time.monotonic() > deadline:
                raise GuestError(f"job '{self.cmd}': /{regex}/ not seen in "
                                 f"{timeout} s; output:\n{out}")
            time.sleep(poll)

    def wait(self, timeout=60, poll=0.5):
        """Wait for the job to end; returns (rc, output)."""
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline:
                raise GuestError(f"job '{self.cmd}' still running after {timeout} s")
            time.sleep(poll)
        rc = int(self.g.check(f"cat {self.base}.rc").strip())
        return rc, self.output()

    def stop(self, sig="TERM", timeout=30):
        """Signal the job (if running) and wait; returns (rc, output)."""
        if self.running():
            self.g.run(f"kill -{sig} {self.pid}")
        return self.wait(timeout)


class Guest:
    """Command agent client: run shell commands in the guest.

    deadline (time.monotonic() value or None) caps every timeout; when it has
    passed, CaseTimeout is raised.
    """

    def __init__(self, sock_path, page_kb=4):
        self.sock_path = str(sock_path)
        self.page_kb = page_kb          # the guest's page size in kB
        self.sock = None
        self.buf = b""
        self.next_id = 0
        self.deadline = None
        self.jobs = []
        self.dead = False

    def connect(self, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.sock_path)
                self.sock = s
                return
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self):
        if self.sock:
            self.sock.close()
            self.sock = None

    def _recv(self, until):
        """Read more from the agent, up to monotonic time until."""
        left = until - time.monotonic()
        if left <= 0:
            raise socket.timeout
        self.sock.settimeout(left)
        data = self.sock.recv(65536)
        if not data:
            self.dead = True
            raise GuestDead("agent channel closed (QEMU exited?)")
        self.buf += data

    def wait_ready(self, timeout, alive=lambda: True):
        """Wait for the agent's READY line; False on timeout or death."""
        deadline = time.monotonic() + timeout
        while READY not in self.buf:
            if not alive():
                return False
            try:
                self._recv(min(deadline, time.monotonic() + 0.5))
            except socket.timeout:
                if time.monotonic() > deadline:
                    return False
            except GuestDead:
                return False
        self.buf = self.buf.split(READY, 1)[1]
        return True

    def _budget(self, timeout):
        """(timeout in whole seconds, whether the case deadline shortened it)."""
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 1:
                raise CaseTimeout("case time budget used up")
            if left < timeout:
                return max(1, int(left)), True
        return max(1, int(timeout)), False

    def run(self, cmd, timeout=30):
        """Run cmd with sh -c in the guest; returns (rc, stdout+stderr).

        rc 124 means the agent killed the command at the timeout.  Raises
        GuestDead if the agent does not answer at all.
        """
        if self.dead:
            raise GuestDead("guest is dead")
        timeout, clamped = self._budget(timeout)
        self.next_id += 1
        rid = self.next_id
        data = cmd.encode()
        try:
            self.sock.sendall(b"@@REQ %d %d %d\n" % (rid, timeout, len(data)) + data)
            until = time.monotonic() + timeout + GRACE
            while True:
                m = HDR.search(self.buf)
                if m and len(self.buf) >= m.end() + int(m.group(3)):
                    end = m.end() + int(m.group(3))
                    out = self.buf[m.end():end]
                    self.buf = self.buf[end:]
                    if int(m.group(1)) != rid:
                        continue    # a stale answer to a command we gave up on
                    rc = int(m.group(2))
                    if rc == 124 and clamped:
                        raise CaseTimeout(f"case time budget used up in '{cmd}'")
                    return rc, out.decode(errors="replace")
                self._recv(until)
        except (socket.timeout, OSError) as e:
            self.dead = True
            raise GuestDead(f"no answer from the guest to '{cmd}' within "
                            f"{timeout + GRACE} s ({e or 'timeout'})") from None

    def check(self, cmd, timeout=30):
        """Like run() but raises GuestError on non-zero exit; returns output."""
        rc, out = self.run(cmd, timeout)
        if rc != 0:
            raise GuestError(f"guest command failed (rc={rc}): {cmd}\n{out.rstrip()}")
        return out

    # -- helpers ----------------------------------------------------------
    def read(self, path):
        return self.check(f"cat {shlex.quote(path)}")

    def write(self, path, value):
        self.check(f"echo {shlex.quote(str(value))} > {shlex.quote(path)}")

    def exists(self, path):
        return self.run(f"test -e {shlex.quote(path)}")[0] == 0

    def meminfo(self):
        """/proc/meminfo as {key: kB} (HugePages_* counts as they are)."""
        out = {}
        for line in self.read("/proc/meminfo").splitlines():
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0])
        return out

    def _plus_pcp(self, fields, drop=""):
        """/proc/meminfo fields summed, in kB, plus the pages on the per-CPU
        lists."""
        pat = "|".join(fields)
        out = self.check(f"{drop}grep -E '^({pat}):' /proc/meminfo; "
                         "awk '$1 == \"count:\" { n += $2 } END { print n }' /proc/zoneinfo")
        lines = out.strip().split("\n")
        return sum(int(l.split()[1]) for l in lines[:-1]) + int(lines[-1]) * self.page_kb

    def free_kb(self, drop_caches=False, slab=False):
        """Free memory in kB including the per-CPU page lists.

        MemFree leaves out pages parked on the per-CPU lists, which can be
        tens of MiB right after a large free (e.g. a deflate); this is the
        number to compare before/after balloon operations. drop_caches
        first drops clean page cache and slab, for comparisons over time.
        slab adds the Slab line: on a KASAN kernel freed objects wait in a
        quarantine (up to 1/32 of RAM) inside their slabs, and free memory
        falls by that much over a few seconds of activity.
        """
        drop = "sync; echo 3 > /proc/sys/vm/drop_caches; " if drop_caches else ""
        return self._plus_pcp(("MemFree", "Slab") if slab else ("MemFree",), drop)

    def available_kb(self):
        """MemAvailable plus the pages on the per-CPU free lists, in kB.

        MemAvailable leaves those pages out; on 6.12 they can be tens of MiB
        after a process exits, free all the same (the next allocations take
        them first).
        """
        return self._plus_pcp(("MemAvailable",))

    def vmstat(self):
        """/proc/vmstat as {key: int}."""
        return {k: int(v) for k, v in
                (l.split() for l in self.read("/proc/vmstat").splitlines())}

    def balloon_devs(self):
        """/sys/bus/virtio/devices/virtioN of every balloon (device id 5)."""
        out = self.check("grep -l '^0x0005$' /sys/bus/virtio/devices/*/device "
                         "2>/dev/null; true")
        return [p.rsplit("/", 1)[0] for p in out.split()]

    def sysfs_balloon_dev(self):
        """/sys/bus/virtio/devices/virtioN of the balloon (device id 5), or None."""
        devs = self.balloon_devs()
        return devs[0] if devs else None

    def features(self, devpath):
        """Negotiated features from sysfs as an int (bit i = char i)."""
        bits = self.read(f"{devpath}/features").strip()
        return sum(1 << i for i, c in enumerate(bits) if c == "1")

    def modules(self):
        """Names of the loaded modules."""
        return [l.split()[0] for l in self.read("/proc/modules").splitlines()]

    def spawn(self, cmd):
        """Start cmd in the background; returns a Job (output in a guest file)."""
        n = len(self.jobs)
        base = f"/tmp/.job{n}"
        inner = f"{cmd} & echo $! >{base}.pid; wait $!; echo $? >{base}.rc"
        self.check(f"rm -f {base}.*; sh -c {shlex.quote(inner)} "
                   f"</dev/null >{base}.out 2>&1 &\n"
                   f"while [ ! -s {base}.pid ]; do usleep 10000; done")
        job = Job(self, n, int(self.read(f"{base}.pid")), cmd)
        self.jobs.append(job)
        return job

    def last_cpu(self):
        """The highest online CPU number (the CPUs online are 0-N)."""
        return int(self.read("/sys/devices/system/cpu/online").strip().split("-")[-1])

    def fragment(self, mib, every=8, timeout=600):
        """Leave free single pages inside blocks still in use: a job holds
        mib MiB in 4 KiB pages and gives back one page in every (memhog -f).
        It runs on the last CPU, which then goes offline and back: a CPU
        going offline hands its per-CPU free lists to the buddy lists,
        where 6.12 would otherwise keep up to 27 MiB per CPU (1 GiB guest)
        out of other CPUs' reach for good. Returns the holding Job."""
        cpu = self.last_cpu()
        job = self.spawn(f"taskset -c {cpu} memhog -w -f {every} {mib}")
        job.wait_output(r"^memhog: holding", timeout=timeout)
        if cpu:
            self.check(f"echo 0 >/sys/devices/system/cpu/cpu{cpu}/online; "
                       f"echo 1 >/sys/devices/system/cpu/cpu{cpu}/online")
        return job

    def kill_jobs(self):
        for job in self.jobs:
            self.run(f"kill -KILL {job.pid} 2>/dev/null")
        self.jobs = []
