# Pull the stick, lose the key. The host hot-unplugs a virtual stick (qemu device_del: the
# guest's kernel removes the disk as when a USB stick is pulled) while the live user writes
# into a bound folder; the watcher that unlock armed must wipe the volume key from the
# kernel, end the writer and take the volume away. lib/unplug-clock (the guest's own netlink
# and dm ioctls) times it from the kernel's removal event. Then the host dumps the guest's
# RAM and finds neither the volume key nor a canary the live user wrote just before.
# Negative control: the same with the watcher killed, where the key is found. The same for a
# container file on a second stick (with --on-removal wipe: the writer lives on, the mapping
# goes when it ends), and for `lock --now`. And the watcher's own rules: a session of its
# own, locked in memory, untraceable by the live user, one per volume, gone at lock, loud
# when it cannot start, fatal with --require-watch.

host_main() {
    ks_set passphrase "pull-$(ks_random)"
    local usb stick2 vk pass dump="$KS_SCEN_DIR/ram.bin" phase
    usb=$(ks_live_stick usb 320M) || return 1
    stick2=$(ks_gpt_disk stick2 160M) || return 1
    for phase in pull control; do
        ks_set canary "KSPULL-$phase-$(ks_random)"
        ks_set control "KSPULL-tmpfs-$(ks_random)"
        KS_RAM_DUMP=$dump ks_phase "$phase" "usb=$usb" "stick2=$stick2" || return 1
        vk=$(ks_volume_key "$usb" 2)
        [ ${#vk} -eq 128 ] || { ks_host_fail "no volume key read from the stick ($vk)"; return 1; }
        scan_dump "$phase" "$dump" "$vk"
    done
    ks_set canary "KSPULL-container-$(ks_random)"
    ks_set control "KSPULL-tmpfs-$(ks_random)"
    KS_RAM_DUMP=$dump ks_phase container "usb=$usb" "stick2=$stick2" || return 1
    vk=$(container_volume_key "$stick2")
    [ ${#vk} -eq 128 ] || { ks_host_fail "no volume key read from the container ($vk)"; return 1; }
    scan_dump container "$dump" "$vk"
    ks_set canary "KSPULL-now-$(ks_random)"
    ks_set control "KSPULL-tmpfs-$(ks_random)"
    KS_RAM_DUMP=$dump ks_phase now "usb=$usb" "stick2=$stick2" || return 1
    scan_dump now "$dump" "$(ks_volume_key "$usb" 2)"
    rm -f "$dump"
    # A volume the system unlocked at boot, armed by `keepsake watch --on-removal shutdown`:
    # the pull powers the machine off.
    ks_phase adopted_shutdown "usb=$usb" "stick2=$stick2" || return 1
    local log="$KS_SCEN_DIR/adopted_shutdown.log"
    if grep -q "keepsake: powering off" "$log" && ! grep -q "KS-STILL-RUNNING" "$log"; then
        ks_host_ok "the pull powered the guest off (no line of the guest's after it)"
    else
        ks_host_fail "the guest was not powered off by the pull"
    fi
}

# scan_dump PHASE DUMP KEY: the key's two XTS halves and the canary are absent (present in
# the control phase), and the tmpfs canary is there (the scan finds what is there).
scan_dump() {
    local want=-eq n=0
    [ "$1" = control ] && { want=-ge; n=1; }
    echo "    ..    RAM after the $1 phase:"
    ks_expect_hits "$1: volume key, first half (AES key of XTS)" "$2" "hex:${3:0:64}" $want $n
    ks_expect_hits "$1: volume key, second half (XTS tweak key)" "$2" "hex:${3:64:64}" $want $n
    [ "$1" = control ] || ks_expect_hits "$1: the live user's canary" "$2" "text:$(ks_get_in canary)" -eq 0
    ks_expect_hits "$1: negative control, a canary on tmpfs" "$2" "text:$(ks_get_in control)" -ge 1
}

# The container file's volume key, read on the host: the file taken out of the second
# stick's ext4 with debugfs, its header dumped with the passphrase.
container_volume_key() {
    local start part="$KS_SCEN_DIR/stick2-part.$$" img="$KS_SCEN_DIR/container.$$" pass="$KS_SCEN_DIR/pass.$$"
    start=$(sfdisk -d "$1" | sed -n "s|^${1}1 : start= *\([0-9]*\),.*|\1|p")
    dd if="$1" of="$part" bs=512 skip="$start" status=none || return 1
    debugfs -R "dump /keepsake.img $img" "$part" >/dev/null 2>&1 || return 1
    sed -n 's/^passphrase=//p' "$KS_SCEN_DIR/in" | tail -n 1 | tr -d '\n' > "$pass"
    cryptsetup luksDump --dump-volume-key -q --key-file "$pass" "$img" 2>/dev/null \
        | sed -n '/MK dump:/,$p' | sed 's/MK dump://' | tr -d ' \t\n:'
    rm -f "$part" "$img" "$pass"
}

# not COMMAND...: succeeds when COMMAND fails (ks_assert runs its command as "$@").
not() { ! "$@"; }

# The live user (busybox has a setpriv of its own, without --reuid).
AS_USER="/usr/bin/setpriv --reuid 1000 --regid 1000 --clear-groups"

# The watcher of the unlocked volume: its pid, from status.
watcher_pid() { keepsake status | sed -n 's/.*(watcher pid \([0-9]*\),.*/\1/p' | head -n 1; }

# stat_field PID N: field N of /proc/PID/stat (after the command name).
stat_field() { sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f$(($2 - 2)); }

# The live user writes into Persistent without pause (one file held open), and writes the canary (from the host,
# through a pipe: never in this shell's memory) just before the stick goes.
start_writer() {
    $AS_USER sh -c \
        "exec 3>>$KS_PERSISTENT/stream; while :; do dd if=/dev/urandom bs=64k count=8 >&3 2>/dev/null; done" &
    KS_WRITER=$!
    ks_in canary | $AS_USER sh -c "cat > $KS_PERSISTENT/canary.txt"
    ks_assert "the live user wrote the canary" grep -q KSPULL "$KS_PERSISTENT/canary.txt"
}

# pull SERIAL MAPPING DEVNAME...: unplugs the disk SERIAL with unplug-clock listening, and
# reports its times; the clock's output is left in /tmp/clock.out.
pull() {
    local serial=$1 mapping=$2; shift 2
    : > /tmp/clock.out
    unplug-clock --timeout 8 "$mapping" "$@" >> /tmp/clock.out 2>&1 &
    local clock=$! i
    for i in $(seq 1 100); do grep -q '^ready' /tmp/clock.out && break; sleep 0.05; done
    ks_assert "the clock sees the key before the pull (control)" grep -q '^key=present' /tmp/clock.out
    echo "KS-HOST unplug $serial"
    wait $clock
    sed 's/^/    | /' /tmp/clock.out
    local key map
    key=$(sed -n 's/.*key_ms=\([^ ]*\).*/\1/p' /tmp/clock.out)
    map=$(sed -n 's/.*mapping_ms=\([^ ]*\).*/\1/p' /tmp/clock.out)
    ks_out "${serial}_key_ms" "$key"
    ks_out "${serial}_mapping_ms" "$map"
    echo "KS-TIME $serial-unplug-to-no-key ${key%.*}"
    [ "$map" = none ] || echo "KS-TIME $serial-unplug-to-no-mapping ${map%.*}"
}

guest_pull() {
    ks_live_session
    ks_pass_file
    ks_expect_rc 0 "create" -- keepsake create --device /dev/vda --yes --key-file "$KS_PASS_FILE" $KS_KDF
    # A watcher that cannot start: its state file's name taken by a folder.
    mkdir -p /run/keepsake/watch.TailsData_unlocked.json
    ks_expect_rc 6 "unlock --require-watch, the watcher unable to start: refused" -- \
        keepsake unlock --key-file "$KS_PASS_FILE" --require-watch
    ks_assert "  and the volume was closed again" ks_no_mapping
    ks_expect_rc 0 "unlock without --require-watch: unlocked" -- keepsake unlock --key-file "$KS_PASS_FILE"
    ks_assert "  with a loud warning" grep -q "WARNING: pulling the stick will NOT wipe the key" /tmp/ks-cmd.out
    keepsake status > /tmp/status.out 2>&1
    ks_assert "  and status says it is not watched" grep -q "NOT WATCHED" /tmp/status.out
    ks_expect_rc 0 "lock" -- keepsake lock
    rmdir /run/keepsake/watch.TailsData_unlocked.json
    # A watcher that does not arm in time: strace holds it in the ftruncate of its state
    # file (created and locked by then) past unlock's 20 s. Unlock kills it and must remove
    # the file it could not: a file there, held by nobody, is debris of a watcher that was.
    local state=/run/keepsake/watch.TailsData_unlocked.json
    ks_expect_rc 0 "unlock, the watcher held before it arms: unlocked" -- \
        strace -f -qq -o /dev/null -P $state -e trace=ftruncate \
        -e inject=ftruncate:delay_exit=40000000 keepsake unlock --key-file "$KS_PASS_FILE"
    ks_assert "  it says the watcher did not arm in time" grep -q "did not arm within 20 s" /tmp/ks-cmd.out
    ks_assert "  with the loud warning" grep -q "WARNING: pulling the stick will NOT wipe the key" /tmp/ks-cmd.out
    ks_assert "  the watcher is gone" sh -c '! ps -o args | grep -q "watch --serv[e]"'
    ks_assert "  and so is the state file it left" [ ! -e $state ]
    ks_expect_rc 0 "lock" -- keepsake lock
    # Unlocked from a shell in a session of its own, as a terminal would: the terminal
    # then closes (SIGHUP to its whole process group).
    setsid sh -c "keepsake unlock --key-file $KS_PASS_FILE > /tmp/unlock.out 2>&1; echo \$? > /tmp/unlock.rc; sleep 60" &
    local term=$! i
    for i in $(seq 1 600); do [ -s /tmp/unlock.rc ] && break; sleep 0.1; done
    ks_assert_eq "unlock from the terminal" "$(cat /tmp/unlock.rc)" 0
    ks_assert "  says the stick is watched" grep -q "removing any of them wipes the key" /tmp/unlock.out
    local pid
    pid=$(watcher_pid)
    ks_assert "status names the watcher's pid" [ -n "$pid" ]
    kill -HUP -- "-$term" 2>/dev/null
    sleep 0.5
    ks_assert "the watcher outlives the terminal's hangup" kill -0 "$pid"
    ks_assert_eq "  its parent is init, not unlock (nor sudo)" "$(stat_field "$pid" 4)" 1
    ks_assert_eq "  it leads a session of its own" "$(stat_field "$pid" 6)" "$pid"
    ks_assert "  its memory is locked (VmLck)" [ "$(awk '/^VmLck/ {print $2}' /proc/$pid/status)" -gt 1024 ]
    ks_assert_eq "  the OOM killer passes it by" "$(cat /proc/$pid/oom_score_adj)" -1000
    ks_assert "  its folder is / (it holds nothing of the volume)" [ "$(readlink /proc/$pid/cwd)" = / ]
    timeout 3 $AS_USER strace -p "$pid" -o /dev/null 2>/tmp/strace.err
    sed 's/^/    | /' /tmp/strace.err
    ks_assert "  the live user cannot trace it" grep -q "Operation not permitted" /tmp/strace.err
    ks_assert "  nor signal it" not $AS_USER kill -TERM "$pid"
    ks_assert "  it watches the partition and its stick" sh -c "keepsake status | grep -q 'pulling /dev/vda2 or /dev/vda wipes the key'"
    ks_expect_rc 0 "keepsake watch: one watcher per volume" -- keepsake watch
    ks_assert "  it says it is already watched" grep -q "already watched" /tmp/ks-cmd.out
    ks_assert "  and the first one still watches" kill -0 "$pid"
    # lock stops it; unlock arms a new one.
    ks_expect_rc 0 "lock" -- keepsake lock
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    ks_assert "lock stops the watcher" not kill -0 "$pid"
    ks_assert "  and its state file is gone" [ ! -e /run/keepsake/watch.TailsData_unlocked.json ]
    # As on a live system, keepsake runs from the stick itself (here its binary on the
    # stick's first partition; its libraries stay in RAM): pulling the stick takes the
    # watcher's own file with it, and the wipe must run from what is locked in memory
    # (the wipe drops the page cache, which would drop an unlocked page).
    umount /run/live/medium 2>/dev/null
    mkfs.ext4 -q -F /dev/vda1 && mount /dev/vda1 /run/live/medium \
        && cp /usr/sbin/keepsake /run/live/medium/keepsake || ks_fail "keepsake on the stick"
    ks_expect_rc 0 "unlock again, keepsake run from the stick" -- /run/live/medium/keepsake unlock --key-file "$KS_PASS_FILE"
    pid=$(watcher_pid)
    ks_assert "  the watcher runs the stick's binary" sh -c "readlink /proc/$pid/exe | grep -q '^/run/live/medium/keepsake'"
    start_writer
    pull usb TailsData_unlocked vda vda2
    ks_assert "the key was gone within the clock's bounds" grep -q 'key_ms=[0-9]' /tmp/clock.out
    ks_assert "the mapping was gone within the clock's bounds" grep -q 'mapping_ms=[0-9]' /tmp/clock.out
    sleep 1
    ks_assert "no dm mapping remains" ks_no_mapping
    ks_assert "no /dev/mapper node remains" [ ! -e /dev/mapper/TailsData_unlocked ]
    ks_assert "the volume is not mounted" ks_not_mounted "$KS_ROOT_MNT"
    ks_assert "Persistent is not mounted" ks_not_mounted "$KS_PERSISTENT"
    ks_assert "the live user's writer was ended" not kill -0 "$KS_WRITER"
    ks_assert "the live user no longer reads the canary" not $AS_USER cat "$KS_PERSISTENT/canary.txt"
    ks_assert "the watcher is gone" not kill -0 "$pid"
    dmesg > /tmp/dmesg.out
    ks_assert "the kernel log says so" grep -q "keepsake: /dev/vda.* gone: volume key wiped from the kernel in" /tmp/dmesg.out
    grep "keepsake:" /tmp/dmesg.out | sed 's/^/    | /'
    keepsake --json status > /tmp/status.out
    ks_assert "status --json reports the wipe" grep -q '"trigger": "/dev/vda' /tmp/status.out
    ks_assert "  with when the key was gone" grep -q '"key_wiped_ms": [0-9]' /tmp/status.out
    halt_with_canary
}

# The RAM is dumped as the wipe left it: no cache dropped by the test, every trace of the
# test's own secrets gone, a control kept on tmpfs.
halt_with_canary() {
    ks_in control > /tmp/control.txt
    rm -rf /run/ks-test /tmp/ks-cmd.out /tmp/clock.out
    ks_dump_ram_and_halt keep-caches
}

guest_control() {
    ks_live_session
    ks_pass_file
    ks_expect_rc 0 "unlock" -- keepsake unlock --key-file "$KS_PASS_FILE"
    local pid
    pid=$(watcher_pid)
    kill -9 "$pid"
    ks_assert "negative control: the watcher is killed" sh -c "! keepsake status | grep -q 'watched: pulling'"
    start_writer
    pull usb TailsData_unlocked vda vda2
    ks_assert "without a watcher the key stays in the kernel" grep -q 'key_ms=none' /tmp/clock.out
    ks_assert "  and the mapping stays" [ -n "$(ls /sys/block | grep '^dm-')" ]
    halt_with_canary
}

guest_container() {
    ks_live_session
    ks_pass_file
    local part
    part=$(readlink -f /dev/disk/by-serial/stick2)1
    mkfs.ext4 -q -F "$part" || ks_fail "mkfs on the second stick"
    mkdir -p /media/stick2 && mount "$part" /media/stick2 || ks_fail "mount the second stick"
    ks_expect_rc 0 "create a container file on a second stick" -- \
        keepsake create --image /media/stick2/keepsake.img --size 64M --yes --key-file "$KS_PASS_FILE" $KS_KDF
    ks_expect_rc 0 "unlock it, --on-removal wipe" -- \
        keepsake unlock --image /media/stick2/keepsake.img --key-file "$KS_PASS_FILE" --on-removal wipe
    local disk=${part#/dev/}; disk=${disk%1}
    keepsake status > /tmp/status.out
    ks_assert "the watcher watches the loop device, the stick's partition and the stick" \
        grep -q "pulling /dev/loop[0-9]* or /dev/${disk}1 or /dev/$disk wipes the key" /tmp/status.out
    start_writer
    pull stick2 TailsData_unlocked "$disk" "${disk}1"
    ks_assert "the key was gone within the clock's bounds" grep -q 'key_ms=[0-9]' /tmp/clock.out
    ks_assert "with --on-removal wipe the live user's writer lives on" kill -0 "$KS_WRITER"
    ks_assert "  and its mapping waits for it" [ -n "$(ls /sys/block | grep '^dm-')" ]
    ks_assert "the volume is not mounted here any more" ks_not_mounted "$KS_ROOT_MNT"
    kill "$KS_WRITER"; wait "$KS_WRITER" 2>/dev/null
    local i
    for i in $(seq 1 50); do ks_no_mapping && break; sleep 0.1; done
    ks_assert "once the writer ends, the kernel removes the mapping" ks_no_mapping
    umount -l /media/stick2 2>/dev/null
    halt_with_canary
}

guest_now() {
    ks_live_session
    ks_pass_file
    ks_expect_rc 0 "unlock" -- keepsake unlock --key-file "$KS_PASS_FILE"
    start_writer
    ks_expect_rc 0 "lock --now, the live user writing" -- keepsake --json lock --now
    sed 's/^/    | /' /tmp/ks-cmd.out
    local ms
    ms=$(sed -n 's/.*"keys_wiped_ms": \([0-9.]*\).*/\1/p' /tmp/ks-cmd.out)
    ks_assert "lock --now says when the key was gone" [ -n "$ms" ]
    echo "KS-TIME lock-now-to-no-key ${ms%.*}"
    ks_out now_key_ms "$ms"
    ks_lock_is_clean
    ks_assert "the live user's writer was ended" not kill -0 "$KS_WRITER"
    halt_with_canary
}

guest_adopted_shutdown() {
    ks_live_session
    ks_pass_file
    # As Tails' Welcome Screen opens it: cryptsetup and mount, no keepsake.
    cryptsetup open /dev/vda2 TailsData_unlocked --key-file "$KS_PASS_FILE" || ks_fail "cryptsetup open"
    mkdir -p "$KS_ROOT_MNT" && mount /dev/mapper/TailsData_unlocked "$KS_ROOT_MNT" || ks_fail "mount"
    ks_expect_rc 0 "keepsake watch arms the watcher of a volume opened at boot" -- keepsake watch --on-removal shutdown
    ks_assert "  it says so" grep -q "wipes the key, ends the processes holding its files and powers off" /tmp/ks-cmd.out
    keepsake status > /tmp/status.out
    ks_assert "  status: opened at boot, and watched" sh -c "grep -q 'opened at boot' /tmp/status.out && grep -q 'watched: pulling /dev/vda2 or /dev/vda' /tmp/status.out"
    # The phase's result is in before the pull: the machine is not expected to live after it.
    echo "KS-PHASE-RC 0"
    echo "KS-HOST unplug usb"
    sleep 15
    echo "KS-STILL-RUNNING"
}
