# Two guests, joined only to each other: ping, and a TCP transfer both ways.
peer=10.99.0.$((2 - FERRY_NODE))
for i in $(seq 1 30); do ping -c 1 -W 2 "$peer" >/dev/null 2>&1 && break; sleep 1; done
ping -c 3 -W 5 "$peer" >/tmp/ping || { cat /tmp/ping; fail "ping $peer"; }
ok "ping $peer: $(tail -1 /tmp/ping)"
ip route | grep -q default && fail "guest has a default route"

# Both sides know the content, so each checks what it received.
seq 1 150000 >/tmp/send
nc -l -p 7000 </tmp/send >/dev/null &
server=$!
for i in $(seq 1 30); do
	nc -w 5 "$peer" 7000 </dev/null >/tmp/recv 2>/dev/null
	[ -s /tmp/recv ] && break
	sleep 1
done
cmp /tmp/send /tmp/recv || fail "TCP transfer from $peer: $(wc -c </tmp/recv) of $(wc -c </tmp/send) bytes"
( sleep 30; kill $server 2>/dev/null ) &
wait $server
ok "TCP transfer both ways ($(wc -c </tmp/recv) bytes)"
