#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# /init of the distribution test's initramfs: what Debian's initramfs-tools
# does for this guest, in a few lines. Load the modules the root file system
# needs (listed by the host in /etc/modules, dependencies first), mount
# root= and hand over to init= on it. Nothing here touches the balloon: the
# root file system's udev binds it.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do
	[ -n "$m" ] || continue
	insmod "/lib/modules/$m" || echo "initramfs: insmod $m failed"
done </etc/modules

root=/dev/vda
init=/sbin/init
read -r cmdline </proc/cmdline
for arg in $cmdline; do
	case "$arg" in
	root=*) root=${arg#root=} ;;
	init=*) init=${arg#init=} ;;
	esac
done
i=0
while [ ! -b "$root" ] && [ $i -lt 300 ]; do
	sleep 0.1
	i=$((i + 1))
done
if ! mount -t ext4 -o rw "$root" /root; then
	echo "initramfs: cannot mount $root"
	exec sh
fi
echo "initramfs: $root mounted after $(cut -d' ' -f1 /proc/uptime) s, switching to $init"
mount --move /dev /root/dev
mount --move /sys /root/sys
mount --move /proc /root/proc
exec switch_root /root "$init"
