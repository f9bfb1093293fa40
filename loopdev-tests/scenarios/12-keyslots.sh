# The keyslot lifecycle on a boot stick: passphrase change, recovery key, check and
# repair, the KDF memory ceiling, and delete (crypto-erase). Every refusal leaves the
# header byte for byte as it was.

host_main() {
    ks_set passphrase "first-$(ks_random)"
    ks_set passphrase2 "second-$(ks_random)"
    local usb host
    usb=$(ks_live_stick usb 320M) || return 1
    host=$(ks_disk hostdisk 64M)
    ks_phase lifecycle "usb=$usb" "hostdisk=$host" || return 1
    # A volume whose KDF needs 1 GiB, made on the host (the VM has 768 MiB): refused before
    # the KDF runs, instead of the OOM killer ending keepsake half way.
    local big pass
    big=$(ks_disk big 32M); pass="$KS_SCEN_DIR/pass"
    ks_get_in passphrase | tr -d '\n' > "$pass"
    cryptsetup luksFormat -q --type luks2 --pbkdf argon2id --pbkdf-memory 1048576 \
        --pbkdf-force-iterations 4 --pbkdf-parallel 1 --key-file "$pass" "$big" || return 1
    rm -f "$pass"
    ks_phase afford "big=$big" || return 1
    # After delete, from the host: the partition is gone from the table, and the region
    # that held the header holds no LUKS magic (primary LUKS\xba\xbe, secondary SKUL\xba\xbe).
    local start
    start=$(ks_get header_start)
    if sfdisk -d "$usb" | grep -q "^${usb}2 "; then ks_host_fail "partition 2 still in the table"
    else ks_host_ok "the TailsData partition is gone from the partition table"; fi
    dd if="$usb" of="$KS_SCEN_DIR/old-header" bs=512 skip="$start" count=32768 status=none
    cryptsetup isLuks "$KS_SCEN_DIR/old-header" && ks_host_fail "cryptsetup isLuks still accepts the old header area" \
        || ks_host_ok "cryptsetup isLuks rejects the old header area"
    dd if="$host" of="$KS_SCEN_DIR/control-header" bs=1M count=16 status=none
    cryptsetup isLuks "$KS_SCEN_DIR/control-header" && ks_host_ok "negative control: isLuks accepts a header that was not deleted" \
        || ks_host_fail "isLuks rejects the control header"
    ks_expect_hits "LUKS magic where the header was" "$KS_SCEN_DIR/old-header" "hex:4c554b53babe" -eq 0
    ks_expect_hits "LUKS2 secondary magic where the header was" "$KS_SCEN_DIR/old-header" "hex:534b554cbabe" -eq 0
    ks_expect_hits "negative control: LUKS magic in the container volume's header" "$KS_SCEN_DIR/control-header" "hex:4c554b53babe" -ge 1
    rm -f "$KS_SCEN_DIR/old-header" "$KS_SCEN_DIR/control-header"
}

ks_second_pass_file() {
    (umask 077; sed -n 's/^passphrase2=//p' /run/ks-test/in | tail -n 1 | tr -d '\n' > /run/ks-test/pass2)
}

ks_header_hash() { head -c 16777216 /dev/vda2 | sha256sum | cut -c1-64; }

# Writes to the locked volume through the cryptsetup CLI, as an outside tool would.
ks_plant() {
    cryptsetup open --key-file "$1" /dev/vda2 plant || ks_fail "open the volume"
    mkdir -p /mnt/plant && mount /dev/mapper/plant /mnt/plant
    sh -c "$2"
    umount /mnt/plant && cryptsetup close plant
}

