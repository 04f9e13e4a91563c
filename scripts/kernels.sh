#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# The x86 kernels of other Debian suites, for building and booting vballoon.
#
# A kernel's headers run its own release's kbuild programs with its own
# compiler, so each suite gets a debootstrap chroot where the module builds
# as DKMS would build it there. The kernel image and modules are unpacked
# (not installed) under $VB_CACHE/x86/root for the selftests to boot.
# The cache lives outside the clone: a fresh clone on this machine reuses it.
# Debian's archive is the one this machine's APT uses (scripts/mirror.sh;
# VB_MIRROR overrides it).
#
# Usage: scripts/kernels.sh setup [--if-missing] [SUITE...]
#        scripts/kernels.sh list
#        scripts/kernels.sh build KVER DIR [MAKE ARGS...]
#
#   setup          create or refresh the chroots (all suites by default);
#                  follows each suite's linux-headers-amd64 to its current ABI
#   --if-missing   only set up suites never set up (no apt calls otherwise)
#   list           the kernel releases set up, one per line
#   build          build the module whose sources are linked in DIR for KVER,
#                  in the chroot owning KVER; DIR/vballoon.ko
set -eu

# One line per suite: chroot name, debootstrap release, the release apt
# takes the kernel from (-t), then the extra archive suites of its
# sources.list as archive:suite (a new kernel is a new line here).
SUITES="
bullseye bullseye bullseye-security debian-security:bullseye-security
trixie   trixie   trixie-backports  debian:trixie-backports
sid      sid      sid
"
# what kbuild needs besides the headers package, which pulls its compiler;
# sparse for make lint's C=2
TOOLS="make libc6-dev libelf-dev sparse kmod xz-utils"

top=$(cd "$(dirname "$0")/.." && pwd)
VB_CACHE=${VB_CACHE:-/var/cache/vballoon}
chroots=$VB_CACHE/chroot
root=$VB_CACHE/x86/root
logs=$VB_CACHE/log

say() { echo "kernels: $*" >&2; }
die() { say "$*"; exit 2; }

# suite NAME: set release, target and extra from NAME's line of SUITES
suite() {
	line=$(echo "$SUITES" | awk -v n="$1" '$1 == n')
	[ -n "$line" ] || die "unknown suite $1 (known: $(suites))"
	# shellcheck disable=SC2086
	set -- $line
	release=$2 target=$3
	shift 3
	extra="$*"
}

suites() { echo "$SUITES" | awk 'NF { printf "%s ", $1 }'; }

# archive NAME: the URL of Debian's archive NAME (debian, debian-security)
archive() {
	case $1 in
	debian) echo "$mirror" ;;
	debian-security) echo "$security" ;;
	*) die "unknown archive $1" ;;
	esac
}

# in_chroot DIR [BIND...] -- COMMAND...: run COMMAND in the chroot DIR with
# /proc (7.x's objtool reads it) and each BIND directory at its own path.
# A private mount namespace instead of mount + trap umount: its mounts go
# away with it even when the build is killed, and never show on the host.
in_chroot() {
	c=$1 binds=""
	shift
	while [ "$1" != -- ]; do
		binds="$binds $1"
		shift
	done
	shift
	unshare --mount --propagation private sh -eu -c '
		c=$1 binds=$2
		shift 2
		mount -t proc proc "$c/proc"
		for d in $binds; do
			mkdir -p "$c$d"
			mount --bind "$d" "$c$d"
		done
		exec chroot "$c" /usr/bin/env -i \
			PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
			DEBIAN_FRONTEND=noninteractive "$@"' sh "$c" "$binds" "$@"
}

