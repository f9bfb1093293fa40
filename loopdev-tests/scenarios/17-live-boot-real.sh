# live-boot, with live-boot's own code (Debian 12's live-boot 1:20230131, lib/liveboot.sh),
# for what a real boot cannot show without stopping: keepsake refuses nested sources, which
# live-boot's get_custom_mounts really panics on. (live-boot's boot-time unlock of volumes
# keepsake made, a GPT partition and a container file named `persistence`, with binds,
# nested binds, links and a union, and keepsake adopting and locking them, is scenario 21 on
# a real Debian live system; it was checked here with live-boot's functions sourced under
# busybox before.) keepsake opens volumes laid out
# by hand as the Debian Live manual shows (MBR and whole-disk LUKS2, ext4 label
# `persistence`, a 0644 persistence.conf with union, links, nested destinations and `/ union`)
# with live-boot's meaning, and leaves them as live-boot accepts them; a config live-boot
# would panic on is refused by keepsake and reported when read, and the panic is real.

host_main() {
    ks_set passphrase "live-boot $(ks_random)"
    local usb mbr whole
    usb=$(ks_live_stick usb 320M) || return 1
    ks_phase nested_sources "usb=$usb"
    # The manual's stick: an MBR partition table, one partition.
    mbr=$(ks_disk mbr 160M)
    printf 'label: dos\nstart=2048, type=83\n' | sfdisk -q "$mbr" >/dev/null || return 1
    ks_phase hand_made "usb=$(ks_live_stick usb2 96M)" "mbr=$mbr"
    # Full persistence, `/ union`, on a disk without a partition table.
    whole=$(ks_disk whole 96M)
    ks_phase full_union "usb=$(ks_live_stick usb3 96M)" "whole=$whole"
}

LB_KS="keepsake --layout live-boot"
LB_KDF="--pbkdf argon2id --pbkdf-memory 8192 --pbkdf-force-iterations 4"

lb_conf_log() { sed "s/^/KS-LOG $2: /" "$1"; }
lb_hash() { sha256sum < "$1" | cut -c1-16; }
# The hash of a device's first 16 MiB (a LUKS2 header and its keyslots); busybox head
# takes no size suffix.
lb_head_hash() { head -c 16777216 "$1" | sha256sum | cut -c1-16; }

# Everything that live-boot or keepsake may have left, taken away by hand (so that a failed
# lock does not hide the checks after it).
lb_teardown() {
    local m
    for m in $(awk '$5 ~ "^/(srv|opt|home|var|run/live/persistence|mnt)/" {print $5}' /proc/self/mountinfo | sort -r); do
        umount "$m" 2>/dev/null
    done
    for m in /dev/mapper/*; do [ "$m" = /dev/mapper/control ] || cryptsetup close "${m##*/}" 2>/dev/null; done
    losetup -a 2>/dev/null | cut -d: -f1 | while read -r m; do losetup -d "$m"; done
    rm -f /home/amnesia/.bashrc /opt/tool/run /home/amnesia/.profile
}

