# Two guests, joined only to each other: ping, and a TCP transfer both ways.
peer=10.99.0.$((2 - FERRY_NODE))
for i in $(seq 1 30); do ping -c 1 -W 2 "$peer" >/dev/null 2>&1 && break; sleep 1; done
ping -c 3 -W 5 "$peer" >/tmp/ping || { cat /tmp/ping; fail "ping $peer"; }
ok "ping $peer: $(tail -1 /tmp/ping)"
ip route | grep -q default && fail "guest has a default route"

# Each side serves a file the other fetches and checks (both know its
# content).  Ending needs an order, or one side may power off while the
# other still needs its server: node 0 publishes "done" once it has node 1's
# file, waits for node 1's "done" and publishes "bye"; node 1 publishes
# "done" only after seeing node 0's, then serves until node 0's "bye" (or
# until node 0 powered off).
www_start net-ping
# Published whole (written aside, then renamed): the peer may fetch it
# the moment it appears.
seq 1 150000 >/tmp/data.new
mv /tmp/data.new $WWW/data
fetch data /tmp/recv 60 || fail "TCP: cannot fetch from $peer"
cmp $WWW/data /tmp/recv || fail "TCP transfer from $peer: $(wc -c </tmp/recv) of $(wc -c <$WWW/data) bytes"
if [ "$FERRY_NODE" = 0 ]; then
	touch $WWW/done
	fetch done /dev/null 60 || fail "peer never finished"
	touch $WWW/bye
else
	fetch done /dev/null 60 || fail "peer never finished"
	touch $WWW/done
	await_peer_file "$peer" bye || fail "the peer did not end"
fi
ok "TCP transfer each way ($(wc -c </tmp/recv) bytes)"
