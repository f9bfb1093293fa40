# lock leaves no dm mapping, no mount, no loop device and no key in the keyring; a busy
# volume is not locked (and not harmed) without --force, and is with it.

host_main() {
    ks_set passphrase "clean $(ks_random)"
    ks_phase checks
}

guest_checks() {
    ks_disk_fs usb /media/usb format
    ks_pass_file
    ks_expect_rc 0 "create" -- keepsake create --image "$KS_IMAGE" --size 48M --key-file "$KS_PASS_FILE" $KS_KDF
    ks_expect_rc 0 "unlock" -- keepsake unlock --image "$KS_IMAGE" --key-file "$KS_PASS_FILE"
    grep cryptsetup /proc/keys | sed "s/^/KS-LOG keys: /"
    ks_assert "after unlock, no volume key of ours is in /proc/keys" ks_no_volume_key_in_keyring
    ks_assert "the loop device is backed by the image" grep -qx "$KS_IMAGE" /sys/block/loop*/loop/backing_file
    echo kept > $KS_PERSISTENT/kept.txt

    # A process of the live user working in the Persistent folder, another with a file open.
    /usr/bin/setpriv --reuid 1000 --regid 1000 --clear-groups sh -c "cd $KS_PERSISTENT && exec sleep 600" &
    local sleeper=$!
    sh -c "exec 3<$KS_PERSISTENT/kept.txt; exec sleep 600" &
    local reader=$!
    sleep 1
    ks_expect_rc 5 "lock while busy" -- keepsake lock
    ks_assert "the error names the process" grep -q "sleep (pid $sleeper: cwd)" /tmp/ks-cmd.out
    ks_assert "and the open file" grep -q "pid $reader: fd 3" /tmp/ks-cmd.out
    ks_assert "still mapped" test -b /dev/mapper/TailsData_unlocked
    ks_assert "still mounted" grep -q " $KS_PERSISTENT " /proc/self/mountinfo
    ks_assert_eq "data still there" "$(cat $KS_PERSISTENT/kept.txt)" kept
    ks_expect_rc 0 "lock --force" -- keepsake --json lock --force
    ks_assert "the report lists the ended processes" grep -q "\"pid\": $sleeper" /tmp/ks-cmd.out
    ks_assert "no leftovers reported" grep -q '"leftovers": \[\]' /tmp/ks-cmd.out
    ks_assert "the sleeper was ended" sh -c "! kill -0 $sleeper 2>/dev/null"
    wait 2>/dev/null
    ks_lock_is_clean
    ks_assert "the loop device was released" sh -c "! grep -qx '$KS_IMAGE' /sys/block/loop*/loop/backing_file"

    ks_expect_rc 0 "unlock again" -- keepsake unlock --image "$KS_IMAGE" --key-file "$KS_PASS_FILE"
    ks_assert_eq "data survived the forced lock" "$(cat $KS_PERSISTENT/kept.txt)" kept
    ks_expect_rc 0 "lock" -- keepsake lock
    ks_lock_is_clean

    # The device under the mapping gone from /dev (a stick pulled out, a udev rule): lock
    # still closes the mapping, which device-mapper's table is enough for.
    ks_expect_rc 0 "unlock once more" -- keepsake unlock --image "$KS_IMAGE" --key-file "$KS_PASS_FILE"
    local mapping under node
    mapping=$(stat -c '%t %T' /dev/mapper/TailsData_unlocked)
    under=$(ls "/sys/dev/block/$((0x${mapping% *})):$((0x${mapping#* }))/slaves")
    ks_assert "one device under the mapping" test -b "/dev/$under"
    node=$(stat -c '%t %T' "/dev/$under")
    rm "/dev/$under"
    ks_log "removed /dev/$under"
    ks_expect_rc 0 "lock with the device under the mapping gone from /dev" -- keepsake lock
    ks_lock_is_clean
    mknod "/dev/$under" b $((0x${node% *})) $((0x${node#* }))
}