guest_nested_sources() {
    . /tests/liveboot.sh
    mkfs.ext4 -q /dev/vda1 || ks_fail "mkfs system partition"
    ks_live_session
    ks_pass_file
    lb_setup
    lb_image_dir /opt
    local vol=/run/live/persistence/vda2

    # A GPT volume made by keepsake.
    ks_expect_rc 0 "create --layout live-boot on the stick" -- ks_timed create $LB_KS create --device /dev/vda --yes --key-file "$KS_PASS_FILE" $KS_KDF
    ks_expect_rc 0 "unlock it" -- $LB_KS unlock --device /dev/vda --key-file "$KS_PASS_FILE"
    ks_assert "mounted at $vol" grep -q " $vol " /proc/self/mountinfo

    # Nested sources: keepsake refuses to write them; live-boot panics on them.
    ks_expect_rc 0 "feature enable additional-software (apt/cache, apt/lists)" -- $LB_KS feature enable additional-software
    local before
    before=$(lb_hash $vol/persistence.conf)
    ks_check_refused "feature add apt (a source holding apt/cache) is refused" -- $LB_KS feature add apt --dest /opt/apt
    ks_check_eq "and persistence.conf is unchanged" "$(lb_hash $vol/persistence.conf)" "$before"
    ks_expect_rc 0 "lock" -- $LB_KS lock
    lb_teardown
    cryptsetup open --key-file "$KS_PASS_FILE" /dev/vda2 vda2 || ks_fail "open by hand"
    mkdir -p /mnt/v && mount /dev/mapper/vda2 /mnt/v || ks_fail "mount by hand"
    printf '/var/cache/apt/archives source=apt/cache\n/opt/apt source=apt\n' > /mnt/v/persistence.conf
    lb_conf_log /mnt/v/persistence.conf "hand-made nested config"
    umount /mnt/v
    lb_custom_mounts /dev/mapper/vda2
    ks_check "live-boot's get_custom_mounts panics on nested sources (the panic is real)" grep -q "nested sources" "$LB_PANICS"
    lb_teardown
    ks_check_refused "keepsake check reports the nested sources" -- $LB_KS check --device /dev/vda --key-file "$KS_PASS_FILE"
    ks_check "naming them" grep -qi "nest" /tmp/ks-cmd.out
    ks_checks_done
}

HAND_CONF='/srv/data union
/home/amnesia source=dotfiles,link
/opt/tool source=tool link
/srv/www source=www
/srv/www/uploads source=uploads
/var/lib/notes'

