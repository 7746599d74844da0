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
# 3. Replication (part "repl"): ferry between two guests on a shaped link.
# 4. Side by side (part "drbd"): ferry, DRBD 8.4 protocol A and dm-linear in
#    the same two guests on the same shaped link, alternating over
#    FERRY_BENCH_DRBD_ROUNDS rounds (default FERRY_BENCH_ROUNDS, else 3),
#    FERRY_BENCH_REPL_SECS (default 20) per figure; a table of medians
#    (tests/guest/t-bench-drbd.sh, Documentation/testing.rst).
# 5. Resync (part "resync"): the same two guests, a group sent ahead by a
#    link cut and brought back by the automatic resync
#    (tests/guest/t-bench-resync.sh): A, the resync's throughput as a
#    fraction of the FERRY_BENCH_LINK_MBIT link (FERRY_BENCH_RESYNC_MB,
#    default 64, MiB dirty); B, 4 KiB random writes at QD8 for
#    FERRY_BENCH_RESYNC_SECS (default 15) on FERRY_BENCH_RESYNC_APP_MBIT
#    (default 200), replicating, during a resync without a cap and with
#    FERRY_BENCH_RESYNC_CAP (default 2) MiB/s: IOPS and their ratios to
#    the run without a resync, the resync's copy rate, whether it lasted
#    the run.  FERRY_BENCH_RESYNC_ROUNDS rounds (default
#    FERRY_BENCH_ROUNDS, else 3); a table of medians.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${FERRY_OUT:-$PWD/out}/bench
rm -rf "$out"; mkdir -p "$out"
rounds=${FERRY_BENCH_ROUNDS:-5} secs=${FERRY_BENCH_SECS:-8}
# FERRY_BENCH_PARTS: which parts run (default all: "fio repl drbd resync").
parts=${FERRY_BENCH_PARTS:-fio repl drbd resync}
kdir=$(scripts/build-kernel.sh release)
make --no-print-directory module FLAVOUR=release
# The release kernel's drbd.ko goes in too (the "drbd" part loads it).
FERRY_INITRAMFS_KDIR=$kdir scripts/mkinitramfs.sh "$out/initramfs.cpio" dm-ferry.ko $(scripts/guest-tools.sh)
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
if [[ " $parts " == *" repl "* ]]; then
scripts/vm.sh --kernel "$kdir/arch/x86/boot/bzImage" --initrd "$out/initramfs.cpio" --guests 2 --smp 1 \
	--disk 256M --disk 256M --disk 64M --disk 64M --timeout 1800 --out "$out/repl" \
	--append "ferry.bench_link_mbit=${FERRY_BENCH_LINK_MBIT:-40} ferry.bench_secs=${FERRY_BENCH_REPL_SECS:-20} ferry.bench_lag_qd=${FERRY_BENCH_LAG_QD:-1} ferry.bench_lag_mbit=${FERRY_BENCH_LAG_MBIT:-20}" bench-repl >/dev/null ||
	{ tail -30 "$out/repl/g0.log"; echo "bench: replication run failed"; exit 1; }
echo
echo "replication over a 20 ms link of 200 Mbit/s, then ${FERRY_BENCH_LINK_MBIT:-40} Mbit/s (two guests, release kernel)"
tr -d '\r' <"$out/repl/g0.log" | grep -a '^bench-repl|' | cut -d'|' -f2- | sed 's/|/: /; s/^/  /'
fi

