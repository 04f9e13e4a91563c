# SPDX-License-Identifier: GPL-2.0
"""Binding, feature negotiation and balloon targets."""
from vbtest import ALL_ARCHES, MiB, case, virtio

# Balloon features both the in-tree driver and vballoon accept when offered
# (PAGE_POISON only when the guest poisons or zeroes freed pages).
DRIVER_FEATURES = ["MUST_TELL_HOST", "STATS_VQ", "DEFLATE_ON_OOM",
                   "FREE_PAGE_HINT", "REPORTING"]

DOO_ON = {"deflate-on-oom": "on"}
DOO_OFF = {"deflate-on-oom": "off"}
POISON_ON = {"page-poison": "on"}
POISON_OFF = {"page-poison": "off"}


def guest_poisons(cmdline):
    """Whether the guest kernel poisons/zeroes freed pages (PAGE_POISON applies)."""
    args = cmdline.split()
    return "page_poison=1" in args or "init_on_free=1" in args


def expected_features(offered, cmdline):
    want = 0
    for name in DRIVER_FEATURES:
        want |= virtio.bit(name)
    if guest_poisons(cmdline):
        want |= virtio.bit("PAGE_POISON")
    return offered & want


@case(variants={
    # offered, but the guest does not poison: must not be accepted
    "doo=off,poison=on": dict(device={**DOO_OFF, **POISON_ON}),
    # offered and init_on_free=1: accepted (poison value 0)
    "doo=on,poison=on": dict(device={**DOO_ON, **POISON_ON}, cmdline="init_on_free=1"),
    "doo=on,poison=off": dict(device={**DOO_ON, **POISON_OFF}),
    # guest poisons, but the host does not offer it
    "doo=off,poison=off": dict(device={**DOO_OFF, **POISON_OFF}, cmdline="page_poison=1"),
}, arches=ALL_ARCHES, core=True)
def case_bind(t):
    """The module binds the balloon and negotiates what both sides agree on."""
    g = t.g
    dev = g.sysfs_balloon_dev()
    t.check(dev is not None, "guest sees no virtio device with id 0x0005")
    t.check(not g.exists(f"{dev}/driver"), f"{dev} is bound before the module is loaded")
    _, negotiated, statuses = virtio.host_view(t.qmp)
    t.check(not any("DRIVER_OK" in s for s in statuses),
            f"host sees DRIVER_OK before the module is loaded: {statuses}")

    t.load_driver()
    mods = g.modules()
    t.check(t.driver in mods, f"{t.driver} not in /proc/modules: {mods}")
    if t.driver != "virtio_balloon":
        t.check("virtio_balloon" not in mods, "the in-tree virtio_balloon got loaded")
    drv = g.check(f"readlink {dev}/driver").strip().rsplit("/", 1)[-1]
    rc, link = g.run(f"readlink {dev}/driver/module")
    t.check(rc == 0 and link.strip(), f"driver '{drv}' of {dev} has no 'module' link "
            "in sysfs (struct device_driver .owner not set?)")
    t.eq(link.strip().rsplit("/", 1)[-1], t.driver, f"module of {dev}'s driver '{drv}'")

    guest = g.features(dev)
    offered, negotiated, statuses = virtio.host_view(t.qmp)
    t.log(f"offered:    {' '.join(virtio.names(offered))}")
    t.log(f"negotiated: {' '.join(virtio.names(guest))}")
    for s in ("FEATURES_OK", "DRIVER_OK"):
        t.check(any(s in x for x in statuses), f"host status lacks {s}: {statuses}")
    t.eq(hex(guest), hex(negotiated), "guest sysfs features vs host's negotiated features")
    t.check(guest & ~offered == 0,
            f"guest accepted features the host did not offer: "
            f"{virtio.names(guest & ~offered)}")
    want = expected_features(offered, t.config.cmdline)
    got = guest & virtio.DEVICE_MASK
    t.eq(virtio.names(got), virtio.names(want), "negotiated balloon features")
    dev_cfg = t.config.dev
    t.eq(bool(guest & virtio.bit("DEFLATE_ON_OOM")), dev_cfg["deflate-on-oom"] == "on",
         "DEFLATE_ON_OOM negotiated")
    # a page report must not allocate an indirect table (GFP_NOWAIT, with
    # up to 32 free pages held): the driver declines indirect descriptors
    t.check(not guest & virtio.bit("VIRTIO_RING_F_INDIRECT_DESC") or t.driver != "vballoon",
            "INDIRECT_DESC negotiated")
    # with hinting, no EVENT_IDX: QEMU would signal the hint queue's first
    # used buffer from its iothread, without its big lock
    if t.driver == "vballoon" and offered & virtio.bit("VIRTIO_RING_F_EVENT_IDX"):
        t.eq(bool(guest & virtio.bit("VIRTIO_RING_F_EVENT_IDX")),
             not guest & virtio.bit("FREE_PAGE_HINT"), "EVENT_IDX negotiated")
    if offered & virtio.bit("VIRTIO_F_VERSION_1"):
        t.check(guest & virtio.bit("VIRTIO_F_VERSION_1"), "VERSION_1 offered but not accepted")


@case(variants={
    "doo=off": dict(device=DOO_OFF),
    "doo=on": dict(device={**DOO_ON, **POISON_OFF}),
}, arches=ALL_ARCHES, core=True)
def case_targets(t):
    """Inflate to 256 MiB (320 with 16 KiB pages), deflate to 768 MiB, then
    back to the full 1 GiB."""
    doo = t.config.dev["deflate-on-oom"] == "on"
    t.load_driver()
    t.eq(t.qmp.query_balloon(), t.mem, "query-balloon before any target")
    mi0 = t.g.meminfo()
    free0 = t.g.free_kb(slab=True)
    for target in (t.keep_full(), t.keep(768), t.mem):
        t.balloon(target)
        held_kb = (t.mem - target) // 1024
        mi = t.g.meminfo()
        want_total = mi0["MemTotal"] if doo else mi0["MemTotal"] - held_kb
        t.near(mi["MemTotal"], want_total, 2048, f"MemTotal (kB) at {target // MiB} MiB")
        # the pages really left the guest's free memory either way (slab
        # counted in: KASAN's quarantine holds freed objects there)
        t.near(t.g.free_kb(slab=True), free0 - held_kb, 8192,
               f"free memory + slab (kB) at {target // MiB} MiB")
        t.eq(t.qmp.query_balloon(), target, "query-balloon once settled")
