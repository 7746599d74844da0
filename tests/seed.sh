# Reproducible randomness for the host scripts (sourced).  Every random
# choice of a run (crash delays, which point gets which workload) comes from
# $RANDOM, seeded here from FERRY_SEED, which `make test` prints at its
# start: FERRY_SEED=<n> make test (or the one script) makes the same
# choices again.  Each script mixes its own name in, so that it makes the
# same choices whether it runs alone or in the suite.  (Guests run under
# TCG: the same choices do not make the same interleaving of guest events,
# only the same schedule of cuts.)
if [ -z "${FERRY_SEED:-}" ]; then
	FERRY_SEED=$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')
	echo "seed: FERRY_SEED=$FERRY_SEED (none given)"
fi
export FERRY_SEED
RANDOM=$(( FERRY_SEED + $(basename "$0" | cksum | cut -d' ' -f1) % 65536 ))
# Free TCP ports from another source, so that a port in use does not move
# the choices.
free_port() {
	local p
	while :; do
		p=$(shuf -i 20000-59999 -n 1)
		ss -Htln "sport = :$p" | grep -q . || { echo "$p"; return; }
	done
}