# 4. Side by side: ferry, DRBD 8.4 protocol A, dm-linear (two guests, the
#    same disks and link as 3).  The guests of 4 and 5 get the host's TSC
#    frequency (tsc_early_khz, tsc=reliable; FERRY_BENCH_TSC_KHZ
#    overrides): under TCG the guest's calibration against the PIT fails
#    at random, the clock falls back to jiffies and fio's latencies come
#    out as 0 or 4 ms.
tscargs=
if [[ " $parts " == *" drbd "* || " $parts " == *" resync "* ]]; then
	tsc_khz=${FERRY_BENCH_TSC_KHZ:-}
	if [ -z "$tsc_khz" ]; then
		mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/\1/p; s/.*tsc: Detected \([0-9.]*\) MHz processor.*/\1/p' | tail -1)
		# Without the kernel log: the CPU's nominal clock, when its TSC
		# runs at a constant, known rate.
		[ -n "$mhz" ] || ! grep -qw tsc_known_freq /proc/cpuinfo || mhz=$(awk -F': *' '/^cpu MHz/ { print $2; exit }' /proc/cpuinfo)
		[ -z "$mhz" ] || tsc_khz=$(awk -v m="$mhz" 'BEGIN { printf "%d", m * 1000 }')
	fi
	if [ -n "$tsc_khz" ]; then tscargs="tsc_early_khz=$tsc_khz tsc=reliable"
	else echo "bench: the host's TSC frequency is unknown (set FERRY_BENCH_TSC_KHZ): guest latencies may be wrong" >&2; fi
fi
if [[ " $parts " == *" drbd "* ]]; then
drounds=${FERRY_BENCH_DRBD_ROUNDS:-${FERRY_BENCH_ROUNDS:-3}}
dsecs=${FERRY_BENCH_REPL_SECS:-20} dmbit=${FERRY_BENCH_LINK_MBIT:-40}
scripts/vm.sh --kernel "$kdir/arch/x86/boot/bzImage" --initrd "$out/initramfs.cpio" --guests 2 --smp 1 \
	--disk 256M --disk 256M --disk 64M --disk 64M --timeout $((900 + drounds * (60 * dsecs + 300))) --out "$out/drbd" \
	--append "ferry.bench_link_mbit=$dmbit ferry.bench_secs=$dsecs ferry.bench_rounds=$drounds ferry.bench_burst_mb=${FERRY_BENCH_BURST_MB:-48} $tscargs" bench-drbd >/dev/null ||
	{ tail -40 "$out/drbd/g0.log"; echo "bench: side-by-side run failed"; exit 1; }
echo
echo "side by side: ferry, DRBD 8.4 protocol A, dm-linear; 20 ms link of 200 Mbit/s, then $dmbit Mbit/s (two guests, release kernel, $drounds rounds of ${dsecs} s per figure)"
python3 - "$out/drbd" "$dmbit" <<'PY'
import sys, statistics as st, collections
out, mbit = sys.argv[1], sys.argv[2]
vals = collections.defaultdict(list)  # (system, figure) -> [per-round value]
info = {}
for line in open(f"{out}/g0.log", errors="replace"):
    line = line.strip().replace("\r", "")
    if not line.startswith("bench-drbd|"):
        continue
    _, r, system, fig, v = line.split("|", 4)
    if r == "0":
        info[fig] = v
        continue
    try:
        vals[(system, fig)].append(float(v))
    except ValueError:
        pass
rounds = max((len(v) for v in vals.values()), default=0)
pace = info.get("paced_asked_KiBps", "?")
figs = [
    ("rand4k_qd32_iops", "A 4 KiB randwrite QD32 IOPS, 200 Mbit/s", "higher"),
    ("rand4k_qd32_p99_us", "A same: p99 latency, us", "lower"),
    ("seq1m_qd4_MBps", "A 1 MiB seqwrite QD4 MB/s, 200 Mbit/s", "higher"),
    ("sustained_fraction_of_link", f"B sustained 1 MiB writes, data sent / {mbit} Mbit/s link", "higher"),
    ("sustained_fio_fraction_of_link", "B same: what fio wrote / link", "higher"),
    ("burst_writer_s", f"C {info.get('burst_mb', '48')} MiB burst: writer done, s", "lower"),
    ("burst_held_s", "C same: all of it held by the secondary, s", "lower"),
    ("paced_p50_us", f"D 4 KiB QD1 paced at {pace} KiB/s: p50 latency, us", "lower"),
    ("paced_p99_us", "D same: p99 latency, us", "lower"),
    ("paced_KiBps", f"D same: rate achieved, KiB/s (asked {pace})", "higher"),
]
def med(system, fig):
    v = vals.get((system, fig))
    return st.median(v) if v else None
