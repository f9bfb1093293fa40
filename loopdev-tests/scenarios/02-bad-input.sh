# A wrong passphrase, and other bad input: each gets its own exit code, and nothing on disk
# or in the kernel changes (the image hashes the same before and after).

host_main() {
    ks_set passphrase "right $(ks_random)"
    ks_phase checks
}

ks_image_hash() { sha256sum "$KS_IMAGE" | cut -c1-64; }

ks_nothing_opened() {
    ks_assert "no mapping" ks_no_mapping
    ks_assert "no loop device" ks_no_loop_in_use
    ks_assert "nothing mounted at the mount root" ks_not_mounted "$KS_ROOT_MNT"
}

guest_checks() {
    ks_disk_fs usb /media/usb format
    ks_pass_file
    ks_expect_rc 0 "create" -- keepsake create --image "$KS_IMAGE" --size 48M --key-file "$KS_PASS_FILE" $KS_KDF
    local before; before=$(ks_image_hash)

    printf 'wrong passphrase' > /tmp/wrong
    ks_expect_rc 3 "wrong passphrase (key file)" -- keepsake unlock --image "$KS_IMAGE" --key-file /tmp/wrong
    ks_assert "the error says so" grep -q "does not open any keyslot" /tmp/ks-cmd.out
    ks_nothing_opened
    ks_expect_rc 3 "wrong passphrase (fd)" -- sh -c "echo 'also wrong' | keepsake unlock --image $KS_IMAGE --passphrase-fd 0"
    ks_expect_rc 3 "the right passphrase with a trailing newline is another passphrase" -- \
        sh -c "{ cat $KS_PASS_FILE; echo; } > /tmp/nl && keepsake unlock --image $KS_IMAGE --key-file /tmp/nl"
    keepsake --json unlock --image "$KS_IMAGE" --key-file /tmp/wrong > /tmp/err.json 2>/dev/null
    ks_assert "--json error names the class" grep -q '"kind":"bad-passphrase"' /tmp/err.json
    ks_nothing_opened

    ks_expect_rc 2 "empty passphrase on fd" -- sh -c "echo | keepsake unlock --image $KS_IMAGE --passphrase-fd 0"
    ks_expect_rc 2 "closed passphrase fd" -- keepsake unlock --image "$KS_IMAGE" --passphrase-fd 7
    ks_expect_rc 2 "no terminal and no passphrase source" -- sh -c "keepsake unlock --image $KS_IMAGE </dev/null"
    ks_expect_rc 4 "missing image" -- keepsake unlock --image /media/usb/nope.img --key-file "$KS_PASS_FILE"
    ks_expect_rc 4 "missing key file" -- keepsake unlock --image "$KS_IMAGE" --key-file /nope
    head -c 20M /dev/zero > /media/usb/zeros.img
    ks_expect_rc 7 "a file without a LUKS header" -- keepsake unlock --image /media/usb/zeros.img --key-file "$KS_PASS_FILE"
    ks_expect_rc 2 "create over an existing file" -- keepsake create --image "$KS_IMAGE" --size 48M --key-file "$KS_PASS_FILE" $KS_KDF
    ks_expect_rc 2 "create too small" -- keepsake create --image /media/usb/small.img --size 1M --key-file "$KS_PASS_FILE" $KS_KDF
    ks_assert "the refused small image was not created" test ! -e /media/usb/small.img
    ks_expect_rc 4 "create in a missing folder" -- keepsake create --image /media/usb/no/dir.img --size 48M --key-file "$KS_PASS_FILE" $KS_KDF
    ks_expect_rc 2 "bad size" -- keepsake create --image /media/usb/x.img --size 12Q --key-file "$KS_PASS_FILE"
    ks_expect_rc 8 "not root" -- /usr/bin/setpriv --reuid 1000 --regid 1000 --clear-groups keepsake unlock --image "$KS_IMAGE" --key-file "$KS_PASS_FILE"
    ks_assert "the not-root error is clear" grep -q "must run as root" /tmp/ks-cmd.out
    ks_nothing_opened
    ks_assert_eq "image unchanged by all of the above" "$(ks_image_hash)" "$before"

    ks_expect_rc 0 "the right passphrase still opens it" -- keepsake unlock --image "$KS_IMAGE" --key-file "$KS_PASS_FILE"
    ks_expect_rc 5 "unlock twice is busy" -- keepsake unlock --image "$KS_IMAGE" --key-file "$KS_PASS_FILE"
    ks_expect_rc 0 "lock" -- keepsake lock
    ks_expect_rc 0 "lock again: nothing to do" -- keepsake lock
    ks_assert "and it says so" grep -q "nothing is unlocked" /tmp/ks-cmd.out
    ks_nothing_opened
}
