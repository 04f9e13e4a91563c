#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# /init of the selftests guest: mount the usual file systems, load the virtio
# transport (listed by the host in /etc/modules, dependencies first), then
# become the command agent on the device named by vbagent= on the kernel
# command line (ttyS1 on x86, the virtio console hvc0 on arm64).  The
# balloon driver is loaded by the cases.
export PATH=/bin HOME=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
# nothing may be auto-loaded behind the cases' back (e.g. the in-tree balloon)
echo /bin/false >/proc/sys/kernel/modprobe
while read -r m; do
	[ -n "$m" ] || continue
	insmod "/lib/modules/$m" || echo "init: insmod $m failed"
done </etc/modules
agent=/dev/ttyS1
for arg in $(cat /proc/cmdline); do
	case "$arg" in vbagent=*) agent=${arg#vbagent=} ;; esac
done
echo "init: $(cat /proc/sys/kernel/osrelease) up in $(cut -d' ' -f1 /proc/uptime) s, agent on $agent"
exec /bin/agent "$agent"
