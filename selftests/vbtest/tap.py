# SPDX-License-Identifier: GPL-2.0
"""TAP output shared by runner.py and distro.py, safe from worker threads."""
import sys
import threading


class Tap:
    def __init__(self, verbose):
        self.lock = threading.Lock()
        self.n = 0
        self.counts = {"passed": 0, "failed": 0, "skipped": 0}
        self.verbose = verbose
        self.times = []
        print("TAP version 13", flush=True)

    def line(self, name, status, why=(), secs=None):
        """Count and print one result; the caller holds self.lock."""
        self.n += 1
        if secs is not None:
            self.times.append((name, secs))
        if status == "ok":
            self.counts["passed"] += 1
            print(f"ok {self.n} - {name}")
        elif status == "skip":
            self.counts["skipped"] += 1
            print(f"ok {self.n} - {name} # SKIP {why[0] if why else ''}")
        else:
            self.counts["failed"] += 1
            print(f"not ok {self.n} - {name}")

    @staticmethod
    def comment(lines):
        for line in lines:
            for sub in str(line).splitlines() or [""]:
                print(f"# {sub}")
        sys.stdout.flush()

    def diag(self, msg):
        with self.lock:
            print(f"# {msg}", flush=True)

    def totals(self, wall, slowest):
        """The slowest steps, the wall time and "N passed, N failed"."""
        if self.times:
            slow = sorted(self.times, key=lambda x: -x[1])[:slowest]
            print("# slowest: " + ", ".join(f"{n} {s:.1f} s" for n, s in slow))
        print(f"# wall time {wall:.0f} s")
        c = self.counts
        out = f"{c['passed']} passed, {c['failed']} failed"
        if c["skipped"]:
            out += f", {c['skipped']} skipped"
        print(out, flush=True)
        return 1 if c["failed"] else 0
