# Two guests, joined only to each other: ping, and a TCP transfer both ways.
peer=10.99.0.$((2 - FERRY_NODE))
for i in $(seq 1 30); do ping -c 1 -W 2 "$peer" >/dev/null 2>&1 && break; sleep 1; done
ping -c 3 -W 5 "$peer" >/tmp/ping || { cat /tmp/ping; fail "ping $peer"; }
ok "ping $peer: $(tail -1 /tmp/ping)"
ip route | grep -q default && fail "guest has a default route"

# Each side serves a file the other fetches and checks (both know its
# content).  Ending needs an order, or one side may power off while the
# other still needs its server: node 0 publishes "done" once it has node 1's
# file, waits for node 1's "done" and powers off; node 1 publishes "done"
# only after seeing node 0's, then serves until node 0 stops answering.
mkdir -p /tmp/www
seq 1 150000 >/tmp/www/data
httpd -p 7000 -h /tmp/www || fail "httpd"
# (Debian's static busybox wget crashes with -T: timeout(1) bounds it.)
fetch() {  # fetch <path> <out>: retry for up to 60 s
	for i in $(seq 1 60); do
		timeout 20 wget -q -O "$2" "http://$peer:7000/$1" 2>/dev/null && return 0
		sleep 1
	done
	return 1
}
fetch data /tmp/recv || fail "TCP: cannot fetch from $peer"
cmp /tmp/www/data /tmp/recv || fail "TCP transfer from $peer: $(wc -c </tmp/recv) of $(wc -c </tmp/www/data) bytes"
if [ "$FERRY_NODE" = 0 ]; then
	touch /tmp/www/done
	fetch done /dev/null || fail "peer never finished"
else
	fetch done /dev/null || fail "peer never finished"
	touch /tmp/www/done
	for i in $(seq 1 60); do ping -c 1 -W 1 "$peer" >/dev/null 2>&1 || break; sleep 1; done
fi
killall httpd
ok "TCP transfer each way ($(wc -c </tmp/recv) bytes)"
