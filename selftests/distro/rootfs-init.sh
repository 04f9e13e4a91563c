#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# PID 1 of the distribution test guest (/sbin/vb-init; the image has no
# systemd). It does what an init does up to a coldplugged system - mount
# the API file systems, start udev, replay the boot's uevents and wait for
# udev to finish, which is when udev loads the drivers of the devices
# (vballoon for the balloon) - and then becomes the selftests' command
# agent on ttyS1.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
hostname vballoon-distro

/lib/systemd/systemd-udevd --daemon
udevadm trigger --type=subsystems --action=add
udevadm trigger --type=devices --action=add
udevadm settle --timeout=90 || echo "init: udevadm settle timed out"
echo "init: $(uname -r) coldplugged in $(cut -d' ' -f1 /proc/uptime) s," \
	"balloon modules: $(grep -o '^[a-z_]*balloon[a-z_]*' /proc/modules | tr '\n' ' ')"
exec /usr/local/sbin/vb-agent /dev/ttyS1
