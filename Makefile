# SPDX-License-Identifier: GPL-2.0
#
# vballoon: out-of-tree virtio memory balloon driver.
#
#   make                  build for the running kernel (or KVER=/KDIR=)
#   make all-kernels      build for every kernel with headers installed
#                         and every kernel of scripts/kernels.sh list (other
#                         suites, in their chroots), into build/<kver>/vballoon.ko
#   make check            install what is missing, build, run the suite
#                         (x86 kernels and the arm64 16k-page guest)
#   make check-arm64      the arm64 cases on both arm64 flavours (16k, 4k)
#   make check-debug      the x86 cases on a KASAN/lockdep/kmemleak/fault
#                         injection 6.12 kernel built here (cached)
#   make run              boot a throwaway guest and balloon it live (this
#                         machine's newest kernel: no chroot, one build)
#   make bench            in-tree driver and vballoon side by side
#   make overcommit       six guests in a host cgroup holding two thirds of
#                         them, the load moving, both drivers (KERNEL=)
#   make soak DURATION=30m  everything at once on every kernel, then a summary
#   make lint             checkpatch, sparse and W=1 on every kernel
#   make cross-arm64      build/<kver>/vballoon.ko for Debian's arm64
#                         6.12 kernels (16k and 4k pages), cross-compiled
#   make install          install into /lib/modules/$(KVER)/updates
#   make deb              build/deb/vballoon-dkms_<version>_all.deb
#   make dkms-add         put the sources under /usr/src and dkms add them
#   make check-distro     the package and distribution boot tests alone
#   make check-upgrade    a Debian 13 guest upgrading to trixie-backports' kernel
#   make check-secureboot the Secure Boot guest alone (OVMF, shim, DKMS's key)
#
# HOST_QEMU=10.0 runs every guest of any target on that QEMU (Debian 13's,
# from scripts/hosts.sh); by default this machine's own (7.2), and make
# check runs the core cases on the other hosts as well.