def fmt(x):
    if x is None: return "-"
    a = abs(x)
    return f"{x:.3f}" if a < 1 else f"{x:.2f}" if a < 10 else f"{x:.1f}" if a < 100 else f"{x:.0f}"
def ratio(a, b):
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"
rows = [("figure (medians)", "dm-linear", "ferry", "DRBD A", "ferry/DRBD", "ferry/linear", "DRBD/linear", "better")]
for fig, title, better in figs:
    l, f, d = med("linear", fig), med("ferry", fig), med("drbd", fig)
    rows.append((title, fmt(l), fmt(f), fmt(d), ratio(f, d), ratio(f, l), ratio(d, l), better))
w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
text = []
for i, r in enumerate(rows):
    text.append("  " + "  ".join(c.ljust(w[j]) if j == 0 else c.rjust(w[j]) for j, c in enumerate(r)))
    if i == 0: text.append("  " + "  ".join("-" * x for x in w))
text.append(f"  ({rounds} rounds; per round:)")
for fig, title, better in figs:
    for system in ("linear", "ferry", "drbd"):
        v = vals.get((system, fig))
        if v: text.append(f"    {fig} {system}: " + " ".join(fmt(x) for x in v))
for k in ("write_cache", "drbd"):
    if k in info: text.append(f"  {k}: {info[k]}")
print("\n".join(text))
open(f"{out}/table.txt", "w").write("\n".join(text) + "\n")
PY
fi

# 5. Resync: two guests (release kernel), the disks of 3 and a 1 GiB disk
#    for the secondary's remote log (a resync span is staged whole);
#    tests/guest/t-bench-resync.sh, Documentation/testing.rst.
[[ " $parts " == *" resync "* ]] || exit 0
rrounds=${FERRY_BENCH_RESYNC_ROUNDS:-${FERRY_BENCH_ROUNDS:-3}}
rsecs=${FERRY_BENCH_RESYNC_SECS:-15} rmbit=${FERRY_BENCH_LINK_MBIT:-40}
scripts/vm.sh --kernel "$kdir/arch/x86/boot/bzImage" --initrd "$out/initramfs.cpio" --guests 2 --smp 1 \
	--disk 256M --disk 256M --disk 64M --disk 64M --disk 1G --timeout $((900 + rrounds * (600 + 6 * rsecs))) --out "$out/resync" \
	--append "ferry.bench_link_mbit=$rmbit ferry.bench_resync_app_mbit=${FERRY_BENCH_RESYNC_APP_MBIT:-200} ferry.bench_secs=$rsecs ferry.bench_rounds=$rrounds ferry.bench_resync_mb=${FERRY_BENCH_RESYNC_MB:-64} ferry.bench_resync_cap=${FERRY_BENCH_RESYNC_CAP:-2} $tscargs" bench-resync >/dev/null ||
	{ tail -40 "$out/resync/g0.log"; echo "bench: resync run failed"; exit 1; }
echo
python3 - "$out/resync" <<'PY'
import sys, statistics as st, collections
out = sys.argv[1]
vals = collections.defaultdict(dict)  # figure -> {round: value}
info = {}
for line in open(f"{out}/g0.log", errors="replace"):
    line = line.strip().replace("\r", "")
    if not line.startswith("bench-resync|"):
        continue
    _, r, fig, v = line.split("|", 3)
    if r == "0":
        info[fig] = v
    else:
        vals[fig][int(r)] = v
def num(fig):
    """{round: float} of a figure, its numeric rounds only."""
    d = {}
    for r, v in vals.get(fig, {}).items():
        try: d[r] = float(v)
        except ValueError: pass
    return d
def fmt(x):
    if x is None: return "-"
    a = abs(x)
    if a == 0: return "0"
    return f"{x:.3f}" if a < 1 else f"{x:.2f}" if a < 10 else f"{x:.1f}" if a < 100 else f"{x:.0f}"
def med(d):
    return st.median(d.values()) if d else None
def per_round(d):
    return " ".join(f"{fmt(d[r])}" for r in sorted(d))
