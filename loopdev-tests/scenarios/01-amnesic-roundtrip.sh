# create → unlock → write into the Persistent folder → lock → reboot (a new tmpfs root, as
# an amnesic system has) → unlock → the files, owners and modes are all back.

host_main() {
    ks_set passphrase "roundtrip $(ks_random)"
    ks_phase first_boot || return 1
    ks_phase second_boot || return 1
    [ -n "$(ks_get manifest)" ] && [ "$(ks_get manifest)" = "$(ks_get manifest_after_reboot)" ] \
        && ks_host_ok "manifest identical across the reboot" \
        || ks_host_fail "manifest differs: $(ks_get manifest) vs $(ks_get manifest_after_reboot)"
}

guest_first_boot() {
    ks_disk_fs usb /media/usb format
    ks_pass_file
    ks_expect_rc 0 "create a 64 MiB container" -- \
        ks_timed create keepsake create --image "$KS_IMAGE" --size 64M --key-file "$KS_PASS_FILE" $KS_KDF
    ks_assert_eq "container file mode" "$(ks_mode "$KS_IMAGE")" "0:0 600"
    ks_expect_rc 0 "unlock" -- ks_timed unlock keepsake unlock --image "$KS_IMAGE" --key-file "$KS_PASS_FILE"
    ks_assert "mapping /dev/mapper/TailsData_unlocked exists" test -b /dev/mapper/TailsData_unlocked
    ks_assert_eq "filesystem label" "$(dd if=/dev/mapper/TailsData_unlocked bs=1 skip=1144 count=16 2>/dev/null | tr -d '\0')" TailsData
    # As Tails writes it, with the features Tails enables on a new volume.
    ks_assert_eq "persistence.conf owner and mode (Tails' account)" "$(ks_mode $KS_ROOT_MNT/persistence.conf)" "115:122 600"
    ks_assert_eq "persistence.conf content" "$(cat $KS_ROOT_MNT/persistence.conf)" "$(printf '/home/amnesia/Persistent\tsource=Persistent\n/var/cache/apt/archives\tsource=apt/cache\n/var/lib/apt/lists\tsource=apt/lists')"
    ks_assert_eq "mount root owner and mode" "$(ks_mode $KS_ROOT_MNT)" "0:0 770"
    ks_assert "Persistent folder is bind-mounted nosuid" ks_has_opt "$KS_PERSISTENT" nosuid
    ks_assert "Persistent folder is bind-mounted nodev" ks_has_opt "$KS_PERSISTENT" nodev
    ks_assert_eq "Persistent folder owner and mode" "$(ks_mode $KS_PERSISTENT)" "1000:1000 700"
    ks_expect_rc 0 "status" -- keepsake status
    keepsake status --json > /tmp/status.json
    ks_assert "status --json says unlocked" grep -q '"unlocked": true' /tmp/status.json
    ks_assert "status --json shows the feature active" grep -q '"active": true' /tmp/status.json

    # Files of several kinds, owned by the live user.
    local p=$KS_PERSISTENT
    echo "a private note" > $p/note.txt && chmod 0600 $p/note.txt
    printf '#!/bin/sh\necho hi\n' > $p/script.sh && chmod 0755 $p/script.sh
    mkdir -m 0700 $p/sub && head -c 100000 /dev/urandom > $p/sub/random.bin
    ln -s note.txt $p/link
    touch $p/empty && chmod 0640 $p/empty
    chown -hR 1000:1000 $p/note.txt $p/script.sh $p/sub $p/link $p/empty
    ks_expect_rc 0 "the live user sees the files" -- ls -la $p
    ks_manifest $p | sed 's/^/KS-LOG manifest: /'
    ks_out manifest "$(ks_manifest $p | sha256sum | cut -c1-64)"

    ks_expect_rc 0 "lock" -- ks_timed lock keepsake lock
    ks_lock_is_clean
    umount /media/usb
}

guest_second_boot() {
    ks_assert "the new session starts without the Persistent folder" test ! -e "$KS_PERSISTENT"
    ks_disk_fs usb /media/usb
    ks_pass_file
    ks_expect_rc 0 "unlock after the reboot" -- ks_timed unlock2 keepsake unlock --image "$KS_IMAGE" --key-file "$KS_PASS_FILE"
    ks_expect_rc 0 "the files are back" -- ls -la $KS_PERSISTENT
    ks_manifest $KS_PERSISTENT | sed 's/^/KS-LOG manifest: /'
    ks_out manifest_after_reboot "$(ks_manifest $KS_PERSISTENT | sha256sum | cut -c1-64)"
    ks_assert_eq "note content" "$(cat $KS_PERSISTENT/note.txt)" "a private note"
    ks_expect_rc 0 "lock" -- keepsake lock
    ks_lock_is_clean
}
