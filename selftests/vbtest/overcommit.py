# SPDX-License-Identifier: GPL-2.0
"""Overcommit: several guests in one host memory cgroup, the load moving
between them, a host that balloons them (make overcommit, and a two-guest
case of make check).

Guests A, B, ... each run a working set ("pattern hold", verified again and
again) while they are busy. The first half is idle and the second busy at
the start; each swing moves the load to the other half. The host balloons
them by one of:

  static   the story's plan: at each switch, balloon the guests that went
           idle down to IDLE and, once they are there (or stand still), the
           busy ones up to their full size
  policy   Policy below, every second, from what a host sees
  late     the same, in time to take the memory of the guests that went
           idle, but LATE_S late to give it to the guests whose load rose
           (their load rises once the idle-going guests are down)
  toomuch  the same, and once every busy guest holds its working set, the
           host asks one busy guest for half its working set (a target below
           it) for FORCE_S; the policy keeps counting what the guest still
           holds (actual), so nobody else gets that memory

Everything is measured from both sides: QMP (query-balloon, guest-stats),
QEMU's RSS, the cgroup's usage, peak and OOM kills; the guests' pattern
verification, /proc/vmstat oom_kill, console (panics).
"""
import os
import re
import threading
import time

from .cgroup import MemCgroup
from .qmp import BALLOON_QOM
from .vm import VM, VMConfig, console_problems

MiB = 1 << 20
NAMES = "ABCDEFGHIJKL"
HOLD_S = 2          # a phase goes on this long after every busy guest holds
PHASE_TIMEOUT = 300
LATE_S = 10
FORCE_S = 10
PANIC = re.compile(r"Kernel panic|System is deadlocked on memory")


