# keepsake upgrade on a LUKS1 volume with a PBKDF2 keyslot, made by the cryptsetup CLI as
# older Tails made them: --dry-run changes nothing, refusals change nothing, the upgrade
# gives LUKS2 + argon2id and the same passphrase opens the same data. Then power cuts at
# random moments during upgrades (with --header-backup on a second disk, as the help
# advises): every time, the volume opens with its passphrase, directly or, when the cut
# fell inside libcryptsetup's in-place LUKS1 -> LUKS2 conversion, after restoring that
# backup. The tally says how many needed it.
#
# KS_UPGRADE_CUTS (default 6) sets the number of cut upgrades.

host_main() {
    local cuts=${KS_UPGRADE_CUTS:-6} old backup c ms opened=0 restored=0 state
    ks_set passphrase "old-$(ks_random)"
    old=$(ks_disk old 64M)
    backup=$(ks_disk backup 16M)
    ks_phase upgrade "old=$old" || return 1
    for c in $(seq 1 "$cuts"); do
        ms=$((RANDOM % 1200))
        KS_KILL_AFTER_MS=$ms ks_phase "cut.$c" "old=$old" "backup=$backup" >/dev/null 2>>"$KS_SCEN_DIR/qemu-killed.log"
        ks_phase "after.$c" "old=$old" "backup=$backup" >"$KS_SCEN_DIR/after.out" || { cat "$KS_SCEN_DIR/after.out"; return 1; }
        state=$(tr -d '\r' < "$KS_SCEN_DIR/after.$c.log" | sed -n 's/^KS-LOG state: //p')
        ks_host_ok "upgrade cut at ${ms} ms: $state"
        opened=$((opened + 1))
        case $state in *"header backup"*) restored=$((restored + 1)) ;; esac
    done
    ks_host_ok "tally: $opened of $cuts cut upgrades opened with their passphrase ($restored after restoring the header backup), then upgraded and unlocked"
}

# A LUKS1 volume as Tails < 5.13 made it: PBKDF2 keyslot, ext4 TailsData, persistence.conf.
ks_make_luks1() {
    cryptsetup luksFormat -q --type luks1 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
        --key-file "$KS_PASS_FILE" "$1" || ks_fail "luksFormat --type luks1"
    cryptsetup open --key-file "$KS_PASS_FILE" "$1" mk || ks_fail "open"
    mkfs.ext4 -q -L TailsData /dev/mapper/mk && mkdir -p /mnt/mk && mount /dev/mapper/mk /mnt/mk
    printf '/home/amnesia/Persistent\tsource=Persistent\n' > /mnt/mk/persistence.conf
    chmod 0600 /mnt/mk/persistence.conf
    mkdir -m 0700 /mnt/mk/Persistent && echo "from 2022" > /mnt/mk/Persistent/old.txt
    chown -R 1000:1000 /mnt/mk/Persistent
    umount /mnt/mk && cryptsetup close mk
}

ks_version() { cryptsetup luksDump "$1" 2>/dev/null | awk '/^Version:/ {print $2}'; }
ks_pbkdfs() {
    if [ "$(ks_version "$1")" = 1 ]; then echo "pbkdf2 "; return; fi
    cryptsetup luksDump "$1" | awk '/PBKDF:/ {print $2}' | sort -u | tr '\n' ' '
}
ks_hash() { head -c 4194304 "$1" | sha256sum | cut -c1-64; }

guest_upgrade() {
    ks_pass_file
    local dev=/dev/disk/by-serial/old h
    ks_make_luks1 $dev
    ks_assert_eq "made LUKS1" "$(ks_version $dev)" 1
    h=$(ks_hash $dev)
    ks_expect_rc 0 "upgrade --dry-run" -- keepsake --json upgrade --dry-run --device $dev
    ks_assert "the plan converts to LUKS2" grep -q '"convert_to_luks2": true' /tmp/ks-cmd.out
    ks_assert_eq "--dry-run changed nothing" "$(ks_hash $dev)" "$h"
    printf 'wrong' > /tmp/wrong
    ks_expect_rc 3 "upgrade with a wrong passphrase" -- keepsake upgrade --device $dev --key-file /tmp/wrong $KS_KDF
    ks_assert_eq "nothing changed" "$(ks_hash $dev)" "$h"
    cryptsetup open --key-file "$KS_PASS_FILE" $dev busy
    ks_expect_rc 5 "upgrade while the volume is open" -- keepsake upgrade --device $dev --key-file "$KS_PASS_FILE" $KS_KDF
    cryptsetup close busy
    ks_assert_eq "nothing changed" "$(ks_hash $dev)" "$h"
    ks_expect_rc 0 "upgrade" -- ks_timed upgrade keepsake upgrade --device $dev --key-file "$KS_PASS_FILE" $KS_KDF
    ks_assert_eq "now LUKS2" "$(ks_version $dev)" 2
    ks_assert_eq "with an argon2id keyslot" "$(ks_pbkdfs $dev)" "argon2id "
    ks_assert "no header backup is left in /run/keepsake" sh -c "! ls /run/keepsake | grep -q header-backup"
    ks_expect_rc 0 "upgrade again: nothing to do" -- keepsake upgrade --device $dev --key-file "$KS_PASS_FILE"
    ks_assert "it says so" grep -q "is up to date" /tmp/ks-cmd.out
    ks_expect_rc 0 "unlock with the same passphrase" -- keepsake unlock --device $dev --key-file "$KS_PASS_FILE"
    ks_assert_eq "the old data is there" "$(cat $KS_PERSISTENT/old.txt)" "from 2022"
    ks_expect_rc 0 "lock" -- keepsake lock
}

guest_cut() {
    ks_pass_file
    ks_make_luks1 /dev/disk/by-serial/old
    ks_disk_fs backup /media/backup format
    sync
    echo "KS-WRITING"
    keepsake upgrade --device /dev/disk/by-serial/old --key-file "$KS_PASS_FILE" $KS_KDF \
        --header-backup /media/backup/header.img
    echo "KS-LOG upgrade finished before the cut"
    sleep 60
}

guest_after() {
    ks_pass_file
    local dev=/dev/disk/by-serial/old how="opened with its passphrase"
    if ! cryptsetup open --test-passphrase --key-file "$KS_PASS_FILE" $dev 2>/dev/null; then
        ks_disk_fs backup /media/backup
        ks_assert "the header backup was written before the cut" test -s /media/backup/header.img
        ks_expect_rc 0 "restore the header backup" -- cryptsetup luksHeaderRestore -q --header-backup-file /media/backup/header.img $dev
        how="opened with its passphrase after restoring the header backup"
    fi
    ks_expect_rc 0 "the passphrase opens the volume" -- cryptsetup open --test-passphrase --key-file "$KS_PASS_FILE" $dev
    echo "KS-LOG state: LUKS$(ks_version $dev) ($(ks_pbkdfs $dev | sed 's/ $//')) after the cut, $how"
    ks_expect_rc 0 "upgrade completes" -- keepsake upgrade --device $dev --key-file "$KS_PASS_FILE" $KS_KDF
    ks_expect_rc 0 "unlock" -- keepsake unlock --device $dev --key-file "$KS_PASS_FILE"
    ks_assert_eq "the data is there" "$(cat $KS_PERSISTENT/old.txt)" "from 2022"
    ks_expect_rc 0 "lock" -- keepsake lock
}
