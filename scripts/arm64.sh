#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# arm64 for vballoon, unpacked (not installed) under build/arm64/root.
#
# Headers: Debian's arm64 headers of the same version as the installed 6.12
# x86 ones: their Makefile includes the installed linux-headers-<abi>-common,
# their scripts link points at linux-kbuild-<abi>, whose x86 tools serve any
# target. Prints one KDIR per flavour.
#
# With --guest, what the selftests need to boot arm64 guests instead: the
# kernel image and modules (depmod run on the unpacked tree) and
# busybox-static:arm64; prints one kernel release per flavour.
#
# Usage: scripts/arm64.sh [--guest] FLAVOUR...   (e.g. arm64-16k arm64)
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
root="$top/build/arm64/root"
debs="$top/build/arm64/debs"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
guest=""
if [ "${1:-}" = "--guest" ]; then
	guest=1
	shift
fi

# the ABI of the installed 6.12 headers, e.g. 6.12.117+deb12
abi=$(dpkg-query -W -f '${Depends}' linux-headers-6.12-amd64 2>/dev/null |
	sed -n 's/.*linux-headers-\([^ ,]*\)-amd64.*/\1/p')
if [ -z "$abi" ]; then
	echo "arm64: no linux-headers-6.12-amd64 (run make deps)" >&2
	exit 2
fi

# apt_install PROGRAM PACKAGE...: install the packages when PROGRAM is missing
apt_install() {
	command -v "$1" >/dev/null && return 0
	shift
	echo "arm64: installing $*" >&2
	$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		--no-install-recommends "$@" >&2
}

# unpack PACKAGE: download an arm64 package and unpack it into $root
unpack() {
	if ! dpkg --print-foreign-architectures | grep -qx arm64; then
		echo "arm64: adding the arm64 architecture to dpkg" >&2
		$SUDO dpkg --add-architecture arm64
		$SUDO apt-get update -q >&2
	fi
	name=${1%%:*}
	(cd "$debs" && apt-get download "$1" >&2) || {
		$SUDO apt-get update -q >&2
		(cd "$debs" && apt-get download "$1" >&2)
	}
	dpkg-deb -x "$debs/${name}_"*_arm64.deb "$root"
	rm -f "$debs/${name}_"*_arm64.deb
}

mkdir -p "$root/usr/lib" "$debs"

if [ -n "$guest" ]; then
	apt_install qemu-system-aarch64 qemu-system-arm
	apt_install aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
	[ -e /usr/aarch64-linux-gnu/lib/libc.a ] || {
		echo "arm64: installing libc6-dev-arm64-cross" >&2
		$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends libc6-dev-arm64-cross >&2
	}
	[ -x "$root/bin/busybox" ] || unpack busybox-static:arm64
	for flavour in "$@"; do
		kver="$abi-$flavour"
		if [ ! -f "$root/lib/modules/$kver/modules.dep" ]; then
			unpack "linux-image-$kver-unsigned:arm64"
			depmod -b "$root" "$kver"
		fi
		echo "$kver"
	done
	exit 0
fi

apt_install aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
ln -sfn "/usr/lib/linux-kbuild-$abi" "$root/usr/lib/linux-kbuild-$abi"
for flavour in "$@"; do
	kdir="$root/usr/src/linux-headers-$abi-$flavour"
	[ -f "$kdir/Makefile" ] || unpack "linux-headers-$abi-$flavour:arm64"
	echo "$kdir"
done
