#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# make lint: checkpatch --strict (from Debian's linux-source-6.12), sparse
# (C=2) and W=1 builds on every kernel with headers (those of the other
# suites in their chroots, scripts/kernels.sh, and the arm64 ones make
# cross-arm64 unpacked), kernel-doc -none; pyflakes on the test
# harness and docutils on Documentation/*.rst.
# Prints what each tool says; exits non-zero if any said anything.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top" || exit 2
out=build/lint
mkdir -p "$out"
srcs="$(ls *.c | grep -v "\.mod\.c$") include/*.h"
fail=0

# checkpatch and kernel-doc come from the kernel source tarball.
tarball=$(ls /usr/src/linux-source-6.12*.tar.* 2>/dev/null | head -n 1)
if [ -z "$tarball" ]; then
	echo "lint: no /usr/src/linux-source-6.12 tarball (run make deps)" >&2
	exit 2
fi
if [ ! -x "$out/scripts/checkpatch.pl" ] || [ "$tarball" -nt "$out/scripts/checkpatch.pl" ]; then
	tar -xf "$tarball" -C "$out" --strip-components=1 --wildcards \
		'*/scripts/checkpatch.pl' '*/scripts/spelling.txt' \
		'*/scripts/const_structs.checkpatch' '*/scripts/kernel-doc' || exit 2
	touch "$out/scripts/checkpatch.pl"
fi

say() {
	# $1: tool name; stdin: its output. Any line is a finding.
	if [ -s "$out/$1.log" ]; then
		echo "== $1"
		cat "$out/$1.log"
		fail=1
	else
		echo "ok: $1"
	fi
}

# CAMELCASE: the kernel's own page-flag API (__SetPageMovable, ...) is
# CamelCase. compat.h is the one place allowed to compare kernel versions.
# The tracepoint header is written in the TRACE_EVENT() layout every
# header under include/trace/events uses, which --strict's alignment
# checks do not know.
checkpatch() {
	perl "$out/scripts/checkpatch.pl" --strict --no-tree --quiet --terse \
		--show-types --ignore CAMELCASE,FILE_PATH_CHANGES "$@" 2>&1 |
		grep -v '^total: \|^fatal: '
}
# shellcheck disable=SC2046
{
	checkpatch -f $(ls $srcs | grep -v 'include/compat.h\|_trace.h')
	checkpatch --ignore LINUX_VERSION_CODE,CONSTANT_COMPARISON \
		-f include/compat.h
	checkpatch --ignore PARENTHESIS_ALIGNMENT,OPEN_ENDED_LINE \
		-f include/vballoon_trace.h
} > "$out/checkpatch.log"
say checkpatch

# shellcheck disable=SC2086
perl "$out/scripts/kernel-doc" -none $srcs > "$out/kernel-doc.log" 2>&1
say kernel-doc

pyflakes3 selftests scripts > "$out/pyflakes.log" 2>&1
say pyflakes

for f in Documentation/*.rst; do
	/usr/bin/rst2html --halt=warning --report=warning "$f" >/dev/null
done > "$out/rst.log" 2>&1
say rst

# build KDIR KVER [make arguments]: W=1 and sparse on one kernel; KDIR
# "chroot" builds in the chroot of another suite's kernel
build() {
	kdir=$1 kver=$2
	shift 2
	bdir="$top/$out/$kver"
	rm -rf "$bdir"
	mkdir -p "$bdir"
	for f in Kbuild VERSION *.c include; do
		ln -sfn "$top/$f" "$bdir/$f"
	done
	if [ "$kdir" = chroot ]; then
		scripts/kernels.sh build "$kver" "$bdir" -s W=1 C=2 "$@"
	else
		make -s -C "$kdir" M="$bdir" W=1 C=2 "$@" modules
	fi 2>&1 | grep -v "^Skipping BTF generation" > "$out/build-$kver.log"
	# Debian's 7.x headers leave out scripts/checker-valid.sh, and the
	# sparse of trixie and sid cannot parse their __typeof_unqual__
	# anyway: kbuild turns C=2 off there, which is said, not a finding.
	if grep -q "C=2 specified, but .* not available or not up to date" \
		"$out/build-$kver.log"; then
		grep -v "checker-valid.sh: No such file\|C=2 specified, but" \
			"$out/build-$kver.log" > "$out/build-$kver.tmp"
		mv "$out/build-$kver.tmp" "$out/build-$kver.log"
		echo "note: $kver: W=1 only; kbuild finds no sparse that parses its headers"
	fi
	say "build-$kver"
}

for kdir in /lib/modules/*/build; do
	[ -d "$kdir" ] || continue
	build "$kdir" "$(basename "$(dirname "$kdir")")"
done
for kver in $(scripts/kernels.sh list); do
	[ -d "/lib/modules/$kver/build" ] || build chroot "$kver"
done
# arm64 headers that make cross-arm64 unpacked
for kdir in build/arm64/root/usr/src/linux-headers-*; do
	[ -f "$kdir/Makefile" ] && command -v aarch64-linux-gnu-gcc >/dev/null || continue
	build "$top/$kdir" "${kdir##*/linux-headers-}" ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-
done
exit $fail
