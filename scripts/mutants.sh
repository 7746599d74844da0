#!/usr/bin/env bash
# `make mutants`: mutation testing of ferry-core's engine modules (gate,
# write intent, spool, selection, checkpoint/apply, streams and their
# acknowledgements, command batches) with cargo-mutants: each mutant (an
# operator swapped, a function body replaced by a default value) is built
# and ferry-core's tests run against it; a mutant the tests pass is a bug
# they would not catch.  Which files, which mutants are left out as
# equivalent and why: userspace/.cargo/mutants.toml and
# Documentation/testing.rst.
#
#   FERRY_MUTANTS_SIM_SEEDS  simulation seeds per mutant (300; make test
#                            runs 10,000)
#   FERRY_MUTANTS_JOBS       mutants built and tested at once (1)
#   FERRY_MUTANTS_MIN        lowest score, percent, each module must reach
#                            (90)
#   FERRY_MUTANTS_ARGS       more arguments for cargo-mutants (say
#                            "-f ferry-core/src/gate.rs": one module only)
#
# Results go to out/mutants/mutants.out (caught.txt, missed.txt, ...); the
# table per module is printed and kept in out/mutants/summary.txt.  Fails
# when a mutant is missed or a module scores below FERRY_MUTANTS_MIN.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
MUTANTS_VERSION=27.1.0
out=${FERRY_OUT:-$PWD/out}/mutants
mkdir -p "$out"

# cargo-mutants, the pinned version: the one on PATH, or installed into
# FERRY_CACHE/tools.
tools=${FERRY_CACHE:-/var/cache/ferry}/tools
export PATH="$PATH:$tools/bin"
if [ "$(cargo-mutants mutants --version 2>/dev/null)" != "cargo-mutants $MUTANTS_VERSION" ]; then
	export PATH="$tools/bin:$PATH"
	if [ "$(cargo-mutants mutants --version 2>/dev/null)" != "cargo-mutants $MUTANTS_VERSION" ]; then
		cargo install cargo-mutants --locked --version "$MUTANTS_VERSION" --root "$tools"
	fi
fi

# A target directory of its own: a mutant's build must never share
# artifacts with a build of the unmutated tree (cargo would take one for
# the other: the two trees hash the same).
CARGO_TARGET_DIR=$(scripts/cargo-target.sh)/mutants
export CARGO_TARGET_DIR
export FERRY_SIM_SEEDS=${FERRY_MUTANTS_SIM_SEEDS:-300}

t0=$SECONDS
rc=0
# shellcheck disable=SC2086 # FERRY_MUTANTS_ARGS is split on purpose
(cd userspace && nice -n 19 cargo mutants -p ferry-core -j "${FERRY_MUTANTS_JOBS:-1}" \
	--colors never -o "$out" ${FERRY_MUTANTS_ARGS:-}) || rc=$?
# cargo-mutants: 0 all caught, 2 some missed, 3 some timed out; anything
# else (the tree does not build, the baseline fails) is a failure here.
case $rc in 0 | 2 | 3) ;; *) echo "mutants: cargo-mutants failed ($rc)" >&2; exit "$rc" ;; esac

python3 - "$out/mutants.out/outcomes.json" "${FERRY_MUTANTS_MIN:-90}" "$((SECONDS - t0))" <<'EOF' | tee "$out/summary.txt"
import collections, json, os, sys

outcomes = json.load(open(sys.argv[1]))["outcomes"]
least, seconds = float(sys.argv[2]), int(sys.argv[3])
kinds = {"CaughtMutant": "caught", "MissedMutant": "missed",
         "Unviable": "unviable", "Timeout": "timeout"}
table = collections.defaultdict(collections.Counter)
for o in outcomes:
    m = o["scenario"]
    if not isinstance(m, dict) or "Mutant" not in m:
        continue  # the baseline
    module = os.path.basename(m["Mutant"]["file"]).removesuffix(".rs")
    table[module][kinds.get(o["summary"], o["summary"])] += 1

cols = ("caught", "missed", "unviable", "timeout")
print(f"{'module':<12}" + "".join(f"{c:>10}" for c in cols) + f"{'score':>9}")
low, total = [], collections.Counter()
for module in sorted(table):
    n = table[module]
    total.update(n)
    viable = n["caught"] + n["missed"] + n["timeout"]
    score = 100.0 * n["caught"] / viable if viable else 100.0
    if score < least:
        low.append(module)
    print(f"{module:<12}" + "".join(f"{n[c]:>10}" for c in cols) + f"{score:>8.1f}%")
viable = total["caught"] + total["missed"] + total["timeout"]
score = 100.0 * total["caught"] / viable if viable else 100.0
print(f"{'all':<12}" + "".join(f"{total[c]:>10}" for c in cols) + f"{score:>8.1f}%")
print(f"score = caught / (caught + missed + timeout); {seconds} s")
if total["missed"]:
    print("missed: out/mutants/mutants.out/missed.txt (kill each with a test,"
          " or list it as equivalent: Documentation/testing.rst)")
if low:
    print(f"below {least:g}%: {' '.join(low)}")
sys.exit(1 if total["missed"] or low else 0)
EOF
