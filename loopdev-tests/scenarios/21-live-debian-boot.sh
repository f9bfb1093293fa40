# On the Debian live system built from Debian's packages (loopdev-tests/live/): live-boot's
# own boot-time unlock of a volume keepsake made, adopted, changed and locked by keepsake,
# and an amnesic boot after it (loopdev-tests/live/live-boot-at-boot.py).
host_main() { ks_live_run live-boot-at-boot; }