# setup_one NAME: chroot, headers and kernel of one suite; logs to
# $logs/NAME.log. Prints nothing but a line per step.
setup_one() {
	name=$1
	suite "$name"
	c=$chroots/$name
	log=$logs/$name.log
	: >"$log"
	if [ ! -x "$c/usr/bin/apt-get" ]; then
		say "$name: debootstrap $release from $mirror (log: $log)"
		rm -rf "$c.new"
		http_proxy=$proxy debootstrap --variant=minbase "$release" "$c.new" \
			"$mirror" >>"$log" 2>&1 || { tail -n 20 "$log" >&2; return 1; }
		mv "$c.new" "$c"
	fi
	{
		echo "deb $mirror $release main"
		for s in $extra; do
			echo "deb $(archive "${s%%:*}") ${s#*:} main"
		done
	} >"$c/etc/apt/sources.list"
	# sid's Release outlives its Valid-Until by this machine's clock
	cat >"$c/etc/apt/apt.conf.d/90vballoon" <<-EOF
	Acquire::Check-Valid-Until "false";
	Acquire::Languages "none";
	APT::Install-Recommends "false";
	APT::Sandbox::User "root";
	EOF
	[ -z "$proxy" ] ||
		echo "Acquire::http::Proxy \"$proxy\";" >>"$c/etc/apt/apt.conf.d/90vballoon"

	say "$name: apt-get install linux-headers-amd64 from $target"
	{
		in_chroot "$c" -- apt-get update -q &&
		in_chroot "$c" -- apt-get install -y -q -t "$target" \
			linux-headers-amd64 $TOOLS
	} >>"$log" 2>&1 || { tail -n 20 "$log" >&2; return 1; }
	kver=$(in_chroot "$c" -- dpkg-query -W -f '${Depends}' linux-headers-amd64 |
		tr ',' '\n' | sed -n 's/^ *linux-headers-\([^ ]*\).*/\1/p')
	[ -f "$c/usr/src/linux-headers-$kver/Makefile" ] ||
		{ say "$name: no headers for '$kver'"; return 1; }

	if [ ! -f "$root/lib/modules/$kver/modules.dep" ] ||
	   [ ! -f "$root/boot/vmlinuz-$kver" ]; then
		unpack_kernel "$name" "$c" "$kver" || { tail -n 20 "$log" >&2; return 1; }
	fi
	old=$(cat "$chroots/$name.kver" 2>/dev/null || true)
	echo "$kver" >"$chroots/$name.kver"
	if [ -n "$old" ] && [ "$old" != "$kver" ]; then
		say "$name: $old replaced by $kver"
		rm -rf "$root/boot/vmlinuz-$old" "$root/boot/config-$old" \
			"$root/lib/modules/$old"
	fi
	say "$name: $kver ready"
}