KVER ?= $(shell uname -r)
# The running kernel may have no headers (a container, a build box): then
# take the newest kernel that has them.
ifeq ($(wildcard /lib/modules/$(KVER)/build),)
KVER := $(lastword $(sort $(notdir $(patsubst %/build,%,$(wildcard /lib/modules/*/build)))))
endif
KDIR ?= /lib/modules/$(KVER)/build

# Not kbuild's own vballoon.mod.c, which an in-place "make" leaves here.
SRCS := Kbuild VERSION $(filter-out %.mod.c,$(wildcard *.c)) include
VB_VERSION := $(shell cat $(CURDIR)/VERSION)
# What DKMS and the Debian package ship in /usr/src/vballoon-<version>.
DKMS_SRC = $(DESTDIR)/usr/src/vballoon-$(VB_VERSION)
DEB_DIR ?= $(CURDIR)/build/deb
HOST_KERNELS = $(sort $(notdir $(patsubst %/build,%,$(wildcard /lib/modules/*/build))))
# Other suites' kernels (5.10, 7.x): built in debootstrap chroots and booted
# from the cache of scripts/kernels.sh (VB_CACHE).
VB_CACHE ?= /var/cache/vballoon
export VB_CACHE
# make run boots a kernel of this machine: alone, it does not even read
# the chroots' records.
ifneq ($(or $(MAKECMDGOALS),all),$(filter run run-demo,$(MAKECMDGOALS)))
CHROOT_KERNELS := $(filter-out $(HOST_KERNELS),$(shell scripts/kernels.sh list 2>/dev/null))
endif
KERNELS = $(sort $(HOST_KERNELS) $(CHROOT_KERNELS))
PYTHON ?= python3
# read by selftests/vbtest/platform.py
HOST_QEMU ?=
export HOST_QEMU
# the hosts besides this machine's QEMU that make check runs the core
# cases on: none when HOST_QEMU names one
CHECK_QEMU_CORE ?= $(if $(HOST_QEMU),,$(shell scripts/hosts.sh list 2>/dev/null | cut -d' ' -f1))
MODPROBE_CONF := /etc/modprobe.d/vballoon.conf

.PHONY: all modules clean all-kernels cross-arm64 check check-suite check-arm64 check-debug check-distro check-upgrade \
	check-secureboot \
	deps run run-demo \
	bench overcommit soak lint \
	install uninstall dkms-source dkms-add dkms-remove deb

all: modules

modules:
	$(MAKE) -C $(KDIR) M=$(CURDIR) modules

# Each kernel builds in its own directory of links to the sources, so the
# objects of one never mix with another's.
build/%/vballoon.ko: $(SRCS) $(wildcard include/*.h)
	@mkdir -p build/$*
	@for f in $(SRCS); do ln -sfn $(CURDIR)/$$f build/$*/$$f; done
	$(MAKE) -C /lib/modules/$*/build M=$(CURDIR)/build/$* $(KBUILD_EXTRA) modules

# The same for a kernel of another suite, in its chroot: a static pattern
# rule, which make prefers to the one above.
$(foreach k,$(CHROOT_KERNELS),build/$(k)/vballoon.ko): build/%/vballoon.ko: $(SRCS) $(wildcard include/*.h)
	@mkdir -p build/$*
	@for f in $(SRCS); do ln -sfn $(CURDIR)/$$f build/$*/$$f; done
	scripts/kernels.sh build $* build/$* $(KBUILD_EXTRA)

all-kernels: $(foreach k,$(KERNELS),build/$(k)/vballoon.ko)

# arm64: Debian's headers unpacked under build/arm64 (scripts/arm64.sh),
# the module cross-compiled for each flavour, W=1 and sparse silent.
ARM64_FLAVOURS ?= arm64-16k arm64
cross-arm64:
	@set -e; for kdir in $$(scripts/arm64.sh $(ARM64_FLAVOURS)); do \
		b=build/$${kdir##*/linux-headers-}; mkdir -p $$b; \
		for f in $(SRCS); do ln -sfn $(CURDIR)/$$f $$b/$$f; done; \
		$(MAKE) -C $$kdir M=$(CURDIR)/$$b ARCH=arm64 \
			CROSS_COMPILE=aarch64-linux-gnu- W=1 C=$(or $(C),1) modules; \
		echo "cross-arm64: $$b/vballoon.ko"; \
	done

deps:
	scripts/deps.sh

# The x86 kernels installed here, and arm64 guests of CHECK_ARM64 (Debian's
# kernel packages unpacked under build/arm64/root, the module cross-built).
CHECK_ARM64 ?= arm64-16k
# The suite runs in a make of its own: make reads a directory once, so this
# one would not see the kernels that deps.sh has just installed.
check:
	scripts/deps.sh --if-missing
	$(MAKE) check-suite

# The x86 kernels with headers and an image (the host's, and the other
# suites' unpacked under $(VB_CACHE)/x86/root); none is an error, not a pass.
CHECK_KERNELS = $(foreach k,$(KERNELS),$(if $(wildcard /boot/vmlinuz-$(k) \
	$(VB_CACHE)/x86/root/boot/vmlinuz-$(k)),$(k)))
# Every case on the oldest and the newest kernel, the core cases
# (@case(core=True)) on the others: all of them on every kernel would not
# fit make check's hour. CHECK_FULL="$(CHECK_KERNELS)" runs everything.
CHECK_FULL ?= $(shell printf '%s\n' $(CHECK_KERNELS) | sort -V | sed -n '1p;$$p')
check-suite:
	$(if $(CHECK_KERNELS),,$(error no x86 kernel with headers and an image: run make deps))
	$(MAKE) all-kernels
	$(MAKE) cross-arm64 ARM64_FLAVOURS="$(CHECK_ARM64)"
	$(PYTHON) selftests/runner.py $(addprefix --kernel ,$(CHECK_KERNELS)) \
		$$(scripts/arm64.sh --guest $(CHECK_ARM64) | sed 's/^/--kernel /') \
		--core $(addprefix --full ,$(CHECK_FULL)) \
		$(addprefix --qemu-core ,$(CHECK_QEMU_CORE)) $(CHECK_ARGS)
	$(PYTHON) selftests/distro.py $(DISTRO_ARGS)

# The cases that run on arm64 (selftests/cases, arches=ALL_ARCHES), on the
# 16k and the 4k page flavours.
check-arm64:
	scripts/deps.sh --if-missing
	$(MAKE) cross-arm64 ARM64_FLAVOURS="arm64-16k arm64"
	$(PYTHON) selftests/runner.py \
		$$(scripts/arm64.sh --guest arm64-16k arm64 | sed 's/^/--kernel /') $(CHECK_ARGS)

# A 6.12 kernel with KASAN, lockdep, DEBUG_VM, kmemleak and fault injection
# (scripts/debug-kernel.sh, built once into build/debug), vballoon built
# against it, and every x86 case plus the kmemleak and fault injection ones.
check-debug:
	scripts/deps.sh --if-missing
	@set -e; kver=$$(scripts/debug-kernel.sh); b=build/$$kver; mkdir -p $$b; \
	for f in $(SRCS); do ln -sfn $(CURDIR)/$$f $$b/$$f; done; \
	$(MAKE) -C build/debug/obj M=$(CURDIR)/$$b modules; \
	$(PYTHON) selftests/runner.py --kernel $$kver $(CHECK_ARGS)

# The Debian package on this machine, then a Debian 12 guest booting with it,
# and one booting through OVMF, shim and GRUB with Secure Boot on;
# with DISTRO_UPGRADE=1 (read by distro.py) also the Debian 13 guest that
# upgrades to trixie-backports' kernel, beside the rest. check-upgrade runs
# that guest alone: it is too slow under TCG for make check's hour.
check-distro:
	scripts/deps.sh --if-missing
	$(PYTHON) selftests/distro.py $(DISTRO_ARGS)

check-upgrade:
	scripts/deps.sh --if-missing
	$(PYTHON) selftests/distro.py --upgrade-only $(DISTRO_ARGS)

check-secureboot:
	scripts/deps.sh --if-missing
	$(PYTHON) selftests/distro.py --secureboot-only $(DISTRO_ARGS)

# The newest kernel of this machine with headers and an image, the one
# selftests/demo.py boots by default; RUN_KVER= picks another.
RUN_KVER ?= $(shell printf '%s\n' $(foreach k,$(HOST_KERNELS),$(if $(wildcard \
	/boot/vmlinuz-$(k)),$(k))) | sort -V | tail -n 1)
# Only what the demo uses: host packages, no other suite's chroot, and the
# module for the one kernel it boots. The demo runs in a make of its own,
# which sees the kernels deps.sh has just installed.
run:
	scripts/deps.sh --if-missing --host-only
	$(MAKE) run-demo

run-demo: $(if $(RUN_KVER),build/$(RUN_KVER)/vballoon.ko)
	$(if $(RUN_KVER),,$(error no kernel with headers and an image in /boot: run scripts/deps.sh --host-only))
	$(PYTHON) selftests/demo.py --kernel $(RUN_KVER) $(RUN_ARGS)

bench:
	scripts/deps.sh --if-missing
	$(MAKE) all-kernels
	$(PYTHON) selftests/bench.py $(BENCH_ARGS)

# The story of why a balloon exists, at a quarter of its size: six guests,
# one host memory cgroup, the load moving between them (selftests/overcommit.py;
# root, for the cgroup). Not part of make check: a two-guest swing is.
KERNEL ?= $(lastword $(sort $(filter 6.12.%,$(KERNELS))))
overcommit:
	scripts/deps.sh --if-missing
	$(MAKE) build/$(KERNEL)/vballoon.ko
	$(PYTHON) selftests/overcommit.py --kernel $(KERNEL) $(OVERCOMMIT_ARGS)

DURATION ?= 10m
soak:
	scripts/deps.sh --if-missing
	$(MAKE) all-kernels
	VB_SOAK_DURATION=$(DURATION) $(PYTHON) selftests/runner.py --cases selftests/soak \
		-v $(SOAK_ARGS)

lint:
	scripts/deps.sh --if-missing
	scripts/lint.sh

# Into the kernel's updates/ tree, which depmod prefers to the kernel's own
# modules. The headers carry no signing key: do not try to sign.
install: modules
	$(MAKE) -C $(KDIR) M=$(CURDIR) INSTALL_MOD_PATH=$(DESTDIR) \
		INSTALL_MOD_DIR=updates CONFIG_MODULE_SIG_ALL= modules_install
	install -m 0644 -D modprobe.d/vballoon.conf $(DESTDIR)$(MODPROBE_CONF)
	$(if $(DESTDIR),,depmod -a $(KVER))

uninstall:
	rm -f $(DESTDIR)/lib/modules/$(KVER)/updates/vballoon.ko*
	ls $(DESTDIR)/lib/modules/*/updates/vballoon.ko* >/dev/null 2>&1 || \
		rm -f $(DESTDIR)$(MODPROBE_CONF)
	$(if $(DESTDIR),,depmod -a $(KVER))

# The sources as DKMS wants them, with the version from VERSION put into
# dkms.conf. The Debian package installs them with this too.
dkms-source:
	rm -rf $(DKMS_SRC)
	install -d $(DKMS_SRC)
	cp -R Makefile $(SRCS) $(DKMS_SRC)/
	sed 's/#MODULE_VERSION#/$(VB_VERSION)/' dkms.conf >$(DKMS_SRC)/dkms.conf

dkms-add: dkms-source
	dkms add vballoon/$(VB_VERSION)

dkms-remove:
	-dkms remove vballoon/$(VB_VERSION) --all
	rm -rf $(DKMS_SRC)

# The Debian package (debian/), built in a copy of the sources so that the
# tree stays clean.
deb:
	rm -rf $(DEB_DIR)/vballoon-$(VB_VERSION) $(DEB_DIR)/vballoon*_$(VB_VERSION)_*
	mkdir -p $(DEB_DIR)/vballoon-$(VB_VERSION)
	cp -R Makefile $(SRCS) dkms.conf modprobe.d debian $(DEB_DIR)/vballoon-$(VB_VERSION)/
	cd $(DEB_DIR)/vballoon-$(VB_VERSION) && dpkg-buildpackage -us -uc -b
	@echo "deb: $(DEB_DIR)/vballoon-dkms_$(VB_VERSION)_all.deb"

clean:
	$(MAKE) -C $(KDIR) M=$(CURDIR) clean 2>/dev/null || true
	rm -rf build
