# SPDX-License-Identifier: GPL-2.0
#
# ferry: entry points.
#
#   make            build dm-ferry.ko (against the cached guest kernel, built
#                   on first use; or against KDIR=/path/to/your/kernel/build)
#   make test       userspace tests + the guest suite (what CI runs)
#   make demo       two guests replicating; kill the primary, promote, check
#   make bench      ferry vs dm-linear vs the raw disk, and vs DRBD, in guests;
#                   the resync's throughput and its cost to the application
#   make soak       the deep tier (tests/soak.sh): the simulation's soak,
#                   each fuzz target, the replay checker over 256 MiB, and
#                   FERRY_CRASH_POINTS (100), FERRY_REPL_POINTS (200) and
#                   FERRY_SEC_CUTS (10) crash points
#   make mutants    mutation testing of ferry-core's engine modules
#                   (scripts/mutants.sh: cargo-mutants, a bounded number of
#                   simulation seeds per mutant): caught, missed, unviable
#                   and timed-out mutants and the score of each module,
#                   results under out/mutants; not part of make test
#   make kernel     only build (or find) the cached guest kernel
#   make userspace  ferryd and ferryctl (cargo, CARGO_PROFILE=release) into
#                   out/bin
#   make install    out/bin's programs, the systemd unit, the documentation
#                   and the module's source for DKMS, under DESTDIR and
#                   PREFIX (default /usr/local; the module's source goes to
#                   /usr/src/ferry-<version> whatever PREFIX is); see
#                   scripts/install.sh and README.md, "Installing on a host"
#   make module FERRY_BUG=gate|meta-fua|apply-flush
#                   a deliberate-bug module (ferry-core's feature bug-<name>:
#                   data released before its log records are acknowledged;
#                   meta writes without FUA; a mark cleared before the data
#                   is flushed), to show that the tests catch it; see
#                   Documentation/testing.rst
#   make clean
#
# FERRY_CACHE (default /var/cache/ferry) holds the kernel builds and tools.

FERRY_CACHE ?= /var/cache/ferry
FLAVOUR ?= debug
LLVM ?= 1
export FERRY_CACHE

# make install: where (GNU conventions; DESTDIR for staging).
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
SBINDIR ?= $(PREFIX)/sbin
UNITDIR ?= $(PREFIX)/lib/systemd/system
MANDIR ?= $(PREFIX)/share/man
DOCDIR ?= $(PREFIX)/share/doc/ferry
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR ?= $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d
CARGO_PROFILE ?= release
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' userspace/ferryd/Cargo.toml | head -n 1)

# With KDIR given, build against that tree with the caller's toolchain.
# Without, use the cached kernel and Debian's rustc that built it.
# Kbuild names headers relative to the kernel tree, so it cannot see that
# objects (and the bindgen output) were built against another tree: when
# the tree changes (say, the debug flavour after the release one), clean
# first.  .kdir remembers the last tree.
define kbuild
	@set -e; \
	if [ -n "$(KDIR)" ]; then kdir="$(KDIR)"; else \
		kdir=$$(scripts/build-kernel.sh $(FLAVOUR)); eval "$$(scripts/deps.sh --env)"; fi; \
	kdir=$$(cd "$$kdir" && pwd -P); \
	if [ "$$(cat .kdir 2>/dev/null)" != "$$kdir" ]; then \
		$(MAKE) -s -C "$$kdir" M=$(CURDIR) LLVM=$(LLVM) clean; \
		rm -f rust/bindings_generated.rs; echo "$$kdir" >.kdir; fi; \
	$(MAKE) -C "$$kdir" M=$(CURDIR) LLVM=$(LLVM) $(1)
endef

all: module

module:
	$(call kbuild,modules)

kernel:
	@scripts/build-kernel.sh $(FLAVOUR)

# The cargo profile's directory is its name, but dev's (and test's) is debug.
userspace:
	@set -e; export PATH="$$HOME/.cargo/bin:$$PATH"; \
	target=$$(scripts/cargo-target.sh); \
	cd userspace && CARGO_TARGET_DIR="$$target" cargo build --locked --profile $(CARGO_PROFILE) -p ferryd --bins; \
	case $(CARGO_PROFILE) in dev|test) dir=debug ;; *) dir=$(CARGO_PROFILE) ;; esac; \
	mkdir -p ../out/bin; cp "$$target/$$dir/ferryd" "$$target/$$dir/ferryctl" ../out/bin/

install:
	@DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" BINDIR="$(BINDIR)" SBINDIR="$(SBINDIR)" \
		UNITDIR="$(UNITDIR)" MANDIR="$(MANDIR)" DOCDIR="$(DOCDIR)" \
		BASHCOMPDIR="$(BASHCOMPDIR)" ZSHCOMPDIR="$(ZSHCOMPDIR)" FISHCOMPDIR="$(FISHCOMPDIR)" \
		VERSION="$(VERSION)" scripts/install.sh

test:
	@tests/run.sh

demo:
	@scripts/demo.sh

bench:
	@scripts/bench.sh

soak:
	@FERRY_CRASH_POINTS=$${FERRY_CRASH_POINTS:-100} tests/soak.sh

mutants:
	@scripts/mutants.sh

clean:
	@if [ -n "$(KDIR)" ]; then kdir="$(KDIR)"; else kdir=$$(ls -d $(FERRY_CACHE)/kernel/$(FLAVOUR)/linux 2>/dev/null); fi; \
	if [ -n "$$kdir" ]; then $(MAKE) -C "$$kdir" M=$(CURDIR) LLVM=$(LLVM) clean; fi
	rm -rf out rust/bindings_generated.rs .kdir

.PHONY: all module kernel userspace install test demo bench soak mutants clean