guest_lifecycle() {
    ks_live_session
    ks_pass_file
    ks_second_pass_file
    local a=$KS_PASS_FILE b=/run/ks-test/pass2 h
    ks_expect_rc 0 "create" -- keepsake create --device /dev/vda --yes --key-file $a $KS_KDF
    ks_expect_rc 0 "unlock" -- keepsake unlock --key-file $a
    echo "kept through everything" > $KS_PERSISTENT/note.txt
    ks_expect_rc 0 "lock" -- keepsake lock

    # Passphrase change.
    h=$(ks_header_hash)
    ks_expect_rc 3 "change with a wrong current passphrase" -- keepsake passphrase change --key-file $b --new-key-file $a $KS_KDF
    ks_expect_rc 2 "change to the same passphrase" -- keepsake passphrase change --key-file $a --new-key-file $a $KS_KDF
    ks_assert_eq "the header is unchanged after both refusals" "$(ks_header_hash)" "$h"
    ks_expect_rc 0 "change the passphrase" -- ks_timed passphrase_change keepsake passphrase change --key-file $a --new-key-file $b $KS_KDF
    ks_expect_rc 3 "the old passphrase no longer opens it" -- keepsake unlock --key-file $a
    ks_expect_rc 0 "the new one does" -- keepsake unlock --key-file $b
    ks_assert_eq "the data is there" "$(cat $KS_PERSISTENT/note.txt)" "kept through everything"
    ks_expect_rc 0 "passphrase change while unlocked" -- keepsake passphrase change --key-file $b --new-key-file $a $KS_KDF
    ks_expect_rc 0 "and back" -- keepsake passphrase change --key-file $a --new-key-file $b $KS_KDF

    # Recovery key.
    ks_expect_rc 0 "add a recovery key" -- ks_timed recovery_add keepsake --json recovery-key add --key-file $b $KS_KDF
    sed -n 's/.*"recovery_key": "\([^"]*\)".*/\1/p' /tmp/ks-cmd.out | tr -d '\n' > /run/ks-test/rk
    ks_assert "the recovery key is eight groups of five base32 characters" \
        grep -Eq '^[a-z2-7]{5}(-[a-z2-7]{5}){7}$' /run/ks-test/rk
    ks_expect_rc 0 "status" -- keepsake --json status
    ks_assert "status shows the recovery keyslot's role" grep -q '"role": "recovery"' /tmp/ks-cmd.out
    ks_assert "status shows the passphrase keyslot's role" grep -q '"role": "passphrase"' /tmp/ks-cmd.out
    ks_assert "status shows the KDF memory ceiling" grep -q '"default_max_memory_kib"' /tmp/ks-cmd.out
    ks_expect_rc 5 "a second recovery key is refused" -- keepsake recovery-key add --key-file $b $KS_KDF
    ks_expect_rc 0 "lock" -- keepsake lock
    tr 'a-z-' 'A-Z ' < /run/ks-test/rk > /run/ks-test/rk-typed
    ks_expect_rc 0 "unlock --recovery-key (typed in capitals, with spaces)" -- keepsake unlock --recovery-key --key-file /run/ks-test/rk-typed
    ks_expect_rc 0 "lock" -- keepsake lock
    ks_expect_rc 2 "unlock --recovery-key with a passphrase" -- keepsake unlock --recovery-key --key-file $b
    ks_expect_rc 2 "passphrase change with the recovery key as the current passphrase" -- keepsake passphrase change --key-file /run/ks-test/rk --new-key-file $a $KS_KDF
    ks_expect_rc 2 "remove the recovery key with itself" -- keepsake recovery-key remove --key-file /run/ks-test/rk
    ks_expect_rc 0 "remove the recovery key" -- keepsake recovery-key remove --key-file $b
    ks_expect_rc 3 "the recovery key no longer opens it" -- keepsake unlock --recovery-key --key-file /run/ks-test/rk
    ks_expect_rc 4 "removing it again" -- keepsake recovery-key remove --key-file $b

    # Check and repair.
    ks_expect_rc 0 "check a sound volume" -- ks_timed check keepsake check --key-file $b
    ks_assert "check says so" grep -q "all checks passed" /tmp/ks-cmd.out
    ks_expect_rc 0 "unlock" -- keepsake unlock --key-file $b
    ks_expect_rc 5 "check while unlocked" -- keepsake check --key-file $b
    ks_expect_rc 0 "lock" -- keepsake lock
    ks_plant $b "echo 'relative/dest source=x' >> /mnt/plant/persistence.conf; chmod 0644 /mnt/plant/persistence.conf"
    cryptsetup open --key-file $b /dev/vda2 plant && debugfs -w -R "sif /Persistent/note.txt links_count 7" /dev/mapper/plant >/dev/null 2>&1
    cryptsetup close plant
    h=$(ks_header_hash)
    ks_expect_rc 7 "check finds the planted damage" -- keepsake --json check --key-file $b
    ks_assert "it names the filesystem errors" grep -q "the filesystem has errors" /tmp/ks-cmd.out
    ks_assert "it names the config mode" grep -q "mode 0644" /tmp/ks-cmd.out
    # (after the three lines of a new Tails-layout volume)
    ks_assert "it names the bad line" grep -q "persistence.conf line 4" /tmp/ks-cmd.out
    ks_assert "--json output is one object" sh -c "[ \$(grep -c '^{' /tmp/ks-cmd.out) -eq 1 ]"
    ks_expect_rc 0 "repair" -- ks_timed repair keepsake repair --key-file $b
    sed 's/^/KS-LOG repair: /' /tmp/ks-cmd.out | grep "repaired:"
    ks_expect_rc 0 "check after repair" -- keepsake check --key-file $b
    ks_assert_eq "the header was never touched" "$(ks_header_hash)" "$h"
    ks_expect_rc 0 "unlock" -- keepsake unlock --key-file $b
    ks_assert_eq "user data survived the repair" "$(cat $KS_PERSISTENT/note.txt)" "kept through everything"
    ks_assert "the bad line was set aside, not deleted" grep -qx "relative/dest source=x" $KS_ROOT_MNT/persistence.conf.invalid-*
    ks_assert_eq "persistence.conf is Tails' 0600 again" "$(ks_mode $KS_ROOT_MNT/persistence.conf)" "115:122 600"
    ks_expect_rc 0 "lock" -- keepsake lock

    # The KDF memory ceiling, on volumes calibrated by libcryptsetup (no test cost): the
    # live-boot layout's default. (The Tails layout's default is Tails' own cost, checked in
    # a small guest by scenario 18.)
    local avail
    avail=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
    ks_expect_rc 0 "create with the calibrated KDF" -- ks_timed create_calibrated keepsake --layout live-boot create --image /tmp/cal.img --size 48M --key-file $a
    cryptsetup luksDump /tmp/cal.img > /tmp/dump.txt
    local mem
    mem=$(awk '/Memory:/ {print $2; exit}' /tmp/dump.txt)
    ks_log "calibrated argon2id memory: $mem KiB with $avail KiB available"
    ks_assert "argon2id memory <= half of the available RAM ($((avail / 2)) KiB)" test "$mem" -le $((avail / 2))
    ks_expect_rc 0 "unlock it (the calibrated cost)" -- ks_timed unlock_calibrated keepsake --layout live-boot unlock --image /tmp/cal.img --key-file $a --mount-root /run/cal
    ks_expect_rc 0 "lock" -- keepsake --layout live-boot lock
    ks_expect_rc 0 "passphrase change with --pbkdf-max-memory 40000" -- keepsake passphrase change --image /tmp/cal.img --key-file $a --new-key-file $b --pbkdf-max-memory 40000
    cryptsetup luksDump /tmp/cal.img > /tmp/dump.txt
    ks_assert "the new keyslot uses at most 40000 KiB" test "$(awk '/Memory:/ {print $2; exit}' /tmp/dump.txt)" -le 40000

    # Delete: refused without confirmation or while unlocked; then crypto-erase.
    cp /tmp/cal.img /tmp/cal-copy.img
    head -c 16777216 /tmp/cal.img > /tmp/control-header
    ks_expect_rc 2 "delete without --yes and without a terminal" -- setsid keepsake delete --image /tmp/cal.img </dev/null
    ks_assert "nothing changed" cmp -s /tmp/cal.img /tmp/cal-copy.img
    # A symlink standing for the container (one the live user could swap in) is refused.
    ln -s /tmp/cal-copy.img /tmp/cal-link.img
    ks_expect_rc 2 "delete through a symlink is refused" -- keepsake delete --image /tmp/cal-link.img --yes
    ks_assert "the file behind it is untouched" cmp -s /tmp/cal.img /tmp/cal-copy.img
    rm -f /tmp/cal-link.img
    ks_expect_rc 0 "delete a container volume" -- keepsake delete --image /tmp/cal.img --yes
    ks_assert "the file is gone" test ! -e /tmp/cal.img
    ks_out header_start "$(sfdisk -d /dev/vda | sed -n 's|^/dev/vda2 : start= *\([0-9]*\),.*|\1|p')"
    ks_expect_rc 0 "unlock" -- keepsake unlock --key-file $b
    ks_expect_rc 5 "delete while unlocked" -- keepsake delete --device /dev/vda2 --yes
    ks_expect_rc 0 "lock" -- keepsake lock
    ks_expect_rc 0 "delete the stick's volume" -- ks_timed delete keepsake delete --device /dev/vda2 --yes
    ks_assert "the partition node is gone" test ! -e /dev/vda2
    ks_expect_rc 4 "unlock finds nothing any more" -- keepsake unlock --key-file $b
    # The control for the host's magic scan: the copy of the container volume's header.
    dd if=/tmp/control-header of=/dev/disk/by-serial/hostdisk bs=1M conv=fsync 2>/dev/null
}

guest_afford() {
    ks_pass_file
    ks_expect_rc 6 "unlock a volume whose KDF needs more memory than is available" -- \
        keepsake unlock --device /dev/disk/by-serial/big --key-file "$KS_PASS_FILE"
    ks_assert "the error says how much it needs" grep -q "needs 1024 MiB of memory" /tmp/ks-cmd.out
    ks_assert "no mapping was made" ks_no_mapping
}
