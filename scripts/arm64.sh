#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Kernel headers for arm64 guests, unpacked (not installed) under
# build/arm64/root, and the cross compiler. Debian's arm64 headers of the
# same version as the installed 6.12 x86 ones: their Makefile includes the
# installed linux-headers-<abi>-common, their scripts link points at
# linux-kbuild-<abi>, whose x86 tools serve any target.
# Usage: scripts/arm64.sh FLAVOUR...   (e.g. arm64-16k arm64)
# Prints one KDIR per flavour.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
root="$top/build/arm64/root"
debs="$top/build/arm64/debs"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

# the ABI of the installed 6.12 headers, e.g. 6.12.117+deb12
abi=$(dpkg-query -W -f '${Depends}' linux-headers-6.12-amd64 2>/dev/null |
	sed -n 's/.*linux-headers-\([^ ,]*\)-amd64.*/\1/p')
if [ -z "$abi" ]; then
	echo "arm64: no linux-headers-6.12-amd64 (run make deps)" >&2
	exit 2
fi

if ! command -v aarch64-linux-gnu-gcc >/dev/null; then
	echo "arm64: installing gcc-aarch64-linux-gnu" >&2
	$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		--no-install-recommends gcc-aarch64-linux-gnu >&2
fi

mkdir -p "$root/usr/lib" "$debs"
ln -sfn "/usr/lib/linux-kbuild-$abi" "$root/usr/lib/linux-kbuild-$abi"
for flavour in "$@"; do
	kdir="$root/usr/src/linux-headers-$abi-$flavour"
	if [ ! -f "$kdir/Makefile" ]; then
		if ! dpkg --print-foreign-architectures | grep -qx arm64; then
			echo "arm64: adding the arm64 architecture to dpkg" >&2
			$SUDO dpkg --add-architecture arm64
			$SUDO apt-get update -q >&2
		fi
		pkg="linux-headers-$abi-$flavour:arm64"
		(cd "$debs" && apt-get download "$pkg" >&2) || {
			$SUDO apt-get update -q >&2
			(cd "$debs" && apt-get download "$pkg" >&2)
		}
		dpkg-deb -x "$debs/linux-headers-$abi-${flavour}_"*_arm64.deb "$root"
	fi
	echo "$kdir"
done
