# Guest side of loopdev-tests/bench/unplug: how fast the key of an unlocked volume is gone
# when its stick is pulled, by keepsake's watcher and by shell hooks one could write today,
# and on command, by `keepsake lock --now` and by `cryptsetup luksSuspend`; all in one boot.
#
# Each round runs these seven, in an order that rotates from round to round:
#   keepsake-end   unlock (its watcher's default, --on-removal end); the live user writes into
#                  ~/Persistent; the stick is pulled
#   luks-end       unlock, the watcher killed; the live user writes; a shell hook (up_hook)
#                  waits for the partition to go, then cryptsetup luksSuspend, dmsetup remove
#                  --force --deferred, fuser -k -m, umount -l; the stick is pulled
#   dm-end         the same hook without luksSuspend: dmsetup remove --force --deferred first
#   keepsake-wipe  unlock --on-removal wipe, nobody writing; the stick is pulled
#   luks-wipe      as luks-end, nobody writing (no fuser)
#   now            unlock; the live user writes; keepsake --json lock --now
#   luks-now       unlock; the live user writes; cryptsetup luksSuspend, dmsetup wipe_table,
#                  keepsake lock --force (see up_now)
# After each pull the host plugs the stick back in (KS-HOST replug usb) and the guest waits
# for it to come back under a new name, found by its serial. keepsake runs from the stick's
# system partition (UP_KS), as on a live system.
#
# For the host (bench/unplug-report.py), besides the machine's facts:
#   KS-OUT pull=KIND ROUND KEY_MS MAPPING_MS T0_UNIX MARK_UNIX
#       unplug-clock's times since the kernel's first removal uevent ("none": not within its
#       8 s), that uevent on the guest's wall clock, and the guest's wall clock just before it
#       asked for the unplug, which the KS-HOST mark line also carries to the host's log
#   KS-OUT hook=KIND ROUND SEEN_NS FIRST_MS FIRST_RC DONE_MS
#       the hook's own steps: when it saw the partition gone (guest wall clock, ns), how long
#       its first command (luksSuspend, or dmsetup) took and its exit status, and when it
#       was done, in ms after it saw the partition gone
#   KS-OUT now=KIND ROUND KEY_MS EXIT_MS WIPED_MS TOTAL_MS RC
#       key-clock's times from the command's start to no key and to its exit; keepsake's
#       keys_wiped_ms ("-" for luksSuspend); the wall time until the volume is locked
#   KS-OUT writer=KIND ROUND ended|alive           whether the live user's writer was ended
#   KS-OUT unlock=KIND ROUND MS, replug=ROUND MS    the bench's own overheads
#
# shellcheck shell=dash disable=SC2086,SC2015

UP_MAP=TailsData_unlocked
# The live user (busybox has a setpriv of its own, without --reuid).
AS_USER="/usr/bin/setpriv --reuid 1000 --regid 1000 --clear-groups"
UP_KINDS="keepsake-end luks-end keepsake-wipe dm-end luks-wipe now luks-now"
UP_WRITER=
UP_KEY_CLOCK=$(ks_in key_clock)
# As on a live system, keepsake runs from the stick itself: its binary on the stick's first
# partition (its libraries stay in RAM), mounted read-only as a live system's medium is.
# Pulling the stick takes the watcher's own file away with it.
UP_MEDIUM=/run/live/medium
UP_KS=$UP_MEDIUM/keepsake

up_ns() { /usr/bin/date +%s%N; }
up_ms() { echo $(( ($(up_ns) - $1) / 1000000 )); }

# The stick: the disk whose serial is "usb" (after a replug it has a new name).
up_disk() {
    local f
    for f in /sys/block/vd*/serial; do
        [ "$(cat "$f" 2>/dev/null)" = usb ] || continue
        f=${f%/serial}
        echo "${f##*/}"
        return 0
    done
    return 1
}

