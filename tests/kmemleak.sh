# The kernel command line for a guest that is killed (a power cut) or only
# checks what one left: kmemleak's tracking costs about a third of the
# debug kernel's time, and such a guest never reaches the leak scan that
# ends a boot (tests/guest/init).  Leaks of the same code paths are caught
# by the boots that do scan: the single-guest suites, the two-guest boot
# and the replication crash points' secondary.  (Sourced.)
NO_KMEMLEAK="kmemleak=off ferry.kmemleak=0"