# unpack_kernel NAME CHROOT KVER: KVER's image and modules under $root.
# Called in an || list, where set -e does not act: every step checks.
# 7.x's linux-image-<abi> only depends on linux-binary-<abi> (the vmlinuz),
# linux-modules-<abi> and linux-base-<abi> (config, modules.builtin).
unpack_kernel() {
	name=$1 c=$2 kver=$3
	say "$name: unpacking the $kver kernel into $root"
	debs=/var/cache/vballoon-debs
	rm -rf "$c$debs"
	mkdir -p "$c$debs"
	pkgs=$(in_chroot "$c" -- apt-cache show --no-all-versions "linux-image-$kver" |
		sed -n 's/^Depends: //p' | tr ',' '\n' |
		sed -n "s/^ *\(linux-[a-z]*-[^ ]*\).*/\1/p" |
		while read -r p; do
			case $p in *-"$kver") echo "$p" ;; esac
		done)
	# shellcheck disable=SC2086
	in_chroot "$c" -- sh -c 'cd "$1" && shift && apt-get download -q "$@"' sh \
		"$debs" "linux-image-$kver" $pkgs >>"$log" 2>&1 || return 1
	x=$VB_CACHE/x86/tmp-$kver
	rm -rf "$x"
	mkdir -p "$x"
	for deb in "$c$debs"/*.deb; do
		dpkg-deb -x "$deb" "$x" || return 1
	done
	rm -rf "$c$debs"
	# bullseye's packages use /lib and /boot, 7.x's /usr/lib/modules only
	m=$x/usr/lib/modules/$kver
	[ -d "$m" ] || m=$x/lib/modules/$kver
	mkdir -p "$root/boot" "$root/lib/modules"
	for f in vmlinuz config System.map; do
		if [ -f "$m/$f" ]; then
			mv "$m/$f" "$root/boot/$f-$kver"
		elif [ -f "$x/boot/$f-$kver" ]; then
			mv "$x/boot/$f-$kver" "$root/boot/$f-$kver"
		fi
	done
	[ -f "$root/boot/vmlinuz-$kver" ] || { say "$name: no vmlinuz in $kver's packages"; return 1; }
	rm -rf "$root/lib/modules/$kver"
	mv "$m" "$root/lib/modules/$kver" || return 1
	rm -rf "$x"
	depmod -b "$root" "$kver"
}

# kver_suite KVER: the suite whose chroot builds KVER
kver_suite() {
	for s in $(suites); do
		if [ "$(cat "$chroots/$s.kver" 2>/dev/null)" = "$1" ]; then
			echo "$s"
			return 0
		fi
	done
	return 1
}

# as_root ARGS...: run this script again with ARGS under sudo unless root
as_root() {
	[ "$(id -u)" = 0 ] && return 0
	exec sudo env VB_CACHE="$VB_CACHE" ${VB_MIRROR:+VB_MIRROR="$VB_MIRROR"} \
		${VB_SECURITY_MIRROR:+VB_SECURITY_MIRROR="$VB_SECURITY_MIRROR"} "$0" "$@"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
setup)
	if_missing=""
	if [ "${1:-}" = "--if-missing" ]; then
		if_missing=1
		shift
	fi
	[ $# -gt 0 ] || set -- $(suites)
	for s in "$@"; do suite "$s"; done
	# todo: the suites to set up now; with --if-missing only those never
	# set up, decided without apt, root or lock when everything is there
	todo() {
		todo=""
		for s in "$@"; do
			[ -n "$if_missing" ] && [ -s "$chroots/$s.kver" ] && continue
			todo="$todo $s"
		done
	}
	todo "$@"
	[ -n "$todo" ] || exit 0
	as_root setup ${if_missing:+--if-missing} "$@"
	mkdir -p "$chroots" "$root" "$logs"
	# one setup at a time; builds take the lock shared
	exec 9>"$VB_CACHE/lock"
	flock 9
	todo "$@"
	[ -n "$todo" ] || exit 0
	command -v debootstrap >/dev/null || die "no debootstrap (run make deps)"
	mirror=$("$top/scripts/mirror.sh" debian)
	security=$("$top/scripts/mirror.sh" debian-security)
	proxy=$("$top/scripts/mirror.sh" proxy)
	# the suites in parallel: most of the time is spent downloading
	t0=$(date +%s)
	pids=""
	for s in $todo; do
		setup_one "$s" &
		pids="$pids $!:$s"
	done
	fail=""
	for p in $pids; do
		wait "${p%%:*}" || fail="$fail ${p#*:}"
	done
	[ -z "$fail" ] || die "setup failed for:$fail (logs in $logs)"
	say "setup done in $(($(date +%s) - t0)) s"
	;;
list)
	for s in $(suites); do
		kver=$(cat "$chroots/$s.kver" 2>/dev/null) || continue
		if [ -f "$root/boot/vmlinuz-$kver" ]; then
			echo "$kver"
		fi
	done
	;;
build)
	[ $# -ge 2 ] || die "usage: kernels.sh build KVER DIR [MAKE ARGS...]"
	kver=$1
	dir=$(cd "$2" && pwd)
	shift 2
	s=$(kver_suite "$kver") || die "$kver is not set up (known: $("$0" list | tr '\n' ' '))"
	c=$chroots/$s
	as_root build "$kver" "$dir" "$@"
	exec 9>"$VB_CACHE/lock"
	flock -s 9
	# DIR's links point into the clone: both at their own paths inside
	binds=$top
	case $dir/ in "$top"/*) ;; *) binds="$binds $dir" ;; esac
	# shellcheck disable=SC2086
	in_chroot "$c" $binds -- make -C "/usr/src/linux-headers-$kver" \
		M="$dir" "$@" modules
	;;
*)
	sed -n '13,22s/^# \{0,1\}//p' "$0" >&2
	exit 2
	;;
esac
