# Persistent Tor state with Debian's real tor (no network): the onion service keeps its
# address across an amnesic reboot, tor is stopped and started around every bind and
# unbind (no tor process ever sees both states), a wrong owner or mode leaves tor
# stopped, and the onion service's secret key never reaches the host disk.

host_main() {
    ks_set passphrase "tor $(ks_random)"
    local usb host
    usb=$(ks_live_stick usb 320M) || return 1
    host=$(ks_gpt_disk hostdisk 64M) || return 1
    ks_phase first_boot "usb=$usb" "hostdisk=$host" || return 1
    ks_phase second_boot "usb=$usb" "hostdisk=$host" || return 1
    ks_phase planted "usb=$usb" "hostdisk=$host" || return 1
    local p1 p2 a1 a2
    p1=$(ks_get persistent_address); p2=$(ks_get persistent_address_after_reboot)
    a1=$(ks_get amnesic_address); a2=$(ks_get amnesic_address_after_reboot)
    echo "    ..    onion addresses: persistent $p1 / $p2; amnesic $a1 / $a2"
    [ -n "$p1" ] && [ "$p1" = "$p2" ] && ks_host_ok "the persistent onion address survived the reboot" \
        || ks_host_fail "persistent onion address changed: $p1 -> $p2"
    [ -n "$a1" ] && [ -n "$a2" ] && [ "$a1" != "$a2" ] && ks_host_ok "without the feature, a reboot gives a new address (the test can fail)" \
        || ks_host_fail "amnesic addresses $a1 and $a2 should differ"
    [ "$(ks_get state_hash)" = "$(ks_get state_hash_after_reboot)" ] && [ -n "$(ks_get state_hash)" ] \
        && ks_host_ok "tor's state file is byte-identical across the reboot" || ks_host_fail "state file changed"
    local key control
    key=$(ks_get onion_secret); control=$(ks_get amnesic_secret)
    [ ${#key} -eq 128 ] && ks_host_ok "onion secret key captured" || ks_host_fail "no onion secret key ($key)"
    ks_expect_hits "persistent onion secret key" "$host" "hex:$key" -eq 0
    ks_expect_hits "persistent onion secret key" "$usb" "hex:$key" -eq 0
    ks_expect_hits "negative control: an amnesic key written to the host disk on purpose" "$host" "hex:$control" -ge 1
}

guest_first_boot() {
    mkfs.ext4 -q /dev/vda1 && mkdir -p /run/live/medium && mount -o ro /dev/vda1 /run/live/medium
    mkfs.ext4 -q /dev/vdb1 && mkdir -p /media/hostdisk && mount /dev/vdb1 /media/hostdisk
    ks_pass_file
    local key="--key-file $KS_PASS_FILE"
    ks_tor_setup
    ks_assert "tor starts (amnesic)" ks_tor_start
    # The negative control for the leak scan: a key written to the host disk on purpose.
    # It is then thrown away, so that the key that becomes persistent is another one.
    ks_out amnesic_secret "$(ks_onion_secret_hex)"
    dd if=$KS_ONION/hs_ed25519_secret_key of=/media/hostdisk/control.bin bs=1 skip=32 2>/dev/null
    sync
    kill "$(ks_tor_pid)"; while [ -n "$(ks_tor_pid)" ]; do sleep 0.1; done
    rm -rf "$KS_ONION"
    ks_assert "tor starts (amnesic, a new onion service)" ks_tor_start
    local amnesic; amnesic=$(ks_onion_address)
    ks_out amnesic_address "$amnesic"

    ks_expect_rc 0 "create" -- keepsake create --device /dev/vda --yes $key $KS_KDF
    local pid; pid=$(ks_tor_pid)
    ks_expect_rc 0 "unlock (tor-state not enabled yet)" -- keepsake unlock $key
    ks_assert_eq "tor was left alone" "$(ks_tor_pid)" "$pid"

    ks_expect_rc 0 "enable tor-state while tor runs" -- ks_timed enable_tor_state keepsake feature enable tor-state
    ks_assert "/var/lib/tor is bound from the volume" ks_tor_bound
    ks_assert_eq "the state folder's owner and mode" "$(ks_mode $KS_ROOT_MNT/tor-state)" "101:101 700"
    # Tails would bind a tor-state line in its persistence.conf at boot (a custom feature to
    # it) and run its tor on persistent state: the line lives in keepsake.conf only.
    ks_assert "Tails' persistence.conf has no tor-state line" sh -c "! grep -q tor-state $KS_ROOT_MNT/persistence.conf"
    ks_assert "keepsake.conf has it" grep -q "$(printf '^/var/lib/tor\tsource=tor-state$')" $KS_ROOT_MNT/keepsake.conf
    ks_assert_eq "keepsake.conf is root's 0600" "$(ks_mode $KS_ROOT_MNT/keepsake.conf)" "0:0 600"
    ks_assert "tor was restarted" test "$(ks_tor_pid)" != "$pid"
    ks_assert "tor runs on the persistent state" ks_tor_wait_address
    local persistent; persistent=$(ks_onion_address)
    ks_out persistent_address "$persistent"
    # A new state folder starts as a copy of the session's (as Tails does with cp -a).
    ks_assert_eq "the session's onion service was carried into the volume" "$persistent" "$amnesic"
    keepsake --json status > /tmp/status.json
    ks_assert "status says tor uses the persistent state" grep -q '"state": "persistent"' /tmp/status.json

    ks_out onion_secret "$(ks_onion_secret_hex)"
    ks_expect_rc 0 "lock (stops tor, unbinds, starts it again)" -- ks_timed lock keepsake lock
    ks_assert "the lock report says tor restarted" grep -q "tor restarted on the amnesic state" /tmp/ks-cmd.out
    ks_lock_is_clean
    ks_assert "tor runs" ks_tor_wait_address
    ks_assert_eq "on the amnesic state" "$(ks_onion_address)" "$amnesic"
    ks_out state_hash "$(ks_volume_file_hash tor-state/state)"
    ks_assert "tor logged no complaint about its folders" ks_tor_log_clean
    umount /media/hostdisk
}

# Hash of a file in the locked volume, read through the cryptsetup CLI (read-only).
ks_volume_file_hash() {
    cryptsetup open --readonly --key-file "$KS_PASS_FILE" /dev/vda2 peek || return 1
    mkdir -p /mnt/peek && mount -o ro /dev/mapper/peek /mnt/peek
    sha256sum "/mnt/peek/$1" | cut -c1-64
    umount /mnt/peek; cryptsetup close peek
}

# A process that exists and is not a zombie.
ks_alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)
    [ -n "$state" ] && [ "$state" != Z ]
}

