# SPDX-License-Identifier: GPL-2.0
"""make soak DURATION=30m: random targets, a churning workload whose data
is checked, compaction over balloon pages, hint rounds (a migration to
/dev/null) and reporting bursts, for the given time on every kernel; a
summary at the end. Not part of make check (run it with runner.py --cases
selftests/soak -v)."""
import os
import random
import re
import time

from vbtest import MiB, CaseFailure, case
from vbtest.migration import migrate, verify_pattern


def seconds(text):
    """'90', '90s', '30m', '2h' in seconds."""
    m = re.fullmatch(r"\s*(\d+)\s*([smh]?)\s*", text)
    if not m:
        raise SystemExit(f"soak: bad DURATION {text!r} (e.g. 600, 30m, 2h)")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


DURATION = seconds(os.environ.get("VB_SOAK_DURATION", "10m"))
DEVICE = {"free-page-hint": "on", "iothread": "io0", "free-page-reporting": "on"}


@case(timeout=DURATION + 900, fresh=True, device=DEVICE,
      qemu_args=["-object", "iothread,id=io0"])
def case_soak(t):
    """Everything at once for DURATION; stops at the first failure."""
    seed = int(os.environ.get("VB_SOAK_SEED", random.randrange(1 << 30)))
    rnd = random.Random(seed)
    t.load_driver()
    total0 = t.g.meminfo()["MemTotal"]
    t.g.check("mount -o remount,size=90% /tmp")
    job = t.g.spawn("pattern hold 64 21")
    job.wait_output(r"^holding", timeout=120)
    t.g.write("/tmp/churn.sh", "while :; do memhog 32 >/dev/null || exit 1; done\n")
    hog = t.g.spawn("sh /tmp/churn.sh")
    ops = dict(targets=0, compactions=0, hint_rounds=0, reports=0, verifies=0)
    failures = 0
    t0 = time.monotonic()
    next_hint = next_report = next_verify = t0
    target = t.mem
    try:
        while time.monotonic() - t0 < DURATION:
            now = time.monotonic()
            if now >= next_verify:
                verify_pattern(t, t.g, job, "soak")
                t.check(hog.running(), f"the workload stopped: {hog.output()[-300:]}")
                ops["verifies"] += 1
                next_verify = now + 30
            elif now >= next_report:
                # 128 MiB written and freed: reported back to the host
                t.g.check("tmpfill fill /tmp/dirty 128 1024 && tmpfill clear /tmp/dirty",
                          timeout=180)
                ops["reports"] += 1
                next_report = now + 45
            elif now >= next_hint:
                migrate(t.qmp, "exec:cat > /dev/null", 1 << 30)
                t.qmp.cmd("cont")
                ops["hint_rounds"] += 1
                next_hint = now + 120
            elif rnd.random() < 0.05:
                t.g.check("echo 1 > /proc/sys/vm/compact_memory", timeout=120)
                ops["compactions"] += 1
            else:
                target = rnd.randrange(448, 1025) * MiB
                t.qmp.balloon(target)
                ops["targets"] += 1
                time.sleep(rnd.uniform(0, 3))
        t.wait_actual(target, timeout=180)
        t.eq(int(t.bsys("actual_pages")), (t.mem - target) // 4096, "sysfs actual_pages")
        t.near(t.g.meminfo()["MemTotal"], total0 - (t.mem - target) // 1024, 2048,
               "MemTotal (kB) at the last target")
        verify_pattern(t, t.g, job, "soak end")
        ops["verifies"] += 1
    except CaseFailure:
        failures += 1
        raise
    finally:
        b = t.bsys() if t.driver_loaded() else {}
        summary = (f"soak {t.kver}: {time.monotonic() - t0:.0f} s, seed {seed}; "
                   + ", ".join(f"{k} {v}" for k, v in ops.items())
                   + f"; pages inflated {b.get('inflated_pages')}, deflated "
                   f"{b.get('deflated_pages')}, migrated {b.get('migrated_pages')}, "
                   f"hinted {b.get('hinted_pages')}, reported "
                   f"{(b.get('reported_bytes') or 0) // 4096}; refusals "
                   f"{b.get('refusals')}; failures {failures}")
        t.log(summary)
        print(f"# {summary}", flush=True)
    hog.stop()
    t.balloon(t.mem)
