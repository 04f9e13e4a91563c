# SPDX-License-Identifier: GPL-2.0
"""Legacy and modern virtio-pci, virtio-mmio, packed rings; page poisoning
and init_on_free."""
import time

from vbtest import case, virtio


def targets_and_stats(t):
    """Targets reached on both sides; the stats queue answers."""
    total0 = t.g.meminfo()["MemTotal"]
    t.qmp.qom_set(t.balloon_qom, "guest-stats-polling-interval", 1)
    t.balloon(t.keep(256))
    t.near(t.g.meminfo()["MemTotal"], total0 - 768 * 1024, 2048, "MemTotal (kB) at 256 MiB")
    seen = t.qmp.qom_get(t.balloon_qom, "guest-stats")["last-update"]
    deadline = time.monotonic() + 20
    while True:
        st = t.qmp.qom_get(t.balloon_qom, "guest-stats")
        if st["last-update"] > seen:
            break
        t.check(time.monotonic() < deadline, "guest-stats not refreshed in 20 s")
        time.sleep(0.3)
    got = st["stats"]["stat-total-memory"] // 1024
    t.near(got, t.g.meminfo()["MemTotal"], 4096, "stat-total-memory (kB) vs MemTotal")
    t.balloon(t.mem)
    t.near(t.g.meminfo()["MemTotal"], total0, 1024, "MemTotal (kB) back at 1 GiB")


@case(variants={
    "legacy": dict(device={"disable-modern": "on", "disable-legacy": "off"}),
    "modern": dict(device={"disable-legacy": "on"}),
    "packed": dict(device={"disable-legacy": "on", "packed": "on"}),
    # QEMU's microvm: no PCI, the balloon on virtio-mmio found through ACPI
    "mmio": dict(machine="microvm"),
})
def case_transport(t):
    """Legacy devices keep guest-native virtqueue data but little-endian
    balloon config; modern ones are little-endian throughout. Both (and
    packed rings, and virtio-mmio) must reach targets and serve stats."""
    dev = t.load_driver()
    feats = t.g.features(dev)
    offered, negotiated, _ = virtio.host_view(t.qmp)
    t.eq(hex(feats), hex(negotiated), "guest sysfs features vs host's negotiated features")
    legacy = t.config.dev.get("disable-modern") == "on"
    if t.config.mmio:
        # QEMU 7.2's virtio-mmio is legacy (version 1) unless told otherwise
        legacy = not offered & virtio.bit("VIRTIO_F_VERSION_1")
        bus = t.g.check(f"readlink -f {dev}/..").strip()
        t.check("virtio-mmio" in bus or "LNRO0005" in bus,
                f"the balloon is not on virtio-mmio: {bus}")
        t.log(f"balloon on {bus}, {'legacy' if legacy else 'modern'} virtio-mmio")
    t.eq(bool(feats & virtio.bit("VIRTIO_F_VERSION_1")), not legacy,
         "VIRTIO_F_VERSION_1 negotiated")
    if t.config.dev.get("packed") == "on":
        t.check(feats & virtio.bit("VIRTIO_F_RING_PACKED"), "packed ring not negotiated")
    targets_and_stats(t)


@case(timeout=300, variants={
    "page_poison": dict(device={"page-poison": "on"}, cmdline="page_poison=1"),
    "init_on_free": dict(device={"page-poison": "on"}, cmdline="init_on_free=1"),
})
def case_poison(t):
    """A guest that poisons or zeroes freed pages negotiates PAGE_POISON;
    ballooned memory comes back without poison errors and data stays intact."""
    dev = t.load_driver()
    bit = virtio.bit("PAGE_POISON")
    t.check(t.g.features(dev) & bit, "PAGE_POISON not negotiated")
    _, negotiated, _ = virtio.host_view(t.qmp)
    t.check(negotiated & bit, "host does not see PAGE_POISON")
    job = t.g.spawn("pattern hold 150 3")
    job.wait_output(r"^holding", timeout=120)
    mark = t.vm.console.mark()
    for _ in range(2):
        t.balloon(t.keep(450))
        t.balloon(t.mem)
    # reuse every deflated page: poison checks run on allocation
    hog = t.g.meminfo()["MemAvailable"] // 1024 - 48
    out = t.g.check(f"memhog {hog}", timeout=180)
    t.check(f"touched {hog} MiB" in out, f"memhog after deflate:\n{out}")
    job.signal("USR1")
    t.eq(job.wait_output(r"^verify (\w+)", timeout=120).group(1), "ok", "pattern after cycles")
    console = t.vm.console.text(mark)
    t.check("corruption" not in console and "poison" not in console.lower(),
            "poison errors on the console")