# up_wait COMMAND...: until COMMAND succeeds, every 20 ms, for at most 10 s.
up_wait() {
    local n=0
    while [ $n -lt 500 ]; do "$@" && return 0; sleep 0.02; n=$((n + 1)); done
    return 1
}
up_stick_back() { local d; d=$(up_disk) && [ -b "/dev/${d}2" ]; }
# A process is gone when it has exited, reaped or not (a zombie holds nothing).
up_gone() { [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" = Z ] || ! kill -0 "$1" 2>/dev/null; }

up_unlock() {
    local kind=$1 r=$2 d t0; shift 2
    d=$(up_disk) || ks_fail "round $r, $kind: no stick"
    t0=$(up_ns)
    "$UP_KS" unlock --device "/dev/${d}2" --key-file "$KS_PASS_FILE" "$@" >/tmp/up-unlock.out 2>&1 \
        || { sed 's/^/    | /' /tmp/up-unlock.out; ks_fail "round $r, $kind: unlock"; }
    echo "KS-OUT unlock=$kind $r $(up_ms "$t0")"
    grep -q "removing any of them wipes the key" /tmp/up-unlock.out \
        || { sed 's/^/    | /' /tmp/up-unlock.out; ks_fail "round $r, $kind: unlock did not arm the watcher"; }
}

up_watcher_pid() { "$UP_KS" status | sed -n 's/.*(watcher pid \([0-9]*\),.*/\1/p' | head -n 1; }

# The live user writes into Persistent without pause, one file held open; at least 2 MiB
# are written (and dirty in the page cache) before anything else happens.
up_start_writer() {
    rm -f "$KS_PERSISTENT/stream"
    $AS_USER sh -c "exec 3>>$KS_PERSISTENT/stream; while :; do dd if=/dev/urandom bs=64k count=8 >&3 2>/dev/null; done" &
    UP_WRITER=$!
    up_wait up_written 2097152 || ks_fail "the live user's writer does not write"
}
up_written() { [ "$(stat -c %s "$KS_PERSISTENT/stream" 2>/dev/null || echo 0)" -ge "$1" ]; }
# Whether the contender ended the live user's writer (KS-OUT writer=KIND ROUND ended|alive);
# ended here in any case.
up_writer_fate() {
    [ -n "$UP_WRITER" ] || return 0
    if up_gone "$UP_WRITER"; then
        echo "KS-OUT writer=$1 $2 ended"
    else
        echo "KS-OUT writer=$1 $2 alive"
        echo "KS-LOG round $2, $1: the live user's writer lives on"
    fi
    up_end_writer
}
up_end_writer() {
    [ -n "$UP_WRITER" ] || return 0
    kill -9 "$UP_WRITER" 2>/dev/null
    wait "$UP_WRITER" 2>/dev/null
    UP_WRITER=
}

# up_hook PART MODE FIRST: what one could script today without keepsake, started before the
# pull (as a boot script or a udev rule's program would be). It waits for the partition
# under the volume to go (before its disk does), polling every 10 ms, then:
#   FIRST=luks  cryptsetup luksSuspend, the key wipe cryptsetup offers;
#   then, always, dmsetup remove --force --deferred: a table that fails I/O in place of the
#               crypt one (its key freed with it), the mapping removed once nothing holds it
#               (else an unmount would wait forever on a suspended mapping, and a process
#               blocked in it could not be killed);
#   MODE=end    fuser -k -m on the volume's mounts (SIGKILL to whoever uses them);
#   then        umount -l of the volume's mounts.
# Its own times go to standard output (up_pull reads them).
up_hook() {
    local part=$1 mode=$2 first=$3 t0 rc mounts
    # The volume's mounts, read beforehand, the binds first: fuser -m matches a mount, not
    # its file system (a writer in ~/Persistent, a bind, is not found at the mount point).
    mounts=$(awk -v d="/dev/mapper/$UP_MAP" '$1 == d {print $2}' /proc/self/mounts | sed '1!G;h;$!d')
    # busybox runs sleep as a program (~25 ms a round here): a read with a timeout, from a
    # FIFO nobody writes, is the shell's own 10 ms wait.
    rm -f /tmp/up-hook.fifo; mkfifo /tmp/up-hook.fifo; exec 9<>/tmp/up-hook.fifo
    while [ -e "/sys/class/block/$part" ]; do read -t 0.01 -u 9 _; done
    t0=$(up_ns)
    echo "seen $t0"
    if [ "$first" = luks ]; then
        cryptsetup luksSuspend "$UP_MAP"
        rc=$?
        echo "first $(up_ms "$t0") $rc"
        dmsetup remove --force --deferred "$UP_MAP"
    else
        dmsetup remove --force --deferred "$UP_MAP"
        rc=$?
        echo "first $(up_ms "$t0") $rc"
    fi
    [ "$mode" = end ] && fuser -s -k -m $mounts
    umount -l $mounts
    echo "done $(up_ms "$t0")"
}

# up_pull KIND ROUND: one pull (see the header), and the stick plugged back in.
up_pull() {
    local kind=$1 r=$2 d pid clock hook= g1 key map t0u t0 i
    d=$(up_disk) || ks_fail "round $r, $kind: no stick"
    case $kind in
        keepsake-wipe) up_unlock "$kind" "$r" --on-removal wipe ;;
        *) up_unlock "$kind" "$r" ;;
    esac
    pid=$(up_watcher_pid)
    [ -n "$pid" ] || ks_fail "round $r, $kind: no watcher pid in keepsake status"
    case $(readlink "/proc/$pid/exe") in "$UP_KS"*) ;; *) ks_fail "round $r, $kind: the watcher does not run the stick's binary" ;; esac
    case $kind in luks-*|dm-*)
        kill -9 "$pid"
        up_wait up_gone "$pid" || ks_fail "round $r, $kind: the watcher outlives kill -9"
        "$UP_KS" status | grep -q 'watched: pulling' && ks_fail "round $r, $kind: status still says watched" ;;
    esac
    # The same caches before every pull: clean pages dropped. Without this, the kernel spent
    # 0.5 to 2 s more before its removal event in the hooks' rounds, invalidating the cached
    # pages of the stick's system partition (keepsake's binary, mapped by no one once the
    # watcher is killed; the watcher keeps it mapped and locked in the other rounds).
    sync; echo 3 > /proc/sys/vm/drop_caches
    case $kind in *-end) up_start_writer ;; esac
    case $kind in
        luks-end) up_hook "${d}2" end luks > /tmp/up-hook.out 2>&1 & hook=$! ;;
        dm-end) up_hook "${d}2" end dm > /tmp/up-hook.out 2>&1 & hook=$! ;;
        luks-wipe) up_hook "${d}2" wipe luks > /tmp/up-hook.out 2>&1 & hook=$! ;;
    esac
    : > /tmp/clock.out
    unplug-clock --timeout 8 "$UP_MAP" "$d" "${d}2" >> /tmp/clock.out 2>&1 &
    clock=$!
    for i in $(seq 1 250); do grep -q '^ready' /tmp/clock.out && break; sleep 0.02; done
    grep -q '^key=present' /tmp/clock.out || { cat /tmp/clock.out; ks_fail "round $r, $kind: the clock sees no key before the pull"; }
    # The guest's clock just before the request, for the host's log (the host's device_del
    # against the guest's uevent: bench/unplug-report.py).
    g1=$(/usr/bin/date +%s.%N)
    echo "KS-HOST mark $kind $r $g1"
    echo "KS-HOST unplug usb"
    wait $clock
    key=$(sed -n 's/.*key_ms=\([^ ]*\).*/\1/p' /tmp/clock.out)
    map=$(sed -n 's/.*mapping_ms=\([^ ]*\).*/\1/p' /tmp/clock.out)
    t0u=$(sed -n 's/^t0_unix=//p' /tmp/clock.out)
    echo "KS-OUT pull=$kind $r ${key:-none} ${map:-none} ${t0u:-none} $g1"
    if [ -n "$hook" ]; then
        up_wait up_gone "$hook" || { kill -9 "$hook" 2>/dev/null; echo "KS-LOG round $r, $kind: the hook still ran after 10 s"; }
        wait "$hook" 2>/dev/null
        echo "KS-OUT hook=$kind $r $(sed -n 's/^seen //p' /tmp/up-hook.out) $(sed -n 's/^first //p' /tmp/up-hook.out) $(sed -n 's/^done //p' /tmp/up-hook.out)"
        grep -v '^seen \|^first \|^done ' /tmp/up-hook.out | sort | uniq -c | sed 's/^/    | hook: /'
    fi
    case $kind in keepsake-*) up_wait up_gone "$pid" || echo "KS-LOG round $r, $kind: the watcher is still there" ;; esac
    up_writer_fate "$kind" "$r"
    ks_log "round $r, $kind: key gone ${key:-none} ms, mapping gone ${map:-none} ms after the kernel's removal event"
    up_cleanup "$kind" "$r"
    t0=$(up_ns)
    echo "KS-HOST replug usb"
    up_wait up_stick_back || ks_fail "round $r, $kind: the stick did not come back"
    echo "KS-OUT replug=$r $(up_ms "$t0")"
    up_mount_medium
}

