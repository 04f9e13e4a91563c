#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Install what building, testing and linting vballoon needs on Debian 12,
# then the other suites' kernels (scripts/kernels.sh setup) and the QEMU
# hosts besides this machine's own (scripts/hosts.sh setup: Debian 13's
# QEMU 10.0 in a trixie root of its own).
# Usage: scripts/deps.sh [--if-missing]
#   --if-missing  only call apt-get when something is actually missing
set -eu
kernels="$(dirname "$0")/kernels.sh"
hosts="$(dirname "$0")/hosts.sh"

PKGS="build-essential kmod cpio xz-utils zstd python3 sparse busybox-static \
qemu-system-x86 qemu-system-arm qemu-utils \
gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
linux-image-amd64 linux-headers-amd64 \
linux-image-6.12-amd64 linux-headers-6.12-amd64 \
linux-source-6.12 flex bison bc libelf-dev libssl-dev \
dkms dh-dkms debhelper dpkg-dev fakeroot lintian debootstrap e2fsprogs \
pyflakes3 python3-docutils \
ovmf dosfstools mtools fdisk"

missing=""
for p in $PKGS; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
		missing="$missing $p"
	fi
done

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
if [ -n "$missing" ]; then
	echo "deps: installing:$missing"
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -q
	# shellcheck disable=SC2086
	$SUDO apt-get install -y -q --no-install-recommends $missing
elif [ "${1:-}" != "--if-missing" ]; then
	echo "deps: everything is installed"
fi

# The chroots and the QEMU roots only when never set up with --if-missing
# (no apt call then); make deps follows the suites to their current
# kernels and trixie to its current QEMU.
if [ "${1:-}" = "--if-missing" ]; then
	"$kernels" setup --if-missing
	"$hosts" setup --if-missing
else
	"$kernels" setup
	"$hosts" setup
fi
