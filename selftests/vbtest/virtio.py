# SPDX-License-Identifier: GPL-2.0
"""Virtio feature bits, and the host's view of them (x-query-virtio-status)."""

BALLOON_FEATURES = {
    "VIRTIO_BALLOON_F_MUST_TELL_HOST": 0,
    "VIRTIO_BALLOON_F_STATS_VQ": 1,
    "VIRTIO_BALLOON_F_DEFLATE_ON_OOM": 2,
    "VIRTIO_BALLOON_F_FREE_PAGE_HINT": 3,
    "VIRTIO_BALLOON_F_PAGE_POISON": 4,
    "VIRTIO_BALLOON_F_REPORTING": 5,
}
TRANSPORT_FEATURES = {
    "VIRTIO_F_NOTIFY_ON_EMPTY": 24,
    "VIRTIO_F_ANY_LAYOUT": 27,
    "VIRTIO_RING_F_INDIRECT_DESC": 28,
    "VIRTIO_RING_F_EVENT_IDX": 29,
    "VIRTIO_F_BAD_FEATURE": 30,
    "VIRTIO_F_VERSION_1": 32,
    "VIRTIO_F_IOMMU_PLATFORM": 33,
    "VIRTIO_F_ACCESS_PLATFORM": 33,
    "VIRTIO_F_RING_PACKED": 34,
    "VIRTIO_F_IN_ORDER": 35,
    "VIRTIO_F_ORDER_PLATFORM": 36,
    "VIRTIO_F_SR_IOV": 37,
    "VIRTIO_F_NOTIFICATION_DATA": 38,
    "VIRTIO_F_RING_RESET": 40,
}
BITS = {**BALLOON_FEATURES, **TRANSPORT_FEATURES}
NAMES = {bit: name for name, bit in reversed(list(BITS.items()))}
# Device-specific bits are 0-23 and 41-63 (virtio 1.x, 2.2).
DEVICE_MASK = ((1 << 24) - 1) | (((1 << 64) - 1) & ~((1 << 41) - 1))


def bit(name):
    """1 << the bit of a feature, by name with or without VIRTIO_BALLOON_F_."""
    return 1 << BITS.get(name, BITS.get("VIRTIO_BALLOON_F_" + name, -1))


def names(mask):
    """Feature names in an integer mask (unknown bits as 'bit N')."""
    return [NAMES.get(i, f"bit {i}") for i in range(64) if mask >> i & 1]


def status_features(section):
    """Integer mask from one *-features section of x-query-virtio-status."""
    mask = section.get("unknown-dev-features", 0)
    for entry in section.get("dev-features", []) + section.get("transports", []):
        name = entry.split(":", 1)[0].strip()
        if name not in BITS:
            raise ValueError(f"unknown feature name from QEMU: {entry}")
        mask |= 1 << BITS[name]
    return mask


def host_view(qmp):
    """(offered, negotiated, status strings) as QEMU sees the balloon."""
    st = qmp.virtio_status()
    return (status_features(st["host-features"]),
            status_features(st["guest-features"]),
            st["status"]["statuses"])
