#!/usr/bin/env bash
# `make bench`: fio on ferry vs dm-linear vs the raw disk, as ratios measured
# in the same guest and run (never as timed tests).
#
# 1. Wall clock: a guest on the release kernel, disks in host memory,
#    FERRY_BENCH_ROUNDS (default 5) alternating rounds of 4 KiB random writes
#    at QD32 and 1 MiB sequential writes, FERRY_BENCH_SECS (default 8) each.
#    Reported: min / median / max per target, and the median of per-round
#    ratios to dm-linear.
# 2. CPU cost: the same 4 KiB random writes in a guest run with -icount
#    (guest time advances with executed instructions, 1 ns each).  The
#    figure is the guest's busy CPU time per I/O (/proc/stat over the whole
#    fio run, no ramp), i.e. its instructions per I/O, the reader's and the
#    interrupts' included.  IOPS are printed too, but an idle guest's clock
#    jumps to its next event, so a target that waits on the disk (dm-linear)
#    gets IOPS that follow the host's real I/O speed: they vary with the
#    host's load, instructions per I/O do not.
# FERRY_BENCH_PROFILE=1: perf's profile of dm-linear and the primary under
#    -icount too (the top symbols, with and without callees, and the
#    module's hottest instructions), printed after the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${FERRY_OUT:-$PWD/out}/bench
rm -rf "$out"; mkdir -p "$out"
rounds=${FERRY_BENCH_ROUNDS:-5} secs=${FERRY_BENCH_SECS:-8}
# FERRY_BENCH_PARTS: which parts run (default both: "fio repl").
parts=${FERRY_BENCH_PARTS:-fio repl}
kdir=$(scripts/build-kernel.sh release)
make --no-print-directory module FLAVOUR=release
scripts/mkinitramfs.sh "$out/initramfs.cpio" dm-ferry.ko $(scripts/guest-tools.sh)
shm=$(mktemp -d /dev/shm/ferry-bench.XXXXXX)
trap 'rm -rf "$shm"' EXIT
truncate -s 1G "$shm/data.img"; truncate -s 64M "$shm/meta.img"
vm() { scripts/vm.sh --kernel "$kdir/arch/x86/boot/bzImage" --initrd "$out/initramfs.cpio" \
	--disk "$shm/data.img" --disk "$shm/meta.img" --timeout 3600 "$@"; }

if [[ " $parts " == *" fio "* ]]; then
vm --out "$out/wall" --append "ferry.bench_rounds=$rounds ferry.bench_secs=$secs" bench
vm --out "$out/icount" --icount --append "ferry.bench_rounds=3 ferry.bench_secs=4 ferry.bench_ramp=0 ferry.bench_workloads=rand4k${FERRY_BENCH_PROFILE:+ ferry.bench_profile=1}" bench

python3 - "$out" <<'PY'
import sys, statistics as st, collections
out = sys.argv[1]
def load(name):
    rows = collections.defaultdict(dict)
    for line in open(f"{out}/{name}/g0.log", errors="replace"):
        if line.startswith("bench|"):
            _, r, t, w, iops, mbs, p99, cpu = line.strip().split("|")
            rows[(w, int(r))][t] = (float(iops), float(mbs), float(p99), float(cpu))
    return rows
def report(title, rows, cpu_per_io=False):
    print(f"\n{title}")
    for w in sorted({w for w, _ in rows}):
        rs = sorted(r for ww, r in rows if ww == w)
        metric, idx = ("IOPS", 0) if w == "rand4k" else ("MB/s", 1)
        print(f"  {w} ({len(rs)} rounds): {metric} min / median / max")
        for t in ("raw", "linear", "ferry", "primary"):
            v = [rows[(w, r)][t][idx] for r in rs if t in rows[(w, r)]]
            if v: print(f"    {t:7s} {min(v):10.1f} {st.median(v):10.1f} {max(v):10.1f}")
        for t in ("ferry", "primary"):
            rr = [r for r in rs if t in rows[(w, r)] and "linear" in rows[(w, r)]]
            if not rr: continue
            ratio = [rows[(w, r)][t][idx] / rows[(w, r)]["linear"][idx] for r in rr]
            p99 = [rows[(w, r)][t][2] / rows[(w, r)]["linear"][2] for r in rr if rows[(w, r)]["linear"][2] > 0]
            print(f"    {t}/linear {metric}: median {st.median(ratio):.3f} (rounds: {', '.join(f'{x:.3f}' for x in ratio)})")
            if p99: print(f"    {t}/linear p99 latency: median {st.median(p99):.3f}")
            if cpu_per_io:
                c = [rows[(w, r)][t][3] for r in rr]
                cl = [rows[(w, r)]["linear"][3] for r in rr]
                ratio = [a / b for a, b in zip(c, cl) if b > 0]
                print(f"    {t}/linear instructions per I/O: median {st.median(ratio):.3f} ({st.median(c):.0f} / {st.median(cl):.0f})")
report("wall clock (release kernel, disks in host memory)", load("wall"))
report("CPU cost (-icount: IOPS in instruction time; the guest's CPU time per I/O is its instructions per I/O)", load("icount"), cpu_per_io=True)
for name in ("wall", "icount"):
    for line in open(f"{out}/{name}/g0.log", errors="replace"):
        if line.startswith(("bench-primary|", "bench-record|")):
            print(f"  [{name}] {line.strip()}")
prof = [l.rstrip() for l in open(f"{out}/icount/g0.log", errors="replace") if l.startswith("prof")]
if prof:
    print("\nprofile under -icount (perf cpu-clock samples: instruction time)")
    for l in prof: print("  " + l)
PY
fi

# 3. Replication: two guests (release kernel), 20 ms round trip, the link
#    shaped inside them to 200 Mbit/s, then to FERRY_BENCH_LINK_MBIT
#    (default 40; tests/guest/t-bench-repl.sh), FERRY_BENCH_REPL_SECS
#    (default 20) per phase.
[[ " $parts " == *" repl "* ]] || exit 0
scripts/vm.sh --kernel "$kdir/arch/x86/boot/bzImage" --initrd "$out/initramfs.cpio" --guests 2 --smp 1 \
	--disk 256M --disk 256M --disk 64M --disk 64M --timeout 1800 --out "$out/repl" \
	--append "ferry.bench_link_mbit=${FERRY_BENCH_LINK_MBIT:-40} ferry.bench_secs=${FERRY_BENCH_REPL_SECS:-20} ferry.bench_lag_qd=${FERRY_BENCH_LAG_QD:-1} ferry.bench_lag_mbit=${FERRY_BENCH_LAG_MBIT:-20}" bench-repl >/dev/null ||
	{ tail -30 "$out/repl/g0.log"; echo "bench: replication run failed"; exit 1; }
echo
echo "replication over a 20 ms link of 200 Mbit/s, then ${FERRY_BENCH_LINK_MBIT:-40} Mbit/s (two guests, release kernel)"
tr -d '\r' <"$out/repl/g0.log" | grep -a '^bench-repl|' | cut -d'|' -f2- | sed 's/|/: /; s/^/  /'
