# SPDX-License-Identifier: GPL-2.0
#
# ferry: entry points.
#
#   make            build dm-ferry.ko (against the cached guest kernel, built
#                   on first use; or against KDIR=/path/to/your/kernel/build)
#   make test       userspace tests + the guest suite (what CI runs)
#   make demo       two guests replicating; kill the primary, promote, check
#   make bench      ferry vs dm-linear vs the raw disk, in guests
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

.PHONY: all module kernel test demo bench soak mutants clean