# b. A volume made as the Debian Live manual shows, on an MBR stick.
guest_hand_made() {
    . /tests/liveboot.sh
    mkfs.ext4 -q /dev/vda1 || ks_fail "mkfs system partition"
    ks_live_session
    ks_pass_file
    lb_setup
    lb_image_dir /srv/data from-image "in the image"
    lb_image_dir /opt
    lb_image_dir /var/lib
    cryptsetup luksFormat -q --type luks2 $LB_KDF --key-file "$KS_PASS_FILE" /dev/vdb1 || ks_fail "luksFormat"
    cryptsetup open --key-file "$KS_PASS_FILE" /dev/vdb1 hand && mkfs.ext4 -q -L persistence /dev/mapper/hand || ks_fail "mkfs"
    mkdir -p /mnt/p && mount /dev/mapper/hand /mnt/p || ks_fail "mount"
    (umask 022; cd /mnt/p && echo "$HAND_CONF" | while read -r line; do echo "$line" >> persistence.conf; done)
    mkdir -p /mnt/p/srv/data/rw /mnt/p/dotfiles /mnt/p/tool /mnt/p/www /mnt/p/uploads /mnt/p/var/lib/notes
    echo "kept" > /mnt/p/srv/data/rw/kept
    echo "export EDITOR=vi" > /mnt/p/dotfiles/.profile && chown -R 1000:1000 /mnt/p/dotfiles
    echo "#!/bin/sh" > /mnt/p/tool/run
    echo "web" > /mnt/p/www/index.html
    echo "upload" > /mnt/p/uploads/u.txt
    echo "notes" > /mnt/p/var/lib/notes/n.txt
    ks_assert_eq "the manual's persistence.conf is root's, 0644" "$(ks_mode /mnt/p/persistence.conf)" "0:0 644"
    umount /mnt/p && cryptsetup close hand
    local vol=/run/live/persistence/vdb1 conf=/run/live/persistence/vdb1/persistence.conf dev="" before

    # Control: live-boot itself on the manual's volume, before keepsake touches it.
    lb_boot luks filesystem,file
    ks_assert "control: live-boot did not panic" lb_no_panic
    ks_assert "control: live-boot warned of nothing" lb_no_warning
    ks_assert_eq "control: live-boot's union on /srv/data" "$(ks_fstype /srv/data)" overlay
    ks_assert "control: upperdir=$vol/srv/data/rw" sh -c "awk '\$5 == \"/srv/data\"' /proc/self/mountinfo | grep -q 'upperdir=$vol/srv/data/rw[,]'"
    ks_assert_eq "control: live-boot's nested bind" "$(ks_inode /srv/www/uploads/u.txt)" "$(ks_inode $vol/uploads/u.txt)"
    ks_assert_eq "control: live-boot's link with a space" "$(readlink /opt/tool/run)" "$vol/tool/run"
    ks_assert_eq "control: live-boot's default source" "$(ks_inode /var/lib/notes/n.txt)" "$(ks_inode $vol/var/lib/notes/n.txt)"
    lb_teardown

    # Given the whole disk, keepsake searches it as live-boot searches: the passphrase
    # tried on each LUKS partition there, the one labelled persistence kept.
    echo "not the passphrase" > /tmp/wrong-passphrase
    local hdr
    hdr=$(lb_head_hash /dev/vdb1)
    ks_assert "its first 16 MiB are read" test "$(head -c 16777216 /dev/vdb1 | wc -c)" = 16777216
    ks_check_rc 3 "unlock --device /dev/vdb with a wrong passphrase: exit 3 (bad passphrase)" -- $LB_KS unlock --device /dev/vdb --key-file /tmp/wrong-passphrase
    lb_conf_log /tmp/ks-cmd.out "keepsake"
    ks_check "naming the partition it tried" grep -q "/dev/vdb1" /tmp/ks-cmd.out
    ks_check "and opens nothing" ks_no_mapping
    ks_check "and mounts nothing at $vol" ks_not_mounted $vol
    ks_check_eq "and changes no byte of the partition's first 16 MiB" "$(lb_head_hash /dev/vdb1)" "$hdr"
    ks_check_rc 4 "unlock --device /dev/vda, a disk with no LUKS partition: exit 4 (not found)" -- $LB_KS unlock --device /dev/vda --key-file "$KS_PASS_FILE"
    lb_conf_log /tmp/ks-cmd.out "keepsake"
    ks_check "saying it looked on /dev/vda and found no LUKS partition" grep -q "on /dev/vda.*no LUKS" /tmp/ks-cmd.out
    ks_check "and opens nothing" ks_no_mapping
    ks_check_rc 4 "delete --device /dev/vdb (takes no passphrase, so cannot look inside): exit 4" -- $LB_KS delete --device /dev/vdb --yes
    lb_conf_log /tmp/ks-cmd.out "keepsake"
    ks_check "naming the partition to pass" grep -q -- "--device /dev/vdb1" /tmp/ks-cmd.out
    ks_check_eq "and the partition's first 16 MiB are as they were" "$(lb_head_hash /dev/vdb1)" "$hdr"
    ks_check_rc 0 "check --device /dev/vdb: the one LUKS partition there" -- $LB_KS check --device /dev/vdb --key-file "$KS_PASS_FILE"
    ks_check "checked /dev/vdb1" grep -q "/dev/vdb1" /tmp/ks-cmd.out
    ks_check "and closed it again" ks_no_mapping
    ks_check_rc 0 "unlock --device /dev/vdb (the whole MBR disk) finds the partition" -- $LB_KS unlock --device /dev/vdb --key-file "$KS_PASS_FILE"
    sed 's/^/KS-LOG keepsake: /' /tmp/ks-cmd.out
    ks_check "reporting /dev/vdb1 opened" grep -q "/dev/vdb1.*opened as /dev/mapper/vdb1" /tmp/ks-cmd.out
    ks_check "mapped as /dev/mapper/vdb1" test -b /dev/mapper/vdb1
    ks_check "mounted at $vol" grep -q " $vol " /proc/self/mountinfo
    ks_check_eq "bind: /srv/www" "$(ks_inode /srv/www/index.html)" "$(ks_inode $vol/www/index.html)"
    ks_check_rc 0 "lock --device /dev/vdb: the volume on that disk" -- $LB_KS lock --device /dev/vdb
    ks_check "no mapping after lock" ks_no_mapping
    ks_check "$vol is not mounted" ks_not_mounted $vol
    lb_teardown

    ks_check_rc 0 "keepsake unlock finds it without --device (ext4 label inside LUKS)" -- $LB_KS unlock --key-file "$KS_PASS_FILE"
    if [ ! -b /dev/mapper/vdb1 ]; then
        dev="--device /dev/vdb1"
        ks_check_rc 0 "unlock with $dev, for the checks that follow" -- $LB_KS unlock $dev --key-file "$KS_PASS_FILE"
        ks_assert "unlocked as /dev/mapper/vdb1" test -b /dev/mapper/vdb1
    fi
    before=$(lb_hash $conf)
    ks_check "mapped as /dev/mapper/vdb1" test -b /dev/mapper/vdb1
    ks_check "mounted at $vol" grep -q " $vol " /proc/self/mountinfo
    ks_check_eq "union: /srv/data is an overlay" "$(ks_fstype /srv/data)" overlay
    ks_check "union: upperdir=$vol/srv/data/rw, as live-boot" sh -c "awk '\$5 == \"/srv/data\"' /proc/self/mountinfo | grep -q 'upperdir=$vol/srv/data/rw[,]'"
    ks_check_eq "union: the volume's upper file" "$(cat /srv/data/kept 2>&1)" "kept"
    ks_check_eq "union: the image's file shows through" "$(cat /srv/data/from-image 2>&1)" "in the image"
    ks_check_eq "link with a comma: the dotfile" "$(readlink /home/amnesia/.profile)" "$vol/dotfiles/.profile"
    ks_check_eq "link with a space: the tool" "$(readlink /opt/tool/run)" "$vol/tool/run"
    ks_check_eq "bind: /srv/www" "$(ks_inode /srv/www/index.html)" "$(ks_inode $vol/www/index.html)"
    ks_check_eq "nested destination: /srv/www/uploads, mounted after /srv/www" "$(ks_inode /srv/www/uploads/u.txt)" "$(ks_inode $vol/uploads/u.txt)"
    ks_check_eq "default source: /var/lib/notes" "$(ks_inode /var/lib/notes/n.txt)" "$(ks_inode $vol/var/lib/notes/n.txt)"
    ks_check_eq "persistence.conf is unchanged" "$(lb_hash $conf)" "$before"
    ks_check_eq "and still root's 0644" "$(ks_mode $conf)" "0:0 644"
    ks_check_rc 0 "lock" -- $LB_KS lock
    lb_teardown
    ks_check_rc 0 "keepsake check: every line is valid for live-boot" -- $LB_KS check $dev --key-file "$KS_PASS_FILE"
    ks_check_rc 0 "keepsake repair" -- $LB_KS repair $dev --key-file "$KS_PASS_FILE"
    lb_teardown

    # What keepsake leaves behind, booted by live-boot.
    lb_boot luks filesystem,file
    ks_check "live-boot did not panic" lb_no_panic
    ks_check "live-boot skipped nothing and warned of nothing" lb_no_warning
    ks_assert_eq "live-boot found the volume by its label" "$(lb_found)" "/dev/mapper/vdb1"
    lb_conf_log $conf "after keepsake"
    ks_check_eq "repair kept persistence.conf byte for byte" "$(lb_hash $conf)" "$before"
    ks_check "nothing was moved aside" sh -c "! ls $vol | grep -q invalid"
    ks_check_eq "live-boot's union on /srv/data" "$(ks_fstype /srv/data)" overlay
    ks_check_eq "live-boot's nested bind" "$(ks_inode /srv/www/uploads/u.txt)" "$(ks_inode $vol/uploads/u.txt)"
    ks_check_eq "live-boot's link" "$(readlink /opt/tool/run)" "$vol/tool/run"
    ks_checks_done
}

