# A volume the system unlocked at boot is keepsake's to show, change and lock. Tails'
# Welcome Screen and live-boot's initramfs are played here by plain cryptsetup, mount,
# mount --bind, ln -s and an overlay mount, with their names (TailsData_unlocked at
# /live/persistence/TailsData_unlocked; sdb2 or loopN at /run/live/persistence/<name>);
# keepsake must find them from the kernel's tables, run feature enable/disable on them, and
# lock takes binds, links, unions, mounts, mappings and live-boot's loop device away. And
# unlock finds a volume as live-boot does: an MBR stick with a LUKS partition whose ext4 is
# labelled persistence (the Debian Live manual's recipe), and a container file named
# persistence (mapped as loopN).

host_main() {
    ks_set passphrase "adopt $(ks_random)"
    local usb mbr data
    usb=$(ks_live_stick usb 160M) || return 1
    mbr=$(ks_disk mbr 160M) || return 1
    printf 'label: dos\nstart=2048, size=32MiB, type=c\nstart=67584, type=83\n' | sfdisk -q "$mbr" >/dev/null || return 1
    data=$(ks_gpt_disk data 128M) || return 1
    ks_phase checks "usb=$usb" "mbr=$mbr" "data=$data"
}

LB=/run/live/persistence

# tails_boot: what Tails' Welcome Screen does with the TailsData partition vda2.
tails_boot() {
    cryptsetup open --key-file "$KS_PASS_FILE" /dev/vda2 TailsData_unlocked || ks_fail "open as Tails"
    mkdir -p $KS_ROOT_MNT && mount -o acl /dev/mapper/TailsData_unlocked $KS_ROOT_MNT || ks_fail "mount as Tails"
    mkdir -p $KS_PERSISTENT && mount --bind $KS_ROOT_MNT/Persistent $KS_PERSISTENT || ks_fail "bind as Tails"
    ln -s $KS_ROOT_MNT/dotfiles/.kstest /home/amnesia/.kstest || ks_fail "link as Tails"
}

# live_boot_open DEVICE NAME: live-boot's open_luks_device and mount of a volume.
live_boot_open() {
    cryptsetup open --key-file "$KS_PASS_FILE" "$1" "$2" || ks_fail "open $1 as $2"
    mkdir -p $LB/$2 && mount /dev/mapper/$2 $LB/$2 || ks_fail "mount $2 as live-boot"
}

# make_luks_ext4 DEVICE: the Debian Live manual's recipe (luksFormat, mkfs.ext4 -L persistence).
make_luks_ext4() {
    cryptsetup luksFormat -q --type luks2 --pbkdf argon2id --pbkdf-memory 8192 --pbkdf-force-iterations 4 \
        --key-file "$KS_PASS_FILE" "$1" || ks_fail "luksFormat $1"
    cryptsetup open --key-file "$KS_PASS_FILE" "$1" manual && mkfs.ext4 -q -F -L persistence /dev/mapper/manual || ks_fail "mkfs on $1"
    mkdir -p /mnt/m && mount /dev/mapper/manual /mnt/m
    printf '%s\n' "$2" > /mnt/m/persistence.conf && chmod 0600 /mnt/m/persistence.conf
    mkdir -p /mnt/m/Documents /mnt/m/links /mnt/m/Music/rw /mnt/m/Music/work
    echo "doc" > /mnt/m/Documents/doc.txt
    echo "rc" > /mnt/m/links/.lbtest
    chown -R 1000:1000 /mnt/m/Documents /mnt/m/links /mnt/m/Music
    umount /mnt/m && cryptsetup close manual
}

LB_CONF="$(printf '/home/amnesia/Documents\tsource=Documents\n/home/amnesia\tsource=links,link')"

