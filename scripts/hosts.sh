#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# QEMU hosts for the selftests besides this machine's own QEMU: Debian 13's
# QEMU 10.0, from Debian's archive into a debootstrap'd trixie root of its
# own under $VB_CACHE/qemu, run from there through that root's own loader
# (no chroot: the guests' paths stay this machine's), without touching
# this machine's packages. A wrapper per binary under
# $VB_CACHE/qemu/trixie-bin execs the loader, so QEMU keeps the wrapper's
# pid and takes the usual arguments.
#
# Usage: scripts/hosts.sh setup [--if-missing]
#        scripts/hosts.sh list
#
#   setup          create or refresh the root (follows trixie's QEMU)
#   --if-missing   only when never set up (no apt call otherwise)
#   list           "VERSION BINDIR" of each host set up, one per line
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
VB_CACHE=${VB_CACHE:-/var/cache/vballoon}
dir=$VB_CACHE/qemu
suite=trixie
c=$dir/$suite
bin=$dir/$suite-bin
log=$VB_CACHE/log/qemu-$suite.log
# qemu-system-arm for the arm64 guests: 20 MB more
PKGS="qemu-system-x86 qemu-system-arm"
BINARIES="qemu-system-x86_64 qemu-system-aarch64"
TRIPLET=x86_64-linux-gnu

say() { echo "hosts: $*" >&2; }
die() { say "$*"; exit 2; }

# in_chroot COMMAND...: COMMAND in the root with /proc, in a private mount
# namespace (its mounts go away with it, see scripts/kernels.sh)
in_chroot() {
	c=$1
	shift
	unshare --mount --propagation private sh -eu -c '
		c=$1
		shift
		mount -t proc proc "$c/proc"
		exec chroot "$c" /usr/bin/env -i \
			PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
			DEBIAN_FRONTEND=noninteractive "$@"' sh "$c" "$@"
}

# wrapper BINARY: $bin/BINARY runs the root's BINARY with the root's
# loader and libraries only (--inhibit-cache: never this machine's
# ld.so.cache), its firmware (-L) and its modules (QEMU_MODULE_DIR)
wrapper() {
	lib=$c/usr/lib/$TRIPLET
	cat >"$bin/$1.new" <<-EOF
	#!/bin/sh
	# QEMU $version from $c (scripts/hosts.sh)
	export QEMU_MODULE_DIR=$lib/qemu
	exec $lib/ld-linux-x86-64.so.2 --inhibit-cache --library-path $lib \\
		--argv0 $1 $c/usr/bin/$1 \\
		-L $c/usr/share/qemu -L $c/usr/share/seabios "\$@"
	EOF
	chmod 755 "$bin/$1.new"
	mv "$bin/$1.new" "$bin/$1"
	# every library from the root, none from this machine
	out=$("$lib/ld-linux-x86-64.so.2" --inhibit-cache --library-path "$lib" \
		--list "$c/usr/bin/$1") || die "$1: the loader cannot list its libraries"
	bad=$(echo "$out" | grep '=>' | grep -v "=> $c/" || true)
	[ -z "$bad" ] || die "$1: libraries from outside $c: $bad"
	"$bin/$1" --version | head -n 1 >&2
}

setup() {
	mkdir -p "$dir" "$VB_CACHE/log"
	: >"$log"
	mirror=$("$top/scripts/mirror.sh" debian)
	security=$("$top/scripts/mirror.sh" debian-security)
	proxy=$("$top/scripts/mirror.sh" proxy)
	if [ ! -x "$c/usr/bin/apt-get" ]; then
		say "debootstrap $suite from $mirror (log: $log)"
		rm -rf "$c.new"
		http_proxy=$proxy debootstrap --variant=minbase "$suite" "$c.new" \
			"$mirror" >>"$log" 2>&1 || { tail -n 20 "$log" >&2; exit 1; }
		mv "$c.new" "$c"
	fi
	printf 'deb %s %s main\ndeb %s %s-security main\n' \
		"$mirror" "$suite" "$security" "$suite" >"$c/etc/apt/sources.list"
	{
		echo 'APT::Install-Recommends "false";'
		echo 'Acquire::Languages "none";'
		echo 'APT::Sandbox::User "root";'
		[ -z "$proxy" ] || echo "Acquire::http::Proxy \"$proxy\";"
	} >"$c/etc/apt/apt.conf.d/90vballoon"
	# no daemon may start in the root
	printf '#!/bin/sh\nexit 101\n' >"$c/usr/sbin/policy-rc.d"
	chmod 755 "$c/usr/sbin/policy-rc.d"
	say "apt-get install $PKGS from $suite"
	# shellcheck disable=SC2086
	{
		in_chroot "$c" apt-get update -q &&
		in_chroot "$c" apt-get install -y -q $PKGS &&
		in_chroot "$c" apt-get upgrade -y -q &&
		in_chroot "$c" apt-get clean
	} >>"$log" 2>&1 || { tail -n 20 "$log" >&2; exit 1; }
	version=$(in_chroot "$c" dpkg-query -W -f '${Version}' qemu-system-x86 |
		sed 's/^[0-9]*://; s/[+~-].*//')
	mkdir -p "$bin"
	for b in $BINARIES; do
		wrapper "$b"
	done
	echo "$version" >"$bin/version"
	say "QEMU $version ready in $bin"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
setup)
	if [ "${1:-}" = "--if-missing" ] && [ -s "$bin/version" ]; then
		exit 0
	fi
	if [ "$(id -u)" != 0 ]; then
		exec sudo env VB_CACHE="$VB_CACHE" ${VB_MIRROR:+VB_MIRROR="$VB_MIRROR"} \
			${VB_SECURITY_MIRROR:+VB_SECURITY_MIRROR="$VB_SECURITY_MIRROR"} \
			"$0" setup "$@"
	fi
	command -v debootstrap >/dev/null || die "no debootstrap (run make deps)"
	mkdir -p "$dir"
	# one setup at a time
	exec 9>"$dir/lock"
	flock 9
	[ "${1:-}" = "--if-missing" ] && [ -s "$bin/version" ] && exit 0
	t0=$(date +%s)
	setup
	say "setup done in $(($(date +%s) - t0)) s"
	;;
list)
	for v in "$dir"/*-bin/version; do
		if [ -s "$v" ]; then
			echo "$(cat "$v") ${v%/version}"
		fi
	done
	;;
*)
	sed -n '11,17s/^# \{0,1\}//p' "$0" >&2
	exit 2
	;;
esac