# The stick's system partition, mounted again (its old mount died with the pull).
up_mount_medium() {
    local d
    umount -l "$UP_MEDIUM" 2>/dev/null
    d=$(up_disk) && mount -o ro "/dev/${d}1" "$UP_MEDIUM" && [ -x "$UP_KS" ] || ks_fail "mount the stick's system partition"
}

# Whatever a contender left: gone before the next unlock, and said.
up_cleanup() {
    if ! up_wait ks_no_mapping; then
        echo "KS-LOG round $2, $1: a mapping is left; removed by force"
        awk -v d="/dev/mapper/$UP_MAP" '$1 == d {print $2}' /proc/self/mounts | sed '1!G;h;$!d' | xargs -r umount -l
        dmsetup remove --force "$UP_MAP" >/dev/null 2>&1
        up_wait ks_no_mapping || ks_fail "round $2, $1: the mapping cannot be removed"
    fi
    # A mapping the kernel removed (deferred) leaves its /dev/mapper node: no udev here.
    [ -e "/dev/mapper/$UP_MAP" ] && dmsetup mknodes
    grep -q "^/dev/mapper/$UP_MAP " /proc/self/mounts && ks_fail "round $2, $1: the volume is still mounted"
    return 0
}

# up_now KIND ROUND: the key wiped on command, the live user writing; key-clock times it
# from the command's start.
up_now() {
    local kind=$1 r=$2 t0 total wiped clk rc key ex
    up_unlock "$kind" "$r"
    up_start_writer
    t0=$(up_ns)
    if [ "$kind" = now ]; then
        "$UP_KEY_CLOCK" "$UP_MAP" "$UP_KS" --json lock --now > /tmp/up-now.out 2>/tmp/up-now.err
        rc=$?
        total=$(up_ms "$t0")
        wiped=$(sed -n 's/.*"keys_wiped_ms": *\([0-9.]*\).*/\1/p' /tmp/up-now.out | head -n 1)
    else
        "$UP_KEY_CLOCK" "$UP_MAP" cryptsetup luksSuspend "$UP_MAP" 2>/tmp/up-now.err
        rc=$?
        # lock --force right after luksSuspend fails: the writer blocked in the suspended
        # mapping cannot be killed (exit 5 after ~6 s here), and the next sync would wait
        # forever. A table that fails I/O in its place first, as keepsake's wipe does.
        [ $rc = 0 ] && dmsetup wipe_table "$UP_MAP" >>/tmp/up-now.err 2>&1 \
            && "$UP_KS" lock --force > /tmp/up-now.out 2>>/tmp/up-now.err
        rc=$?
        total=$(up_ms "$t0")
        wiped=-
    fi
    clk=$(sed -n 's/^key-clock //p' /tmp/up-now.err)
    if [ $rc != 0 ]; then
        sed 's/^/    | /' /tmp/up-now.out /tmp/up-now.err
        echo "KS-LOG round $r, $kind: exit $rc"
    fi
    key=$(echo "$clk" | sed -n 's/.*key_ms=\([^ ]*\).*/\1/p')
    ex=$(echo "$clk" | sed -n 's/.*exit_ms=\([^ ]*\).*/\1/p')
    echo "KS-OUT now=$kind $r ${key:-none} ${ex:-none} ${wiped:-none} $total $rc"
    ks_log "round $r, $kind: $clk; keys_wiped_ms ${wiped:-none}; locked after $total ms"
    up_writer_fate "$kind" "$r"
    up_cleanup "$kind" "$r"
}