ks_tor_log_clean() {
    ! grep -iE "permissions on directory|not owned by|too permissive|couldn't (open|create)|Failed to parse/validate" /var/log/tor/notices.log
}

guest_second_boot() {
    mkdir -p /run/live/medium && mount -o ro /dev/vda1 /run/live/medium
    ks_pass_file
    ks_tor_setup
    ks_assert "tor starts (amnesic)" ks_tor_start
    local amnesic; amnesic=$(ks_onion_address)
    ks_out amnesic_address_after_reboot "$amnesic"
    ks_out state_hash_after_reboot "$(ks_volume_file_hash tor-state/state)"
    local pid; pid=$(ks_tor_pid)
    ks_expect_rc 0 "unlock with tor-state enabled" -- ks_timed unlock_tor keepsake unlock --key-file "$KS_PASS_FILE"
    ks_assert "tor was restarted" test "$(ks_tor_pid)" != "$pid"
    ks_assert "tor runs" ks_tor_wait_address
    local persistent; persistent=$(ks_onion_address)
    ks_out persistent_address_after_reboot "$persistent"
    ks_assert "tor logged no complaint about its folders" ks_tor_log_clean

    # Runtime toggles, here where the amnesic and persistent addresses differ. No tor
    # process ever sees both states: sample (pid, bound?) while toggling. A sample counts
    # only if its tor is still alive (not exited, not a zombie) after the mount was read:
    # keepsake changes the mount only once the old tor has exited.
    ( while [ ! -e /tmp/stop-watch ]; do
        for p in $(pidof tor); do
            if ks_tor_bound; then b=1; else b=0; fi
            ks_alive "$p" && echo "$p $b"
        done
        sleep 0.02
      done > /tmp/watch ) &
    local watcher=$!
    ks_expect_rc 0 "disable tor-state while tor runs" -- ks_timed disable_tor_state keepsake feature disable tor-state
    ks_assert "tor runs again" ks_tor_wait_address
    ks_assert_eq "now on the amnesic state" "$(ks_onion_address)" "$amnesic"
    ks_expect_rc 0 "enable tor-state again" -- keepsake feature enable tor-state
    ks_assert "tor runs again" ks_tor_wait_address
    ks_assert_eq "back on the persistent state, nothing lost" "$(ks_onion_address)" "$persistent"
    touch /tmp/stop-watch; wait $watcher
    ks_assert "the watcher saw tor processes" test -s /tmp/watch
    ks_assert "the watcher saw tor on both states" sh -c "grep -q ' 0$' /tmp/watch && grep -q ' 1$' /tmp/watch"
    ks_assert "no tor process saw both the amnesic and the persistent folder" sh -c \
        "[ -z \"\$(sort -u /tmp/watch | awk '{print \$1}' | uniq -d)\" ]"
    ks_log "watched $(sort -u /tmp/watch | wc -l) (pid, state) pairs"
    ks_expect_rc 0 "lock" -- keepsake lock
}

