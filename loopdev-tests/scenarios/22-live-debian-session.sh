# On the Debian live system built from Debian's packages (loopdev-tests/live/): a Tails-layout
# volume under systemd and udev, tor-state with Debian's tor unit and AppArmor profile across
# an amnesic reboot, Ctrl-C through sudo in a pty, a container on a stick udisks mounted for
# the live user, and the leak scan (loopdev-tests/live/live-session.py).
host_main() { ks_live_run live-session; }