class CgroupVM(VM):
    """A guest whose QEMU lives in a memory cgroup from its first page on."""

    def __init__(self, cg, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cg = cg

    def argv(self):
        return self.cg.wrap(super().argv())


class Policy:
    """A host's balloon policy, small on purpose: a reference, not a product.

    It sees what a host sees: each guest's actual (query-balloon), its
    guest-stats (polled every second) and the cgroup's usage and limit. Per
    tick:
      - a guest whose use (actual - MemAvailable) stood still for IDLE_S,
        or fell by more than HEADROOM within it (its load ended), and which
        has more than SPARE available is shrunk to its use plus HEADROOM
        (never below lo);
      - a guest with less than LOW available gets STEP more (never above
        hi), neediest first, while the guests together hold no more than
        budget. What a guest holds is max(target, actual): a target the
        guest did not reach (a driver that refuses, an OOM deflate) is
        memory still in use, and giving it to another guest would overrun
        the host;
      - nothing grows while the cgroup is within GUARD of its limit, nor
        before late_until (the late host).
    """
    IDLE_S = 5

    def __init__(self, mem, budget, lo, guard=32 * MiB):
        self.mem, self.budget, self.lo, self.guard = mem, budget, lo, guard
        self.low = mem // 16
        self.step = mem // 4
        self.headroom = mem // 8
        self.spare = mem * 3 // 8
        self.used = {}              # guest -> [(t, bytes in use)]
        self.late_until = 0         # gives no guest more before then
        self.force = {}             # guest -> target the host insists on

    def tick(self, now, view, targets, cg_usage, cg_limit):
        """view: {guest: {'actual', 'avail' (None: stats stale)}};
        targets: {guest: current target}. Returns {guest: new target}."""
        new = dict(targets)
        late = now < self.late_until
        for g, v in view.items():
            if v["avail"] is None:
                continue
            h = self.used.setdefault(g, [])
            h.append((now, v["actual"] - v["avail"]))
            while len(h) > 1 and now - h[1][0] >= self.IDLE_S:
                h.pop(0)    # keep the newest sample at least IDLE_S old
        for g, v in view.items():
            if g in self.force:
                new[g] = self.force[g]
                continue
            if v["avail"] is None:
                continue
            h = self.used[g]
            flat = (now - h[0][0] >= self.IDLE_S and
                    max(u for _, u in h) - min(u for _, u in h) < 8 * MiB)
            # a load that ended (use fell by more than the headroom)
            ended = max(u for _, u in h) - h[-1][1] > self.headroom
            if (flat or ended) and v["avail"] > self.spare:
                new[g] = min(new[g], max(self.lo, _mib(h[-1][1] + self.headroom)))
            elif v["actual"] > new[g] and v["avail"] < self.low and not late:
                new[g] = _mib(v["actual"])      # the guest deflated on OOM: keep it
        held = sum(max(new[g], view[g]["actual"]) for g in view)
        room = cg_limit - cg_usage > self.guard
        needy = sorted((v["avail"], g) for g, v in view.items()
                       if v["avail"] is not None and v["avail"] < self.low
                       and g not in self.force)
        for _, g in needy:
            grow = max(0, min(self.step, self.mem - new[g], self.budget - held))
            if room and grow and not late:
                held += max(new[g] + grow, view[g]["actual"]) - max(new[g], view[g]["actual"])
                new[g] += grow
        return new


def _mib(n):
    return n // MiB * MiB


class Slot:
    """One guest of the scenario."""

    def __init__(self, name, vm):
        self.name, self.vm = name, vm
        self.g, self.qmp = vm.guest, vm.qmp
        self.job = None
        self.busy = False
        self.dead = None            # why the guest is gone
        self.lost = []              # jobs that ended on their own
        self.verify_ok = self.verify_fail = 0
        self.vmstat0 = None

    def alive(self):
        return self.dead is None and self.vm.alive()


class Scenario:
    """One run: N guests, one driver, one host behaviour (mode)."""

    def __init__(self, kver, image, driver, mode, workdir, accel="tcg", guests=6,
                 mem=512, ws=400, swings=5, reporting=False, host=None, log=print,
                 name="vballoon-overcommit", params="", hold=HOLD_S):
        self.kver, self.image, self.driver, self.mode = kver, image, driver, mode
        self.workdir, self.accel, self.n, self.mem = workdir, accel, guests, mem * MiB
        self.ws, self.swings, self.reporting, self.log = ws, swings, reporting, log
        self.full, self.idle = self.mem, self.mem // 4
        # the story's host: two thirds of what the guests are given
        self.host = (host or guests * mem * 2 // 3) * MiB
        self.cgname, self.params, self.hold = name, params, hold
        self.slots, self.samples, self.events = [], [], []
        self.targets = {}
        self.lock = threading.Lock()
        self.plan_lock = threading.Lock()     # a phase switch against a static plan
        self.phase_k = None
        self.stop_sampler = threading.Event()
        self.policy = None
        self.t0 = None
        self.started, self.threads = [], []     # every QEMU, the threads that started them
        self.done = threading.Event()

    # -- guests ------------------------------------------------------------
    def config(self):
        dev = {"deflate-on-oom": "on"}
        if self.reporting:
            dev["free-page-reporting"] = "on"
        return VMConfig.make(mem=self.mem // MiB, smp=1, device=dev)

    def boot_one(self, name, vms, booted):
        """A thread per guest, alive as long as the guest: QEMU gets
        SIGKILL when the thread that started it ends (PR_SET_PDEATHSIG)."""
        initrd = self.image[0]
        for attempt in (1, 2):
            vm = CgroupVM(self.cg, self.kver, initrd, self.config(),
                          self.workdir / f"{name}-a{attempt}", self.accel)
            vms.append(vm)
            with self.lock:
                self.started.append(vm)
            if vm.start():
                break
            vm.stop()
            self.log(f"guest {name}: boot attempt {attempt} failed")
        booted.set()
        self.done.wait()

    def boot(self):
        """All guests at once (they boot in a few seconds of CPU each)."""
        drvname = self.image[1]
        vms = {NAMES[i]: [] for i in range(self.n)}
        for n, v in vms.items():
            booted = threading.Event()
            th = threading.Thread(target=self.boot_one, args=(n, v, booted), daemon=True)
            th.start()
            self.threads.append((th, booted))
        for th, booted in self.threads:
            while not booted.wait(0.5):
                pass
        for name, tried in vms.items():
            vm = tried[-1]
            if vm.alive() and vm.boot_time is not None:
                self.slots.append(Slot(name, vm))
        if len(self.slots) < self.n:
            raise RuntimeError("guests did not boot: " + ", ".join(
                f"{n}: {' | '.join(v[-1].console.tail(3))}" for n, v in vms.items()
                if not (v[-1].alive() and v[-1].boot_time is not None)))
        for s in self.slots:
            s.g.check(f"insmod /lib/{drvname}.ko {self.params}")
            s.qmp.qom_set(BALLOON_QOM, "guest-stats-polling-interval", 1)
            s.vmstat0 = s.g.vmstat()
            self.targets[s.name] = self.full

    def warm_up(self):
        """Both balloon paths once, the programs once, then the idle
        overhead: the cgroup's usage minus the guest memory in use."""
        for s in self.slots:
            s.qmp.balloon(self.full - 16 * MiB)
        for s in self.slots:
            s.qmp.wait_actual(self.full - 16 * MiB, 120, settle=5)
            s.qmp.balloon(self.full)
        for s in self.slots:
            s.qmp.wait_actual(self.full, 120, settle=5)
        # a thread a guest (each its own agent): a second each, not six
        errors = []

        def programs(s):
            try:
                s.g.check("memhog 16 >/dev/null; pattern hold 1 & p=$!; sleep 1; kill $p")
            except Exception as e:
                errors.append(f"{s.name}: {e}")
        runs = [threading.Thread(target=programs, args=(s,), daemon=True) for s in self.slots]
        for th in runs:
            th.start()
        for th in runs:
            th.join(120)
        if errors:
            raise RuntimeError("warm-up: " + "; ".join(errors))
        time.sleep(2)
        guest_used = 0
        for s in self.slots:
            guest_used += self.mem - s.g.meminfo()["MemFree"] * 1024
        usage = self.cg.usage()
        return usage, max(0, usage - guest_used)

    # -- sampling and the policy (a thread of its own; QMP and /proc only) --
    def sampler(self):
        while not self.stop_sampler.wait(1.0):
            try:
                self.sample()
            except Exception as e:      # a guest dying under us
                self.note(f"sampler: {type(e).__name__}: {e}")

    def sample(self):
        now = time.monotonic() - self.t0
        wall = time.time()
        row = {"t": now, "cg": self.cg.usage(), "limit": self.cg.limit(), "g": {}}
        view = {}
        for s in self.slots:
            if not s.alive():
                if s.dead is None:
                    s.dead = f"QEMU exited (status {s.vm.proc.returncode})"
                    self.note(f"{s.name}: {s.dead}")
                continue
            try:
                actual = s.qmp.query_balloon()
                st = s.qmp.qom_get(BALLOON_QOM, "guest-stats")
                rss = s.vm.rss().get("VmRSS", 0) * 1024
            except Exception:
                continue
            age = wall - st["last-update"] if st.get("last-update") else None
            stats = st.get("stats", {})
            avail = stats.get("stat-available-memory", -1)
            avail = avail if avail >= 0 and age is not None and age < 5 else None
            row["g"][s.name] = {"target": self.targets[s.name], "actual": actual,
                                "rss": rss, "avail": avail, "age": age, "busy": s.busy}
            view[s.name] = {"actual": actual, "avail": avail}
        with self.lock:
            self.samples.append(row)
        if self.policy:
            new = self.policy.tick(now, view, {g: self.targets[g] for g in view},
                                   row["cg"], row["limit"])
            for g, tgt in new.items():
                if tgt != self.targets[g]:
                    self.set_target(g, tgt)

    def set_target(self, name, target):
        s = next(x for x in self.slots if x.name == name)
        self.targets[name] = target
        try:
            s.qmp.balloon(target)
        except Exception as e:
            self.note(f"{name}: balloon {target // MiB} MiB: {e}")

    def note(self, msg):
        t = time.monotonic() - self.t0 if self.t0 else 0
        with self.lock:
            self.events.append((t, msg))
        self.log(f"[{t:6.1f}s] {msg}")

    # -- the working sets (main thread: the only one talking to agents) ------
    def start_load(self, s, seed):
        s.busy = True
        s.job = s.g.spawn(f"pattern hold {self.ws} {seed}")
        s.load_t = time.monotonic()
        s.held_t = None
        s.minflt0 = _minflt(s.vm.proc.pid)

    def poll_load(self, s):
        """True once s's job holds its working set; records when."""
        if s.held_t is not None:
            return True
        if not s.alive():
            return False
        out = s.job.output()
        if "holding" in out:
            s.held_t = time.monotonic()
            s.write_s = s.held_t - s.load_t
            s.write_minflt = _minflt(s.vm.proc.pid) - s.minflt0
            thp = _thp(s.g)
            s.write_thp = {k: thp[k] - s.thp0[k] for k in thp}
            return True
        if not s.job.running():
            rc, out = s.job.wait(5)
            s.lost.append(f"pattern exited ({rc}) before holding: {out.strip()[-200:]}")
            self.note(f"{s.name}: working set lost: rc {rc}")
            s.job = None
            s.held_t = -1
        return False

    def verify(self, slots, timeout=180):
        """Ask every holding job to verify (SIGUSR1) and wait for each."""
        asked = []
        for s in slots:
            if not s.alive() or s.job is None or s.held_t in (None, -1):
                continue
            try:
                n = len(s.job.output().splitlines())
                s.job.signal("USR1")
                asked.append((s, n))
            except Exception as e:
                self.note(f"{s.name}: verify: {type(e).__name__}: {e}")
        deadline = time.monotonic() + timeout
        for s, n in asked:
            while s.alive():
                try:
                    res = [x for x in s.job.output().splitlines()[n:]
                           if x.startswith("verify")]
                except Exception:
                    break
                if res:
                    if "FAIL" in res[-1] or any("FAIL" in x for x in res):
                        s.verify_fail += 1
                        self.note(f"{s.name}: {res[-1]}")
                    else:
                        s.verify_ok += 1
                    break
                if time.monotonic() > deadline:
                    self.note(f"{s.name}: no answer to verify in {timeout} s")
                    s.verify_fail += 1
                    break
                time.sleep(0.5)

    def stop_load(self, s):
        s.busy = False
        if s.job is None or not s.alive():
            s.job = None
            return
        try:
            if s.job.running():
                rc, out = s.job.stop()
                if rc not in (0, 143):
                    self.note(f"{s.name}: pattern exit status {rc}")
        except Exception as e:
            self.note(f"{s.name}: stop: {type(e).__name__}: {e}")
        s.job = None

    # -- host behaviours at a phase switch ---------------------------------------
    def static_plan(self, k, idle, busy):
        """The story's balloon commands: the idle guests down, then the busy
        up. A guest's floor may stop it a few MiB short of the target, and
        a plan whose phase ended first gives no command (the next phase's
        plan rules)."""
        for s in idle:
            if s.alive():
                self.set_target(s.name, self.idle)
        self.wait_down(idle, timeout=120, settle=5, phase=k)
        with self.plan_lock:
            if self.phase_k != k:
                self.note(f"phase {k}: static plan overtaken by the next switch")
                return
            for s in busy:
                if s.alive():
                    self.set_target(s.name, self.full)

    def wait_down(self, slots, timeout=60, settle=None, phase=None):
        """Until the host lowered each guest's target and its actual got
        there (or stopped 8 MiB short: the guest's floor); with settle, also
        once actual stood still that many seconds; with phase, only while
        that phase lasts."""
        deadline = time.monotonic() + timeout
        for s in slots:
            last, since = None, time.monotonic()
            while s.alive() and time.monotonic() < deadline and \
                    (phase is None or self.phase_k == phase):
                try:
                    tgt = self.targets[s.name]
                    actual = s.qmp.query_balloon()
                except Exception:
                    break
                now = time.monotonic()
                if tgt < self.full and actual <= tgt + 8 * MiB:
                    break
                if actual != last:
                    last, since = actual, now
                elif settle is not None and now - since >= settle:
                    break
                time.sleep(0.2 if settle is not None else 0.5)

    # -- the run -------------------------------------------------------------
    def run(self):
        self.cg = MemCgroup(self.cgname)
        sampler = None
        try:
            self.boot()
            usage, overhead = self.warm_up()
            limit = self.host + overhead
            self.cg.set_limit(limit)
            self.cg.reset_peak()
            ev0 = self.cg.events()
            self.note(f"idle: cgroup {usage // MiB} MiB, of which QEMU overhead "
                      f"{overhead // MiB} MiB; limit {limit // MiB} MiB")
            if self.mode != "static":
                self.policy = Policy(self.mem, self.host - self.idle // 2, self.idle)
            self.t0 = time.monotonic()
            sampler = threading.Thread(target=self.sampler, daemon=True)
            sampler.start()
            phases = self.phases()
            self.stop_sampler.set()
            sampler.join()
            res = self.collect(phases, limit, overhead, ev0)
        finally:
            self.stop_sampler.set()
            if sampler:
                sampler.join()
            self.shutdown()
        return res

    def phases(self):
        half = self.n // 2
        groups = [self.slots[half:], self.slots[:half]]
        out = []
        for k in range(self.swings + 1):
            busy, idle = groups[k % 2], groups[(k + 1) % 2]
            out.append(self.phase(k, busy, idle))
        return out

    def phase(self, k, busy, idle):
        names = "".join(s.name for s in busy)
        # the working sets of the guests going idle: verified, then ended
        self.verify(idle)
        for s in busy:      # read before the switch, not to delay the loads
            s.thp0 = _thp(s.g)
        with self.plan_lock:
            self.phase_k = k
        t_switch = t_move = time.monotonic()
        self.note(f"phase {k}: {names} busy")
        cur = [{s.name: self.targets[s.name] for s in self.slots}]
        # the load moves: the idle-going jobs end (a thread each: ending a
        # working set takes a guest a second) while the busy-going start
        stoppers = [threading.Thread(target=self.stop_load, args=(s,), daemon=True)
                    for s in idle]
        for th in stoppers:
            th.start()
        if self.mode == "static":
            threading.Thread(target=self.static_plan, args=(k, idle, busy),
                             daemon=True).start()
        elif self.mode == "late":
            # the load rises once the host took the idle-going guests down,
            # and the host gives the busy-going more only LATE_S after
            for th in stoppers:
                th.join()
            self.wait_down(idle)
            t_switch = time.monotonic()
            self.policy.late_until = t_switch - self.t0 + LATE_S
            self.note(f"phase {k}: the idle-going guests are down; {names} start")
        cpu0 = {s.name: _cpu_s(s.vm.proc.pid) for s in self.slots}
        for s in busy:
            if s.alive():
                self.start_load(s, seed=k * 100 + ord(s.name))
        while True:
            done = [self.poll_load(s) for s in busy if s.alive()]
            if all(done) or time.monotonic() - t_switch > PHASE_TIMEOUT:
                break
            time.sleep(0.5)
        # what the host's CPUs did meanwhile: on a host without spare CPU
        # the busy guests' own writes bound the rebalance from below
        cpu = {s.name: _cpu_s(s.vm.proc.pid) - cpu0[s.name] for s in self.slots}
        window = time.monotonic() - t_switch
        for th in stoppers:
            th.join()
        held = [s for s in busy if s.alive() and s.held_t not in (None, -1)]
        ok = len(held) == len(busy)
        rebalance = (max(s.held_t for s in busy) - t_switch) if ok else None
        self.note(f"phase {k}: " + (f"rebalanced in {rebalance:.1f} s" if ok else
                                    "not every busy guest holds its working set"))
        ph = {"phase": k, "busy": names, "t_switch": t_move - self.t0,
              "t_rise": t_switch - self.t0,
              "rebalance_s": rebalance,
              "write_s": {s.name: getattr(s, "write_s", None) for s in held},
              "write_minflt": {s.name: getattr(s, "write_minflt", None) for s in held},
              "write_thp": {s.name: getattr(s, "write_thp", None) for s in held},
              "cpu_s": {"busy": sum(cpu[s.name] for s in busy),
                        "idle": sum(cpu[s.name] for s in idle),
                        "window_s": window, "cpus": os.cpu_count()},
              "targets_before": cur[0]}
        if self.mode == "toomuch" and k == 1 and held:
            ph["toomuch"] = self.too_much(held[0])
        time.sleep(self.hold / 2)
        self.verify(busy)
        time.sleep(self.hold / 2)
        ph["t_end"] = time.monotonic() - self.t0
        return ph

    def too_much(self, s):
        """Ask s for half its working set for FORCE_S; what happens."""
        want = self.ws * MiB // 2
        refusals0 = self.bsys(s, "refusals")
        mark = s.vm.console.mark()
        self.note(f"{s.name}: host asks for {want // MiB} MiB, below its working set")
        self.policy.force[s.name] = want
        self.set_target(s.name, want)
        time.sleep(FORCE_S)
        alive = s.alive()
        actual = s.qmp.query_balloon() if alive else None
        r = {"guest": s.name, "target": want, "actual": actual,
             "refusals": (self.bsys(s, "refusals") - refusals0
                          if alive and refusals0 is not None else None),
             "guest_log": [x for x in s.vm.console.text(mark).splitlines()
                           if re.search(r"not reached|puff|refus", x)][-3:]}
        if alive:
            try:
                r["dmesg"] = [x for x in s.g.check("dmesg | tail -40").splitlines()
                              if re.search(r"not reached|puff|refus", x)][-3:]
            except Exception:
                pass
        self.verify([s])
        del self.policy.force[s.name]
        self.note(f"{s.name}: actual {actual // MiB if actual else '-'} MiB against "
                  f"{want // MiB}; refusals {r['refusals']}")
        return r

    def bsys(self, s, attr):
        if self.driver != "vballoon":
            return None
        try:
            dev = s.g.sysfs_balloon_dev()
            return int(s.g.read(f"{dev}/balloon/{attr}").strip())
        except Exception:
            return None

    # -- results ---------------------------------------------------------------
    def collect(self, phases, limit, overhead, ev0):
        self.verify([s for s in self.slots if s.job is not None])
        for s in self.slots:
            if s.alive():
                try:    # the balloons still, so both sides can be compared
                    s.qmp.wait_actual(self.targets[s.name], 30, settle=2)
                except Exception:
                    pass
        ev = self.cg.events()
        per = {}
        for s in self.slots:
            d = {"dead": s.dead, "lost": s.lost, "verify_ok": s.verify_ok,
                 "verify_fail": s.verify_fail}
            text = s.vm.console.text()
            d["panic"] = bool(PANIC.search(text))
            d["console"] = console_problems(text, allow_oom=True)[:5]
            if s.alive():
                try:
                    vs = s.g.vmstat()
                    d["oom_kill"] = vs.get("oom_kill", 0) - s.vmstat0.get("oom_kill", 0)
                    # what the guest says the balloon holds, against QMP
                    d["balloon_pages"] = sum(
                        sign * (vs.get(k, 0) - s.vmstat0.get(k, 0)) for sign, k in
                        ((1, "balloon_inflate"), (-1, "balloon_deflate")))
                    d["meminfo"] = s.g.meminfo()
                    d["actual"] = s.qmp.query_balloon()
                    d["rss"] = s.vm.rss().get("VmRSS", 0) * 1024
                except Exception:
                    d["oom_kill"] = None
            else:
                d["oom_kill"] = len(re.findall(r"Killed process", text))
            per[s.name] = d
        for s in self.slots:    # the working sets end once both sides are read
            if s.job is not None:
                self.stop_load(s)
        reb = [p["rebalance_s"] for p in phases[1:]]
        moved = self.moved(phases)
        ages = [v["age"] for r in self.samples for v in r["g"].values()
                if v["age"] is not None and v["busy"]]
        ages.sort()
        return {
            "driver": self.driver + ("+reporting" if self.reporting else ""),
            "mode": self.mode, "kernel": self.kver, "guests": self.n,
            "mem_mib": self.mem // MiB, "ws_mib": self.ws, "swings": self.swings,
            "limit": limit, "overhead": overhead, "peak": self.cg.peak(),
            "cg_oom_kill": ev["oom_kill"] - ev0["oom_kill"],
            "cg_limit_hit": ev["limit_hit"] - ev0["limit_hit"],
            "qemu_killed": sum(1 for s in self.slots if s.dead and "-9" in s.dead),
            "verify_fail": sum(d["verify_fail"] for d in per.values()),
            "verify_ok": sum(d["verify_ok"] for d in per.values()),
            "guest_oom_kill": sum(d["oom_kill"] or 0 for d in per.values()),
            "panics": sum(1 for d in per.values() if d["panic"]),
            "lost": sum(len(d["lost"]) for d in per.values()),
            "rebalance_s": reb,
            "moved_mib": moved,
            "stats_age_median": ages[len(ages) // 2] if ages else None,
            "stats_age_max": ages[-1] if ages else None,
            "phases": phases, "guests_detail": per, "events": self.events,
            "samples": self.samples,
        }

    def moved(self, phases):
        """MiB the balloons moved (sum of |change of actual|) per swing."""
        out = []
        for p in phases[1:]:
            rows = [r for r in self.samples if p["t_switch"] <= r["t"] <= p["t_end"]]
            tot = 0
            for a, b in zip(rows, rows[1:]):
                for g, v in b["g"].items():
                    if g in a["g"]:
                        tot += abs(v["actual"] - a["g"][g]["actual"])
            out.append(tot / MiB)
        return out

    def shutdown(self):
        """Every QEMU this run started stops, then the cgroup goes."""
        with self.lock:
            vms = list(self.started)
        for vm in vms:
            try:
                vm.stop()
            except Exception:
                pass
        self.done.set()
        for th, _ in self.threads:
            th.join(30)
        self.cg.remove(timeout=30)


def _thp(g):
    """The guest's huge page faults so far: taken, and fallen back to 4 KiB
    pages for want of a free 2 MiB block."""
    try:
        v = g.vmstat()
    except Exception:
        v = {}
    return {k: v.get(k, 0) for k in ("thp_fault_alloc", "thp_fault_fallback")}


def _stat(pid):
    """The fields of a host process's /proc/PID/stat after its name (the
    state is [0]); [] once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _cpu_s(pid):
    """CPU seconds (user + system) of a host process (QEMU) so far."""
    f = _stat(pid)
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK") if f else 0.0


def _minflt(pid):
    """Minor page faults of a host process (QEMU) so far."""
    f = _stat(pid)
    return int(f[7]) if f else 0
