# A kernel without device-mapper, then one with device-mapper but without dm-crypt (the
# guest boots without those modules and has none to load): create, unlock, check and repair
# refuse up front with exit 6, naming what is missing and what to do, without reading the
# passphrase and without writing anything; the keyslot commands, which need neither, work.

host_main() {
    ks_set passphrase "no-dm $(ks_random)"
    KS_BOOT_ARGS="ks.nomod=dm-mod,dm-crypt" ks_phase no_device_mapper
    KS_BOOT_ARGS="ks.nomod=dm-crypt" ks_phase no_dm_crypt
}

# A LUKS2 container made with the cryptsetup CLI, which formats without device-mapper.
ks_nodm_volume() {
    ks_disk_fs usb /media/usb format
    ks_pass_file
    truncate -s 32M "$KS_IMAGE"
    cryptsetup luksFormat -q --type luks2 --pbkdf argon2id --pbkdf-memory 8192 \
        --pbkdf-force-iterations 4 --key-file "$KS_PASS_FILE" "$KS_IMAGE" || ks_fail "luksFormat"
}

# Runs keepsake with its passphrase on descriptor 4: a FIFO that is open and stays empty,
# so that a command that reads it waits until `timeout` ends it.
ks_held_passphrase() {
    local secs=$1; shift
    rm -f /tmp/held && mkfifo /tmp/held
    sh -c 'exec 4<>/tmp/held; exec timeout "$0" keepsake "$@" --passphrase-fd 4' "$secs" "$@"
}

# ks_refuses_up_front MISSING: each command that opens a mapping refuses at once.
ks_refuses_up_front() {
    local h c
    h=$(sha256sum < "$KS_IMAGE")
    for c in "create --image /media/usb/new.img --size 32M" "unlock --image $KS_IMAGE" \
        "check --image $KS_IMAGE" "repair --image $KS_IMAGE"; do
        # shellcheck disable=SC2086
        ks_expect_rc 6 "${c%% *}: refused before the passphrase is read" -- ks_held_passphrase 20 $c
        ks_assert "${c%% *}: says the kernel has no $1, and to modprobe dm_crypt or use the live system" \
            grep -q "needs the kernel's device-mapper with dm-crypt, and this kernel .* has no $1.*modprobe dm_crypt.*run keepsake on the live system" /tmp/ks-cmd.out
    done
    ks_assert "create made no file" test ! -e /media/usb/new.img
    ks_assert_eq "the volume is byte for byte as it was" "$(sha256sum < "$KS_IMAGE")" "$h"
    # Negative control: the held passphrase does stop a command that reads it.
    ks_expect_rc 143 "control: recovery-key add waits for the held passphrase" -- \
        ks_held_passphrase 3 recovery-key add --image "$KS_IMAGE" $KS_KDF
    ks_expect_rc 0 "recovery-key add works without a mapping" -- \
        keepsake recovery-key add --image "$KS_IMAGE" --key-file "$KS_PASS_FILE" $KS_KDF
}

guest_no_device_mapper() {
    ks_assert "the kernel has no device-mapper" sh -c '! grep -q device-mapper /proc/misc'
    ks_nodm_volume
    ks_refuses_up_front device-mapper
}

guest_no_dm_crypt() {
    ks_assert "device-mapper is loaded" grep -q device-mapper /proc/misc
    ks_assert "dm-crypt is not" test ! -e /sys/module/dm_crypt
    ks_nodm_volume
    ks_refuses_up_front "dm-crypt"
}
