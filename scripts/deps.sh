#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Install what building, testing and linting vballoon needs on Debian 12,
# then the other suites' kernels (scripts/kernels.sh setup) and the QEMU
# hosts besides this machine's own (scripts/hosts.sh setup: Debian 13's
# QEMU 10.0 in a trixie root of its own).
# Usage: scripts/deps.sh [--if-missing] [--host-only]
#   --if-missing  only call apt-get when something is actually missing
#   --host-only   only what make run needs: build the module for this
#                 machine's newest Debian 12 kernel and boot that kernel
#                 in QEMU; no other suite's chroot, no cross compiler, no
#                 packaging or lint tools
set -eu
kernels="$(dirname "$0")/kernels.sh"
hosts="$(dirname "$0")/hosts.sh"

if_missing="" host_only=""
for a in "$@"; do
	case $a in
	--if-missing) if_missing=1 ;;
	--host-only) host_only=1 ;;
	*) echo "usage: $0 [--if-missing] [--host-only]" >&2; exit 2 ;;
	esac
done

# What make run uses (selftests/demo.py): gcc and static glibc for the
# module and the guest programs, xz and zstd for the kernel's compressed
# modules, busybox-static, QEMU, and the kernel it boots with its headers
# (Debian 12's newest).
HOST_PKGS="build-essential kmod xz-utils zstd python3 busybox-static \
qemu-system-x86 linux-image-6.12-amd64 linux-headers-6.12-amd64"

PKGS="$HOST_PKGS cpio sparse \
qemu-system-arm qemu-utils \
gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
linux-image-amd64 linux-headers-amd64 \
linux-source-6.12 flex bison bc libelf-dev libssl-dev \
dkms dh-dkms debhelper dpkg-dev fakeroot lintian debootstrap e2fsprogs \
pyflakes3 python3-docutils \
ovmf dosfstools mtools fdisk"
[ -z "$host_only" ] || PKGS=$HOST_PKGS

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
elif [ -z "$if_missing" ]; then
	echo "deps: everything is installed"
fi

# make run boots the host's own kernel: it neither needs nor waits for the
# other suites' chroots.
[ -z "$host_only" ] || exit 0

# The chroots and the QEMU roots only when never set up with --if-missing
# (no apt call then); make deps follows the suites to their current
# kernels and trixie to its current QEMU.
if [ -n "$if_missing" ]; then
	"$kernels" setup --if-missing
	"$hosts" setup --if-missing
else
	"$kernels" setup
	"$hosts" setup
fi