guest_checks() {
    mkfs.ext4 -q /dev/vda1 && mkfs.ext4 -q /dev/vdb1 && mkfs.ext4 -q /dev/vdc1
    ks_live_session
    ks_pass_file

    # --- Tails: unlocked by the Welcome Screen -------------------------------------------
    ks_expect_rc 0 "create a Tails volume" -- keepsake create --device /dev/vda --yes --key-file "$KS_PASS_FILE" $KS_KDF
    cryptsetup open --key-file "$KS_PASS_FILE" /dev/vda2 prep && mkdir -p /mnt/p && mount /dev/mapper/prep /mnt/p
    printf '/home/amnesia/Persistent\tsource=Persistent\n/home/amnesia\tsource=dotfiles,link\n' > /mnt/p/persistence.conf
    chmod 0600 /mnt/p/persistence.conf
    mkdir -p /mnt/p/Persistent /mnt/p/dotfiles && echo tails > /mnt/p/dotfiles/.kstest && chown -R 1000:1000 /mnt/p/dotfiles
    umount /mnt/p && cryptsetup close prep
    tails_boot
    ks_assert "no keepsake record: the system opened it" test ! -e /run/keepsake/tails.json
    ks_expect_rc 0 "status sees the volume Tails opened" -- keepsake --json status
    cp /tmp/ks-cmd.out /tmp/tails-status.json
    ks_assert "unlocked" grep -q '"unlocked": true' /tmp/tails-status.json
    ks_assert "as opened at boot, in the Tails layout" grep -q '"opened_at_boot": true' /tmp/tails-status.json
    ks_assert "with its mapping" grep -q '"mapping": "TailsData_unlocked"' /tmp/tails-status.json
    # features are listed at the top level and again under "volumes".
    ks_assert_eq "both lines active (bind and link)" "$(grep -c '"active": true' /tmp/tails-status.json)" 4
    ks_expect_rc 4 "lock with the other layout refuses, naming the Tails volume" -- keepsake --layout live-boot lock
    ks_assert "the message says which layout" grep -q "TailsData_unlocked (Tails layout" /tmp/ks-cmd.out
    ks_assert "and nothing was changed" test -b /dev/mapper/TailsData_unlocked
    ks_expect_rc 0 "feature enable on it" -- keepsake feature enable gnupg
    ks_assert "gnupg is bound" grep -q " /home/amnesia/.gnupg " /proc/self/mountinfo
    ks_expect_rc 0 "feature disable on it" -- keepsake feature disable gnupg
    ks_assert "gnupg is unbound" ks_not_mounted /home/amnesia/.gnupg
    ks_expect_rc 0 "lock takes it away" -- keepsake --json lock
    ks_assert "reported as opened at boot" grep -q '"opened_at_boot": true' /tmp/ks-cmd.out
    ks_lock_is_clean
    ks_assert "Tails' dotfile link is gone" test ! -L /home/amnesia/.kstest

    # --- unlock finds a volume as live-boot does: MBR stick, ext4 label inside LUKS ------
    make_luks_ext4 /dev/vdb2 "$LB_CONF"
    ks_expect_rc 3 "a wrong passphrase opens none of the LUKS devices" -- sh -c "printf wrong | keepsake --layout live-boot unlock --passphrase-fd 0"
    ks_assert "and leaves no mapping" ks_no_mapping
    ks_expect_rc 0 "unlock without --device finds the manual's volume" -- keepsake --layout live-boot --json unlock --key-file "$KS_PASS_FILE"
    cp /tmp/ks-cmd.out /tmp/found.json
    ks_assert "as /dev/mapper/vdb2" test -b /dev/mapper/vdb2
    ks_assert "mounted at $LB/vdb2" grep -q " $LB/vdb2 " /proc/self/mountinfo
    ks_assert "the Tails partition was tried (same passphrase) and closed again" grep -q 'its ext4 label is TailsData; closed again' /tmp/found.json
    ks_assert_eq "only the persistence volume stays open" "$(ls /sys/block | grep -c '^dm-')" 1
    ks_assert_eq "its Documents are bound" "$(cat /home/amnesia/Documents/doc.txt)" doc
    ks_expect_rc 0 "lock" -- keepsake --layout live-boot lock
    ks_assert "no mapping remains" ks_no_mapping

    # --- live-boot: two volumes opened at boot, a partition and a container file ---------
    live_boot_open /dev/vdb2 vdb2
    mkdir -p /home/amnesia/Documents && mount --bind $LB/vdb2/Documents /home/amnesia/Documents
    ln -s $LB/vdb2/links/.lbtest /home/amnesia/.lbtest
    mkdir -p /home/amnesia/Music
    mount -t overlay overlay -o lowerdir=/home/amnesia/Music,upperdir=$LB/vdb2/Music/rw,workdir=$LB/vdb2/Music/work /home/amnesia/Music \
        || ks_fail "union as live-boot"
    mkdir -p /media/data && mount /dev/vdc1 /media/data
    truncate -s 64M /media/data/persistence
    local lo
    lo=$(losetup -f) && losetup "$lo" /media/data/persistence || ks_fail "losetup as live-boot"
    make_luks_ext4 "$lo" "$(printf '/home/amnesia/Pictures\tsource=Pictures')"
    live_boot_open "$lo" "${lo#/dev/}"
    mkdir -p $LB/${lo#/dev/}/Pictures /home/amnesia/Pictures && mount --bind $LB/${lo#/dev/}/Pictures /home/amnesia/Pictures
    ks_expect_rc 0 "status lists both" -- keepsake --layout live-boot --json status
    cp /tmp/ks-cmd.out /tmp/lb-status.json
    # "volume" repeats the first of "volumes".
    ks_assert_eq "two volumes opened at boot" "$(grep -c '"opened_at_boot": true' /tmp/lb-status.json)" 3
    ks_assert "the container file's mapping" grep -q "\"mapping\": \"${lo#/dev/}\"" /tmp/lb-status.json
    ks_assert "the partition's" grep -q '"mapping": "vdb2"' /tmp/lb-status.json
    ks_expect_rc 2 "feature enable wants one volume" -- keepsake --layout live-boot feature enable gnupg
    ks_expect_rc 0 "lock --device takes only the container file's" -- keepsake --layout live-boot lock --device /media/data/persistence
    ks_assert "its loop device is released" sh -c "! grep -qx /media/data/persistence /sys/block/loop*/loop/backing_file"
    ks_assert "Pictures is unbound" ks_not_mounted /home/amnesia/Pictures
    ks_assert "vdb2 stays" test -b /dev/mapper/vdb2
    ks_expect_rc 0 "feature enable on the one left" -- keepsake --layout live-boot feature enable gnupg
    ks_assert "gnupg is bound" grep -q " /home/amnesia/.gnupg " /proc/self/mountinfo
    ks_expect_rc 0 "feature disable" -- keepsake --layout live-boot feature disable gnupg
    ks_assert "gnupg is unbound" ks_not_mounted /home/amnesia/.gnupg
    ks_expect_rc 0 "lock takes binds, links and the union away" -- keepsake --layout live-boot lock
    ks_assert "no mapping remains" ks_no_mapping
    ks_assert "the union is gone" ks_not_mounted /home/amnesia/Music
    ks_assert "Documents is unbound" ks_not_mounted /home/amnesia/Documents
    ks_assert "the link is gone" test ! -L /home/amnesia/.lbtest
    ks_assert "the volume is unmounted" ks_not_mounted $LB/vdb2

    # --- unlock finds the container file by its name, and maps it as live-boot would ----
    ks_expect_rc 0 "unlock finds the container file named persistence" -- keepsake --layout live-boot unlock --key-file "$KS_PASS_FILE"
    local mapped
    mapped=$(grep -lx /media/data/persistence /sys/block/loop*/loop/backing_file | head -n 1 | cut -d/ -f4)
    ks_log "the container file is on $mapped"
    ks_assert "mapped as /dev/mapper/loopN, named after its loop device" test -b "/dev/mapper/$mapped"
    ks_assert "mounted at $LB/loopN" grep -q " $LB/$mapped " /proc/self/mountinfo
    ks_expect_rc 0 "lock" -- keepsake --layout live-boot lock
    ks_assert "no mapping remains" ks_no_mapping
    ks_assert "no loop device is attached" ks_no_loop_in_use

    # --- ... but not one the live user could have written, before a device (issue 24) ----
    # The same container, now the live user's file: live-boot would still take it first;
    # keepsake takes the LUKS partition labelled persistence (vdb2), and says why.
    chown 1000:1000 /media/data/persistence
    ks_expect_rc 0 "unlock takes the device over the live user's container file" -- keepsake --layout live-boot unlock --key-file "$KS_PASS_FILE"
    ks_assert "vdb2 is open" test -b /dev/mapper/vdb2
    ks_assert "the container file is on no loop device" sh -c "! grep -qx /media/data/persistence /sys/block/loop*/loop/backing_file"
    ks_assert "it says which it took and why" grep -q "took /dev/vdb2, a device, over the container file /media/data/persistence (someone other than root could have written it" /tmp/ks-cmd.out
    ks_expect_rc 0 "lock" -- keepsake --layout live-boot lock
    ks_assert "no mapping remains" ks_no_mapping
}
