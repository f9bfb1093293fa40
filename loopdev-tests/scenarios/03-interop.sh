# keepsake's volume opens with the cryptsetup CLI; a volume made with the cryptsetup CLI
# and a hand-written persistence.conf (Tails' syntax) unlocks with keepsake.

host_main() {
    ks_set passphrase "interop $(ks_random)"
    ks_phase checks
}

guest_checks() {
    ks_disk_fs usb /media/usb format
    ks_pass_file
    ks_expect_rc 0 "keepsake create" -- keepsake create --image "$KS_IMAGE" --size 48M --key-file "$KS_PASS_FILE" $KS_KDF
    cryptsetup luksDump "$KS_IMAGE" > /tmp/dump
    ks_assert "LUKS version 2" grep -q '^Version:[[:space:]]*2' /tmp/dump
    ks_assert "cipher aes-xts-plain64" grep -q 'cipher: aes-xts-plain64' /tmp/dump
    ks_assert "512-bit key" grep -q 'Cipher key:[[:space:]]*512 bits' /tmp/dump
    ks_assert "argon2id keyslot" grep -q 'PBKDF:[[:space:]]*argon2id' /tmp/dump
    ks_assert "LUKS2 label TailsData" grep -q '^Label:[[:space:]]*TailsData' /tmp/dump
    ks_expect_rc 0 "cryptsetup open" -- cryptsetup open --key-file "$KS_PASS_FILE" "$KS_IMAGE" plain
    mkdir -p /mnt/plain && mount /dev/mapper/plain /mnt/plain
    ks_assert "persistence.conf is there" test -f /mnt/plain/persistence.conf
    umount /mnt/plain
    ks_expect_rc 0 "cryptsetup close" -- cryptsetup close plain

    local other=/media/usb/cryptsetup-made.img
    truncate -s 48M $other
    ks_expect_rc 0 "cryptsetup luksFormat (LUKS2, argon2id)" -- cryptsetup luksFormat -q --type luks2 \
        --pbkdf argon2id --pbkdf-memory 8192 --pbkdf-force-iterations 4 --key-file "$KS_PASS_FILE" $other
    cryptsetup open --key-file "$KS_PASS_FILE" $other made || ks_fail "open the cryptsetup volume"
    mkfs.ext4 -q -L TailsData /dev/mapper/made
    mount /dev/mapper/made /mnt/plain
    printf '/home/amnesia/Persistent\tsource=Persistent\n' > /mnt/plain/persistence.conf
    chmod 0600 /mnt/plain/persistence.conf
    mkdir -m 0700 /mnt/plain/Persistent && echo "made by hand" > /mnt/plain/Persistent/hello
    chown -R 1000:1000 /mnt/plain/Persistent
    umount /mnt/plain && cryptsetup close made

    ks_expect_rc 0 "keepsake unlocks the cryptsetup-made volume" -- keepsake unlock --image $other --key-file "$KS_PASS_FILE"
    ks_assert_eq "its Persistent folder is bound" "$(cat $KS_PERSISTENT/hello)" "made by hand"
    ks_expect_rc 0 "lock" -- keepsake lock
    ks_lock_is_clean
}