# b. Full persistence: `/ union`, the manual's line, alone on a whole-disk LUKS2 volume.
guest_full_union() {
    . /tests/liveboot.sh
    mkfs.ext4 -q /dev/vda1 || ks_fail "mkfs system partition"
    ks_live_session
    ks_pass_file
    lb_setup
    cryptsetup luksFormat -q --type luks2 $LB_KDF --key-file "$KS_PASS_FILE" /dev/vdb || ks_fail "luksFormat"
    cryptsetup open --key-file "$KS_PASS_FILE" /dev/vdb whole && mkfs.ext4 -q -L persistence /dev/mapper/whole || ks_fail "mkfs"
    mkdir -p /mnt/p && mount /dev/mapper/whole /mnt/p || ks_fail "mount"
    (umask 022; cd /mnt/p && echo "/ union" > persistence.conf)
    umount /mnt/p && cryptsetup close whole
    local vol=/run/live/persistence/vdb before dev=""
    # Control: live-boot itself, with its own root (rootmnt): `/ union` puts the volume over
    # the whole root.
    mkdir -p /mnt/root && mount -t tmpfs tmpfs /mnt/root
    lb_boot luks filesystem,file /mnt/root
    ks_assert "control: live-boot did not panic" lb_no_panic
    ks_assert "control: live-boot warned of nothing" lb_no_warning
    ks_assert_eq "control: live-boot's root is the union" "$(ks_fstype /mnt/root)" overlay
    ks_assert "control: upperdir=$vol/rw" sh -c "awk '\$5 == \"/mnt/root\"' /proc/self/mountinfo | grep -q 'upperdir=$vol/rw[,]'"
    lb_teardown

    ks_check_rc 0 "keepsake unlock finds the whole-disk volume without --device" -- $LB_KS unlock --key-file "$KS_PASS_FILE"
    if [ ! -b /dev/mapper/vdb ]; then
        dev="--device /dev/vdb"
        ks_check_rc 0 "unlock with $dev, for the checks that follow" -- $LB_KS unlock $dev --key-file "$KS_PASS_FILE"
        ks_assert "unlocked as /dev/mapper/vdb" test -b /dev/mapper/vdb
    fi
    ks_check "it says / union takes effect at boot" grep -qiE "(at|next|on) boot|boot time|when .*boot" /tmp/ks-cmd.out
    sed 's/^/KS-LOG keepsake: /' /tmp/ks-cmd.out
    ks_check "nothing is mounted over / at runtime" test "$(ks_fstype /)" != overlay
    before=$(lb_hash $vol/persistence.conf)
    ks_check_eq "persistence.conf is still '/ union'" "$(cat $vol/persistence.conf)" "/ union"
    ks_check_rc 0 "lock" -- $LB_KS lock
    lb_teardown
    ks_check_rc 0 "keepsake repair" -- $LB_KS repair $dev --key-file "$KS_PASS_FILE"
    lb_teardown

    # What keepsake leaves behind, booted by live-boot.
    mkdir -p /mnt/root && mount -t tmpfs tmpfs /mnt/root
    lb_boot luks filesystem,file /mnt/root
    ks_check "live-boot did not panic" lb_no_panic
    ks_check "live-boot skipped nothing and warned of nothing" lb_no_warning
    ks_check_eq "repair kept '/ union'" "$(cat $vol/persistence.conf)" "/ union"
    ks_check_eq "live-boot's root is the union" "$(ks_fstype /mnt/root)" overlay
    ks_check "with its upper layer on the volume" sh -c "awk '\$5 == \"/mnt/root\"' /proc/self/mountinfo | grep -q 'upperdir=$vol/rw[,]'"
    ks_checks_done
}
