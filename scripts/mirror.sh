#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Debian's archive as this machine's APT reaches it, for every root and
# download vballoon sets up (the other suites' chroots, the distribution
# guests, the trixie root that runs QEMU 10.0): users sit behind local
# mirrors and caching proxies, so no archive host is named here.
#
# Usage: scripts/mirror.sh [debian|debian-security|proxy]
#   debian           the archive's URL, as APT has it in its sources
#   debian-security  the security archive's URL
#   proxy            APT's HTTP proxy (Acquire::http::Proxy), empty if none
#
# The URLs come from APT's own view of /etc/apt/sources.list and
# sources.list.d (apt-get indextargets): the source whose Release file says
# Label "Debian" (or, before any apt-get update, whose suite is this
# machine's release), and "Debian-Security" (suite <release>-security).
# VB_MIRROR overrides the archive; VB_SECURITY_MIRROR the security archive,
# which is otherwise debian-security beside VB_MIRROR when that is set.
set -eu

what=${1:-debian}

# from_sources LABEL SUITE: the first URI APT has for LABEL (or SUITE)
from_sources() {
	apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(LABEL)' \
		'Created-By: Packages' 2>/dev/null |
	awk -v label="$1" -v suite="$2" '
		$3 == label { print $1; found = 1; exit }
		$2 == suite && !any { any = $1 }
		END { if (!found && any) print any }' |
	sed 's,/*$,,'
}

codename() {
	# shellcheck disable=SC1091
	. /etc/os-release
	echo "${VERSION_CODENAME:-}"
}

case $what in
debian)
	url=${VB_MIRROR:-$(from_sources Debian "$(codename)")}
	;;
debian-security)
	if [ -n "${VB_SECURITY_MIRROR:-}" ]; then
		url=$VB_SECURITY_MIRROR
	elif [ -n "${VB_MIRROR:-}" ]; then
		url=${VB_MIRROR%/}
		url=${url%/debian}/debian-security
	else
		url=$(from_sources Debian-Security "$(codename)-security")
	fi
	;;
proxy)
	eval "$(apt-config shell proxy Acquire::http::Proxy)"
	echo "${proxy:-}"
	exit 0
	;;
*)
	sed -n '8,11s/^# \{0,1\}//p' "$0" >&2
	exit 2
	;;
esac
if [ -z "$url" ]; then
	echo "mirror: no $what archive in this machine's APT sources: set VB_MIRROR" >&2
	exit 2
fi
echo "${url%/}"
