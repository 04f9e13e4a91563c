# SPDX-License-Identifier: GPL-2.0
"""make overcommit in small, so it cannot rot: two guests in one host memory
cgroup, the load moving from one to the other once, the reference policy
of vbtest.overcommit ballooning them (selftests/overcommit.py runs the
whole story)."""
from vbtest import MiB, case
from vbtest import cgroup
from vbtest.overcommit import Policy, Scenario

GUEST_MIB, WS_MIB = 512, 200


@case(mem=128, smp=1, fresh=True, timeout=240)
def case_overcommit_swing(t):
    """Guest B busy, A idle; then A busy, B idle. Both QEMUs share a cgroup
    holding two thirds of their memory plus their idle overhead. The
    guests boot here, in the cgroup: the runner's own guest stays idle.
    Each phase lasts long enough after the rebalance for the policy to
    see the idle guest idle (IDLE_S) and balloon it."""
    why = cgroup.available()
    if why:
        t.skip(f"no host memory cgroup: {why}")
    sc = Scenario(t.kver, (t.vm.initrd, t.driver), t.driver, "policy",
                  t.vm.workdir / "overcommit", t.vm.accel, guests=2, mem=GUEST_MIB,
                  ws=WS_MIB, swings=1, log=t.log,
                  name=f"vbtest-overcommit-{t.kver}-qemu{t.host.name}",
                  hold=3 * Policy.IDLE_S)
    r = sc.run()
    for p in r["phases"]:
        t.log(f"phase {p['phase']} ({p['busy']} busy): rebalance {p['rebalance_s']}")
    a, b = r["guests_detail"]["A"], r["guests_detail"]["B"]
    # the working sets: written, verified again and again, never lost
    t.eq(r["lost"], 0, "working sets lost")
    t.eq(r["verify_fail"], 0, "pattern verifications failed")
    t.check(r["verify_ok"] >= 3, f"only {r['verify_ok']} verifications done")
    t.check(all(p["rebalance_s"] is not None for p in r["phases"]),
            "a busy guest never held its working set")
    # the guests: no OOM kill, no panic, nothing on the console
    t.eq(r["guest_oom_kill"], 0, "guest OOM kills (/proc/vmstat oom_kill)")
    t.eq(r["panics"], 0, "guest panics")
    for g, d in r["guests_detail"].items():
        t.check(not d["console"], f"guest {g} console: {d['console']}")
    # the host: no QEMU killed, the cgroup below its limit
    t.eq(r["qemu_killed"], 0, "QEMUs killed")
    t.eq(r["cg_oom_kill"], 0, "cgroup OOM kills")
    t.check(r["peak"] < r["limit"],
            f"cgroup peak {r['peak'] // MiB} MiB reached its limit {r['limit'] // MiB} MiB")
    t.log(f"cgroup peak {r['peak'] // MiB} of {r['limit'] // MiB} MiB")
    # where the memory went: A (busy) has it back, B (idle) gave it up,
    # in QMP's actual, the guests' balloon counters and QEMU's RSS
    full = GUEST_MIB * MiB
    t.check(a["actual"] >= (WS_MIB + 64) * MiB,
            f"busy guest A: QMP actual {a['actual'] // MiB} MiB, working set {WS_MIB} MiB")
    t.check(b["actual"] <= full // 2,
            f"idle guest B still holds {b['actual'] // MiB} MiB (QMP actual)")
    for g, d in (("A", a), ("B", b)):
        t.near(d["balloon_pages"] * 4096 // MiB, (full - d["actual"]) // MiB, 2,
               f"guest {g}: balloon in /proc/vmstat (MiB) vs QMP")
    t.check(a["meminfo"]["MemAvailable"] * 1024 <= a["actual"] - WS_MIB * MiB,
            f"busy guest A: MemAvailable {a['meminfo']['MemAvailable']} kB with "
            f"{a['actual'] // MiB} MiB: where is its working set?")
    # B held its working set in phase 0; once idle and ballooned its QEMU
    # gave most of it back to the host
    rss_b = max(row["g"]["B"]["rss"] for row in r["samples"] if "B" in row["g"])
    t.check(rss_b - b["rss"] >= WS_MIB * MiB // 2,
            f"idle guest B: QEMU RSS {b['rss'] // MiB} MiB, at most {rss_b // MiB} MiB")
    t.log(f"B's QEMU RSS {rss_b // MiB} -> {b['rss'] // MiB} MiB; moved "
          f"{r['moved_mib']} MiB; stats age median {r['stats_age_median']}")
