# Two test guests joined only to each other, booted and killed one by one
# (sourced by tests/repl-crash.sh and tests/repl-sec-crash.sh).  The caller
# sets $initrd and $out.  Node 0 is 10.99.0.1, node 1 10.99.0.2; the guest
# started with "listen" keeps the QEMU socket netdev, and each guest
# started later with "connect" joins it (QEMU accepts a new connection
# after the previous peer went away).
tools=${initrd%.cpio}.tools.img
kernel="$("$here/scripts/build-kernel.sh" debug)/arch/x86/boot/bzImage"
. "$here/tests/seed.sh"
. "$here/tests/kmemleak.sh"
port=$(free_port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

# guest <node> <log> <listen|connect> <tests> <append> [keep]: boots a
# guest with disks vda, vdb (256 MiB), vdc, vdd (64 MiB) and vde (256 MiB),
# new unless "keep" (then those of the node's previous boot); pid in $gpid.
guest() {
	local n=$1 log=$2 role=$3 t=$4 app=$5 keep=${6:-} args=() i
	for i in 0 1 2 3 4; do
		local f="$out/g$n-disk$i.img" sz=256M
		case $i in 2|3) sz=64M ;; esac
		if [ -z "$keep" ] || [ ! -f "$f" ]; then rm -f "$f"; truncate -s $sz "$f"; fi
		args+=(-drive "file=$f,format=raw,if=none,id=d$i,cache=unsafe" -device "virtio-blk-pci,drive=d$i")
	done
	qemu-system-x86_64 -accel tcg -cpu max,la57=off -nodefaults -no-user-config -nic none \
		-display none -no-reboot -m 512 -smp 1 -kernel "$kernel" -initrd "$initrd" \
		-append "console=ttyS0 ignore_loglevel panic=-1 oops=panic ferry.node=$n ferry.nodes=2 ferry.tests=$t $app" \
		-chardev "file,id=s0,path=$log" -serial chardev:s0 "${args[@]}" \
		-drive "file=$tools,format=raw,if=none,id=tools,readonly=on" \
		-device virtio-blk-pci,drive=tools,serial=ferrytools \
		-netdev "socket,id=n0,$role=127.0.0.1:$port" \
		-device "virtio-net-pci,netdev=n0,mac=52:54:00:f0:00:0$((n + 1))" \
		-monitor "unix:$out/g$n.mon,server=on,wait=off" \
		</dev/null >"$log.qemu" 2>&1 &
	gpid=$!
	pids+=($gpid)
}

# monitor <node> <command>: one command to the QEMU monitor of the node's
# running guest; prints its reply, fails when QEMU printed an error.
monitor() {
	python3 - "$out/g$1.mon" "$2" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect(sys.argv[1])
buf = b""
def prompt():
    global buf
    while not buf.endswith(b"(qemu) "):
        d = s.recv(4096)
        if not d:
            sys.exit("monitor: QEMU closed the monitor")
        buf += d
prompt()
buf = b""
s.sendall(sys.argv[2].encode() + b"\n")
prompt()
# The reply: what follows the echoed command, without the prompt.
lines = buf.decode(errors="replace").replace("\r", "").split("\n")[1:-1]
print("\n".join(lines))
if any("rror" in l or "not found" in l for l in lines):
    sys.exit(1)
EOF
}

# wait_listen: until the guest started with "listen" has its socket open
# (a guest started with "connect" before that would have no link).
wait_listen() {
	local _
	for _ in $(seq 300); do ss -Htln "sport = :$port" | grep -q . && return 0; sleep 0.1; done
	return 1
}

# wait_for <file> <pattern> <seconds> <pid>: until the (serial) log has a
# line matching; fails when the guest is gone or the time is up.
wait_for() {
	local end=$(( $(date +%s) + $3 ))
	until { tr -d '\r' <"$1"; } 2>/dev/null | grep -aq "$2"; do
		type demo_flush >/dev/null 2>&1 && demo_flush
		[ "$(date +%s)" -lt $end ] || return 1
		kill -0 "$4" 2>/dev/null || return 1
		sleep 0.2
	done
}