# up_rotate R WORD...: the words, rotated left by R - 1, so that no kind always runs first.
up_rotate() {
    local k=$(( ($1 - 1) % ($# - 1) )) w; shift
    while [ "$k" -gt 0 ]; do w=$1; shift; set -- "$@" "$w"; k=$((k - 1)); done
    echo "$@"
}

guest_all() {
    local rounds r kind t0 d n p0
    t0=$(up_ns)
    ks_pass_file
    rounds=$(ks_in rounds)
    echo "KS-OUT machine=$(uname -r), $(grep -c ^processor /proc/cpuinfo) vCPU, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
    echo "KS-OUT versions=$(cryptsetup --version | awk '{print $2}') $(dmsetup --version | sed -n 's/^Library version: *//p' | awk '{print $1}') $(fuser -V 2>&1 | sed -n 's/^fuser (PSmisc) //p')"
    echo "KS-OUT clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
    d=$(up_disk) || ks_fail "no stick"
    ks_expect_rc 0 "create the volume on the stick" -- keepsake create --device "/dev/$d" --yes --key-file "$KS_PASS_FILE" $KS_KDF
    mkdir -p "$UP_MEDIUM"
    mkfs.ext4 -q -F "/dev/${d}1" && mount "/dev/${d}1" "$UP_MEDIUM" && cp /usr/sbin/keepsake "$UP_KS" \
        && umount "$UP_MEDIUM" || ks_fail "keepsake on the stick's system partition"
    up_mount_medium
    # What one round of the hook's poll costs here.
    n=0; p0=$(up_ns)
    mkfifo /tmp/up-poll.fifo; exec 9<>/tmp/up-poll.fifo
    while [ $n -lt 50 ]; do [ -e "/sys/class/block/${d}2" ]; read -t 0.01 -u 9 _; n=$((n + 1)); done
    exec 9<&-
    echo "KS-OUT poll_round_us=$(( ($(up_ns) - p0) / 50000 ))"
    # And what reading the clock costs the hook (a run of /usr/bin/date).
    n=0; p0=$(up_ns)
    while [ $n -lt 20 ]; do _=$(up_ns); n=$((n + 1)); done
    echo "KS-OUT date_us=$(( ($(up_ns) - p0) / 20000 ))"
    ks_log "set up in $(( ($(up_ns) - t0) / 1000000 )) ms"
    for r in $(seq 1 "$rounds"); do
        for kind in $(up_rotate "$r" $UP_KINDS); do
            case $kind in
                now|luks-now) up_now "$kind" "$r" ;;
                *) up_pull "$kind" "$r" ;;
            esac
        done
        ks_log "round $r done at $(( ($(up_ns) - t0) / 1000000000 )) s"
    done
    echo "KS-OUT guest_seconds=$(( ($(up_ns) - t0) / 1000000000 ))"
}
