# Interoperability with the two layouts keepsake speaks. A stick laid out exactly as Tails
# lays out Persistent Storage (made here with the cryptsetup CLI: TailsData partition of
# Tails' type, argon2id with 4 forced iterations, persistence.conf owned by Tails'
# tails-persistent-storage account, dotfiles as links) unlocks without arguments and keeps
# its owners; and the live-boot layout names, maps and mounts the volume as live-boot does.

host_main() {
    ks_set passphrase "tails $(ks_random)"
    local usb other
    usb=$(ks_live_stick usb 320M) || return 1
    other=$(ks_live_stick other 320M) || return 1
    ks_phase checks "usb=$usb" "other=$other"
}

TAILS_CONF='/home/amnesia/Persistent	source=Persistent
/home/amnesia/.mozilla/firefox/bookmarks	source=bookmarks
/etc/NetworkManager/system-connections	source=nm-system-connections
/var/cache/apt/archives	source=apt/cache
/var/lib/apt/lists	source=apt/lists
/etc/cups	source=cups-configuration
/home/amnesia/.gnupg	source=gnupg
/home/amnesia/.ssh	source=openssh-client
/home/amnesia	source=dotfiles,link
/var/lib/tca	source=tca'

guest_checks() {
    mkfs.ext4 -q /dev/vda1 && mkfs.ext4 -q /dev/vdb1
    ks_live_session
    ks_pass_file
    # Tails' steps: a TailsData partition after the system, LUKS2 argon2id, ext4 TailsData.
    printf 'type=8DA63339-0007-60C0-C436-083AC8230908, name="TailsData"\n' | sfdisk -q --append --no-reread /dev/vda \
        || ks_fail "partition as Tails does"
    [ -b /dev/vda2 ] || partx --add --nr 2 /dev/vda || ks_fail "tell the kernel"
    cryptsetup luksFormat -q --type luks2 --pbkdf argon2id --pbkdf-memory 8192 --pbkdf-force-iterations 4 \
        --key-file "$KS_PASS_FILE" /dev/vda2 || ks_fail "luksFormat as Tails does"
    cryptsetup open --key-file "$KS_PASS_FILE" /dev/vda2 tails && mkfs.ext4 -q -F -L TailsData /dev/mapper/tails || ks_fail "mkfs"
    mkdir -p /mnt/t && mount /dev/mapper/tails /mnt/t
    chmod 0770 /mnt/t
    echo "$TAILS_CONF" > /mnt/t/persistence.conf
    chown 115:122 /mnt/t/persistence.conf && chmod 0600 /mnt/t/persistence.conf
    mkdir -m 0700 /mnt/t/Persistent /mnt/t/dotfiles /mnt/t/gnupg
    echo "tails data" > /mnt/t/Persistent/note
    echo "alias tails=yes" > /mnt/t/dotfiles/.bashrc
    echo "pubring" > /mnt/t/gnupg/pubring.kbx
    chown -R 1000:1000 /mnt/t/Persistent /mnt/t/dotfiles /mnt/t/gnupg
    umount /mnt/t && cryptsetup close tails
    # The session's own .bashrc, as /etc/skel gives every live user.
    echo "# skel" > /home/amnesia/.bashrc && chown 1000:1000 /home/amnesia/.bashrc

    ks_expect_rc 0 "keepsake unlocks the Tails stick without arguments" -- ks_timed unlock_tails keepsake unlock --key-file "$KS_PASS_FILE"
    ks_assert "as TailsData_unlocked" test -b /dev/mapper/TailsData_unlocked
    ks_assert_eq "the Persistent folder" "$(cat $KS_PERSISTENT/note)" "tails data"
    ks_assert_eq "GnuPG" "$(cat /home/amnesia/.gnupg/pubring.kbx)" "pubring"
    ks_assert_eq "the dotfile replaced the session's .bashrc by a link" "$(readlink /home/amnesia/.bashrc)" "$KS_ROOT_MNT/dotfiles/.bashrc"
    ks_assert "no displaced copy is left" test -z "$(ls -a /home/amnesia | grep displaced)"
    ks_assert "cups' default files were copied into the new folder" test -f $KS_ROOT_MNT/cups-configuration/.keep-cups
    keepsake --json status > /tmp/status.json
    # Each feature is in "features" (the layout's volume) and in "volumes"[0]: twice.
    ks_assert_eq "every line of Tails' config is active" "$(grep -c '"active": true' /tmp/status.json)" 20
    ks_expect_rc 0 "enable a feature" -- keepsake feature enable electrum
    ks_assert_eq "persistence.conf keeps Tails' owner" "$(ks_mode $KS_ROOT_MNT/persistence.conf)" "115:122 600"
    ks_assert "and Tails' tab-separated syntax" grep -q "$(printf '^/home/amnesia/.electrum\tsource=electrum$')" $KS_ROOT_MNT/persistence.conf
    ks_expect_rc 0 "lock" -- keepsake lock
    ks_lock_is_clean
    ks_assert_eq "the session's .bashrc is gone with the link, as on Tails" "$(ls -a /home/amnesia | grep -c '^.bashrc$')" 0

    # live-boot: partition and label "persistence", mapped and mounted under the device name.
    ks_expect_rc 0 "create with the live-boot layout" -- keepsake --layout live-boot create --device /dev/vdb --yes --key-file "$KS_PASS_FILE" $KS_KDF
    ks_assert "the partition is named persistence" sh -c "sfdisk --json /dev/vdb | grep -q '\"name\": *\"persistence\"'"
    ks_expect_rc 0 "unlock with the live-boot layout" -- keepsake --layout live-boot unlock --device /dev/vdb --key-file "$KS_PASS_FILE"
    ks_assert "mapped as /dev/mapper/vdb2" test -b /dev/mapper/vdb2
    ks_assert "mounted at /run/live/persistence/vdb2" grep -q " /run/live/persistence/vdb2 " /proc/self/mountinfo
    ks_assert_eq "its filesystem label" "$(dd if=/dev/mapper/vdb2 bs=1 skip=1144 count=16 2>/dev/null | tr -d '\0')" persistence
    ks_expect_rc 0 "status with the live-boot layout" -- keepsake --layout live-boot status
    ks_assert "status finds it" grep -q "unlocked: vdb2" /tmp/ks-cmd.out
    ks_expect_rc 0 "lock with the live-boot layout" -- keepsake --layout live-boot lock
    ks_assert "no mapping remains" ks_no_mapping
}
