#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Build vballoon's debug kernel for make check-debug, once: Debian's
# linux-source-6.12, tinyconfig plus scripts/debug-kernel.config (KASAN,
# lockdep, DEBUG_VM, kmemleak, fault injection), release <version>-vbdebug.
# Installed (image, config, modules with depmod) under build/debug/root;
# the build is cached and made again only when the source package or the
# configuration fragment changes. Prints the kernel release.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
out="$top/build/debug"
root="$out/root"
frag="$top/scripts/debug-kernel.config"
tarball=/usr/src/linux-source-6.12.tar.xz
jobs=$(nproc)

if [ ! -f "$tarball" ]; then
	echo "debug-kernel: no $tarball (run make deps)" >&2
	exit 2
fi
for tool in flex bison; do
	command -v $tool >/dev/null || {
		echo "debug-kernel: no $tool (run make deps)" >&2
		exit 2
	}
done

key=$( (dpkg-query -W -f '${Version}' linux-source-6.12; cat "$frag" "$0") |
	sha256sum | cut -c1-16)
if [ -f "$out/key" ] && [ "$(cat "$out/key")" = "$key" ] &&
   [ -f "$out/release" ] &&
   [ -f "$root/boot/vmlinuz-$(cat "$out/release")" ]; then
	cat "$out/release"
	exit 0
fi

echo "debug-kernel: building (first time, or the configuration changed)" >&2
rm -rf "$out"
mkdir -p "$out/src" "$out/obj" "$root/boot"
tar -xJf "$tarball" -C "$out/src" --strip-components=1
make -s -C "$out/src" O="$out/obj" LOCALVERSION=-vbdebug tinyconfig >&2
"$out/src/scripts/kconfig/merge_config.sh" -m -O "$out/obj" \
	"$out/obj/.config" "$frag" >&2
make -s -C "$out/src" O="$out/obj" LOCALVERSION=-vbdebug olddefconfig >&2
# every option of the fragment must have taken
missing=""
while read -r line; do
	case "$line" in
	CONFIG_*=*) grep -qx "$line" "$out/obj/.config" || missing="$missing $line" ;;
	"# CONFIG_"*" is not set")
		opt=${line#\# }
		opt=${opt%% *}
		grep -q "^$opt=" "$out/obj/.config" && missing="$missing $line" ;;
	esac
done <"$frag"
if [ -n "$missing" ]; then
	echo "debug-kernel: options that did not take:$missing" >&2
	exit 1
fi
make -s -C "$out/src" O="$out/obj" LOCALVERSION=-vbdebug -j"$jobs" \
	bzImage modules >&2
release=$(make -s -C "$out/src" O="$out/obj" LOCALVERSION=-vbdebug kernelrelease)
make -s -C "$out/src" O="$out/obj" LOCALVERSION=-vbdebug \
	INSTALL_MOD_PATH="$root" modules_install >&2
cp "$out/obj/arch/x86/boot/bzImage" "$root/boot/vmlinuz-$release"
cp "$out/obj/.config" "$root/boot/config-$release"
# the object tree, for building vballoon against it
ln -sfn "$out/obj" "$root/lib/modules/$release/build"
echo "$release" >"$out/release"
echo "$key" >"$out/key"
echo "$release"