def table(rows):
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    t = []
    for i, r in enumerate(rows):
        t.append("  " + "  ".join(c.ljust(w[j]) if j == 0 else c.rjust(w[j]) for j, c in enumerate(r)))
        if i == 0: t.append("  " + "  ".join("-" * x for x in w))
    return t
mbit, amb = info.get("link_mbit", "?"), info.get("app_link_mbit", "?")
cap, secs = info.get("resync_cap_MiBps", "?"), info.get("fio_secs", "?")
rounds = max((len(v) for v in vals.values()), default=0)
text = [f"resync after a link outage: A on a 20 ms link of {mbit} Mbit/s, B on {amb} Mbit/s"
        f" (two guests, release kernel, {rounds} rounds, medians)",
        f"A  the resync's throughput: {info.get('a_write_MiB', '?')} MiB written to r1 (1 to r0) with the"
        " link cut, timed from the link's restore until both devices are replicating"]
figs = [
    ("A_dirty_MiB", "dirty at the restore, MiB"),
    ("A_spooled_MiB", "spooled at the restore (records from the cut), MiB"),
    ("A_connected_s", "restore -> both streams connected, s"),
    ("A_resyncing_s", "restore -> resyncing, s"),
    ("A_s", "restore -> replicating (the span applied), s"),
    ("A_MBps", "resync MB/s (dirty bytes / restore -> replicating)"),
    ("A_fraction_of_link", f"fraction of the {mbit} Mbit/s link (the same)"),
    ("A_moved_fraction_of_link_from_connected", "fraction of the link, dirty + spooled bytes from the connection on"),
    ("A_eth0_bytes_per_dirty_byte", "bytes the primary's eth0 sent per dirty byte"),
    ("A_eth0_bytes_per_moved_byte", "the same per byte moved (dirty + spooled)"),
]
rows = [("figure", "median", "per round")]
for fig, title in figs:
    d = num(fig)
    rows.append((title, fmt(med(d)), per_round(d) or "-"))
text += table(rows)
conds = [("norsync", "replicating, no resync"), ("uncapped", "during a resync, no cap"),
         ("capped", f"during a resync, cap {cap} MiB/s")]
text.append("")
text.append(f"B  4 KiB random writes, QD8, {secs} s on the last 64 MiB of r1; the resync copies the first"
            f" {info.get('b_write_MiB', '?')} MiB written with the link cut")
base = num("B_norsync_iops")
rows = [("condition", "IOPS", "/no resync", "copy MB/s", "chunks copied", "resync lasted the run", "spool KiB", "dirty MiB",
         "primary CPU busy")]
notes = []
for c, title in conds:
    iops = num(f"B_{c}_iops")
    ratio = {r: iops[r] / base[r] for r in iops if r in base and base[r] > 0}
    running = vals.get(f"B_{c}_running_at_end", {})
    lasted = "-" if c == "norsync" else f"{sum(1 for v in running.values() if v == 'yes')} of {len(running)}"
    rows.append((title, fmt(med(iops)), "1" if c == "norsync" else fmt(med(ratio)),
                 fmt(med(num(f"B_{c}_copy_MBps"))), fmt(med(num(f"B_{c}_copied_chunks"))), lasted,
                 fmt(med(num(f"B_{c}_spool_median_KiB"))), fmt(med(num(f"B_{c}_dirty_MiB"))),
                 fmt(med(num(f"B_{c}_cpu_busy")))))
    notes.append(f"    {c} IOPS: {per_round(iops) or '-'}")
    if c != "norsync":
        notes.append(f"    {c} IOPS / no resync: {per_round(ratio) or '-'}")
        notes.append(f"    {c} copy MB/s: {per_round(num(f'B_{c}_copy_MBps')) or '-'}")
        over = vals.get(f"B_{c}_over_after_s", {})
        for r in sorted(running):
            if running[r] != "yes":
                notes.append(f"    {c} round {r}: the resync was over {over.get(r, '?')} s into the {secs} s run:"
                             " the rest of the run had none")
text += table(rows)
text.append("  (per round:)")
text += notes
print("\n".join(text))
open(f"{out}/table.txt", "w").write("\n".join(text) + "\n")
PY