guest_planted() {
    mkdir -p /run/live/medium && mount -o ro /dev/vda1 /run/live/medium
    ks_pass_file
    ks_tor_setup
    ks_assert "tor starts (amnesic)" ks_tor_start
    ks_volume_do chmod 0755 tor-state
    ks_expect_rc 9 "unlock with a state folder of the wrong mode" -- keepsake unlock --key-file "$KS_PASS_FILE"
    ks_assert "the error names the mode" grep -q "mode 0700 (it is uid 101 gid 101 mode 0755)" /tmp/ks-cmd.out
    ks_assert "tor is left stopped" test -z "$(ks_tor_pid)"
    ks_assert "/var/lib/tor is not bound" sh -c "! ks_tor_bound() { grep -q ' /var/lib/tor ' /proc/self/mountinfo; }; ! ks_tor_bound"
    ks_expect_rc 0 "lock" -- keepsake lock

    ks_volume_do chmod 0700 tor-state
    ks_volume_do chown 0:0 tor-state
    ks_assert "tor starts (amnesic)" ks_tor_start
    ks_expect_rc 9 "unlock with a state folder of the wrong owner" -- keepsake unlock --key-file "$KS_PASS_FILE"
    ks_assert "tor is left stopped" test -z "$(ks_tor_pid)"
    ks_expect_rc 0 "lock" -- keepsake lock

    # Right folder, but an onion service folder tor refuses: tor itself says no.
    ks_volume_do chown 101:101 tor-state
    ks_volume_do chmod 0755 tor-state/onion-web
    ks_assert "tor starts (amnesic)" ks_tor_start
    ks_expect_rc 9 "unlock where tor refuses its state" -- keepsake unlock --key-file "$KS_PASS_FILE"
    ks_assert "the error says tor refused it" grep -q "tor refused its state" /tmp/ks-cmd.out
    ks_assert "tor is left stopped" test -z "$(ks_tor_pid)"
    ks_expect_rc 0 "status" -- keepsake status
    sed 's/^/KS-LOG status: /' /tmp/ks-cmd.out
    ks_assert "status shows tor stopped with its persistent state bound" grep -q "tor: stopped" /tmp/ks-cmd.out
    ks_expect_rc 0 "lock" -- keepsake lock
}

# Runs a command on a path inside the locked volume, through the cryptsetup CLI.
ks_volume_do() {
    cryptsetup open --key-file "$KS_PASS_FILE" /dev/vda2 plant || ks_fail "open the volume"
    mkdir -p /mnt/plant && mount /dev/mapper/plant /mnt/plant
    local cmd=$1 arg=$2 path=$3
    $cmd $arg "/mnt/plant/$path"
    umount /mnt/plant && cryptsetup close plant
}
