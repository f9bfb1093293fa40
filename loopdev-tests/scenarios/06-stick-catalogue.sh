# The live stick and the whole catalogue: create --device adds a TailsData partition after
# the live system (refusing disks it must not touch), unlock finds it without arguments,
# every built-in feature activates with the right owner and mode, keeps what is written
# into it across an amnesic reboot, and can be enabled and disabled at runtime. A feature
# that fails half way leaves nothing behind.

host_main() {
    ks_set passphrase "stick $(ks_random)"
    local usb host full
    usb=$(ks_live_stick usb 320M) || return 1
    host=$(ks_gpt_disk hostdisk 64M) || return 1
    full=$(ks_gpt_disk full 48M) || return 1
    ks_phase first_boot "usb=$usb" "hostdisk=$host" "full=$full" || return 1
    ks_phase second_boot "usb=$usb" "hostdisk=$host" || return 1
    sfdisk --json "$usb" > "$KS_SCEN_DIR/table.json"
    grep -q '"name": *"TailsData"' "$KS_SCEN_DIR/table.json" && ks_host_ok "the stick's GPT names partition 2 TailsData" \
        || ks_host_fail "no TailsData partition in $(cat "$KS_SCEN_DIR/table.json")"
    grep -qi '8DA63339-0007-60C0-C436-083AC8230908' "$KS_SCEN_DIR/table.json" && ks_host_ok "with Tails' partition type" \
        || ks_host_fail "partition type is not Tails'"
}

ks_expect_owner() { ks_assert_eq "$1 owner and mode" "$(ks_mode "$1")" "$2"; }

guest_first_boot() {
    local usb=/dev/vda
    [ "$(cat /sys/block/vda/serial)" = usb ] || ks_fail "vda is not the stick"
    mkfs.ext4 -q -L Tails /dev/vda1 && ks_live_session
    mkfs.ext4 -q /dev/vdb1 && mkdir -p /media/hostdisk && mount /dev/vdb1 /media/hostdisk
    ks_pass_file
    local key="--key-file $KS_PASS_FILE"

    ks_expect_rc 2 "refuse a partition" -- keepsake create --device /dev/vda1 --yes $key $KS_KDF
    ks_assert "and say which disk to use" grep -q "give the whole disk (/dev/vda)" /tmp/ks-cmd.out
    sfdisk --json /dev/vdb > /tmp/vdb.before
    ks_expect_rc 5 "refuse a disk with a filesystem mounted read-write" -- keepsake create --device /dev/vdb --yes $key $KS_KDF
    ks_assert "the host disk's table is unchanged" sh -c "sfdisk --json /dev/vdb | cmp -s - /tmp/vdb.before"
    ks_expect_rc 2 "refuse a disk without free space" -- keepsake create --device /dev/vdc --yes $key $KS_KDF
    ks_assert "and say how much is free" grep -q "MiB free" /tmp/ks-cmd.out
    ks_expect_rc 2 "refuse without --yes when there is no terminal" -- sh -c "keepsake create --device $usb $key $KS_KDF </dev/null"
    ks_assert "the stick still has one partition" test ! -e /dev/vda2

    ks_expect_rc 0 "create --device on the live stick" -- ks_timed create keepsake create --device $usb --yes $key $KS_KDF
    ks_assert "partition 2 exists" test -b /dev/vda2
    ks_assert "its GPT name is TailsData" sh -c "sfdisk --json /dev/vda | grep -q '\"name\": *\"TailsData\"'"
    ks_assert "it starts after the live partition, aligned" sh -c \
        "[ \$(cat /sys/block/vda/vda2/start) -ge \$(( \$(cat /sys/block/vda/vda1/start) + \$(cat /sys/block/vda/vda1/size) )) ] && [ \$(( \$(cat /sys/block/vda/vda2/start) % 2048 )) -eq 0 ]"
    ks_expect_rc 2 "refuse a second persistence partition" -- keepsake create --device $usb --yes $key $KS_KDF
    ks_assert "the live partition is still mounted read-only" grep -q " /run/live/medium " /proc/self/mountinfo

    ks_expect_rc 0 "unlock without arguments finds the partition" -- ks_timed unlock_one keepsake unlock $key
    ks_assert "the volume is /dev/vda2" grep -q "unlocked /dev/vda2" /tmp/ks-cmd.out
    ks_expect_rc 0 "enable every built-in feature" -- ks_timed enable_all keepsake feature enable $KS_ALL_FEATURES
    echo "$KS_EXPECT" | while read -r dest owner mode; do
        [ -n "$dest" ] || continue
        ks_assert "$dest is a bind mount" grep -q " $dest " /proc/self/mountinfo
        ks_expect_owner "$dest" "$owner $mode"
        ks_assert "$dest is nosuid,nodev" sh -c "ks_mount_opts() { awk -v p=\"\$1\" '\$5 == p {print \$6}' /proc/self/mountinfo | tail -n 1; }; ks_mount_opts $dest | grep -q nosuid && ks_mount_opts $dest | grep -q nodev"
        echo "data of $dest" > "$dest/keepsake-marker"
    done
    # Dotfiles are links: give the volume some, and they appear in the home folder.
    mkdir -p $KS_ROOT_MNT/dotfiles/.config/app
    echo "alias ll='ls -l'" > $KS_ROOT_MNT/dotfiles/.bashrc
    echo "k=v" > $KS_ROOT_MNT/dotfiles/.config/app/rc
    chown -R 1000:1000 $KS_ROOT_MNT/dotfiles
    ks_expect_rc 0 "disable dotfiles" -- keepsake feature disable dotfiles
    ks_expect_rc 0 "enable dotfiles again" -- keepsake feature enable dotfiles
    ks_assert_eq ".bashrc is a link into the volume" "$(readlink /home/amnesia/.bashrc)" "$KS_ROOT_MNT/dotfiles/.bashrc"
    ks_assert_eq "nested dotfiles are linked too" "$(cat /home/amnesia/.config/app/rc)" "k=v"
    ks_expect_rc 0 "status" -- keepsake status
    ks_assert "status lists 14 active lines" test "$(grep -c ' active ' /tmp/ks-cmd.out)" -eq 14
    ks_expect_rc 0 "lock with the full catalogue" -- ks_timed lock_all keepsake lock
    ks_lock_is_clean
    ks_assert "the dotfile links are gone" test ! -e /home/amnesia/.bashrc
}

guest_second_boot() {
    ks_live_session
    ks_pass_file
    local key="--key-file $KS_PASS_FILE"
    ks_expect_rc 0 "unlock after the reboot, with every feature" -- ks_timed unlock_all keepsake unlock $key
    echo "$KS_EXPECT" | while read -r dest owner mode; do
        [ -n "$dest" ] || continue
        ks_assert_eq "$dest kept its data" "$(cat "$dest/keepsake-marker" 2>&1)" "data of $dest"
        ks_expect_owner "$dest" "$owner $mode"
    done
    ks_assert_eq "dotfiles are linked" "$(readlink /home/amnesia/.bashrc)" "$KS_ROOT_MNT/dotfiles/.bashrc"

    # Runtime disable and enable: unbound at once, data kept, bound again.
    ks_expect_rc 0 "disable gnupg at runtime" -- keepsake feature disable gnupg
    ks_assert ".gnupg is no longer a mount" sh -c "! grep -q ' /home/amnesia/.gnupg ' /proc/self/mountinfo"
    ks_assert "persistence.conf no longer lists it" sh -c "! grep -q 'source=gnupg' $KS_ROOT_MNT/persistence.conf"
    ks_assert "its data is kept in the volume" test -f $KS_ROOT_MNT/gnupg/keepsake-marker
    ks_expect_rc 0 "enable gnupg at runtime" -- keepsake feature enable gnupg
    ks_assert_eq "its data is back" "$(cat /home/amnesia/.gnupg/keepsake-marker)" "data of /home/amnesia/.gnupg"
    ks_assert_eq "persistence.conf stays Tails' 0600" "$(ks_mode $KS_ROOT_MNT/persistence.conf)" "115:122 600"

    # A busy feature cannot be disabled; nothing changes.
    /usr/bin/setpriv --reuid 1000 --regid 1000 --clear-groups sh -c "cd /home/amnesia/.ssh && exec sleep 600" &
    local pid=$!
    sleep 1
    cp $KS_ROOT_MNT/persistence.conf /tmp/conf.before
    ks_expect_rc 5 "disable a feature in use" -- keepsake feature disable ssh-client
    ks_assert "still mounted" grep -q " /home/amnesia/.ssh " /proc/self/mountinfo
    ks_assert "config unchanged" cmp -s /tmp/conf.before $KS_ROOT_MNT/persistence.conf
    kill $pid; wait $pid 2>/dev/null

    # Custom features.
    ks_expect_rc 0 "add a custom feature" -- keepsake feature add projects --dest /home/amnesia/Projects
    ks_expect_owner /home/amnesia/Projects "1000:1000 700"
    echo "my project" > /home/amnesia/Projects/readme
    ks_expect_rc 0 "disable it" -- keepsake feature disable projects
    ks_assert "unbound" sh -c "! grep -q ' /home/amnesia/Projects ' /proc/self/mountinfo"
    keepsake --json feature list > /tmp/list.json
    ks_assert "list still knows it" grep -q '"name": "projects"' /tmp/list.json
    ks_expect_rc 0 "enable it again" -- keepsake feature enable projects
    ks_assert_eq "its data is back" "$(cat /home/amnesia/Projects/readme)" "my project"
    ks_expect_rc 2 "a custom name may not shadow a built-in" -- keepsake feature add gnupg --dest /home/amnesia/x
    ks_expect_rc 2 "a custom destination must be absolute" -- keepsake feature add rel --dest relative/path
    ks_expect_rc 4 "enable an unknown feature" -- keepsake feature enable no-such-feature
    ks_expect_rc 0 "remove it with its data" -- keepsake feature remove projects --delete-data --yes
    ks_assert "its folder is gone from the volume" test ! -e $KS_ROOT_MNT/projects

    # A feature that fails half way: its source is made (and filled with a copy of the
    # destination's files), then the bind fails: the volume's mount is made unbindable, so
    # the kernel refuses it (EINVAL). Everything made before must be undone.
    mkdir -p /opt/broken && echo "the session's own" > /opt/broken/file
    cp $KS_ROOT_MNT/persistence.conf /tmp/conf.before
    local propagation=private
    awk -v m="$KS_ROOT_MNT" '$5 == m' /proc/self/mountinfo | grep -q ' shared:' && propagation=shared
    mount --make-unbindable "$KS_ROOT_MNT"
    ks_expect_rc 9 "a feature whose bind fails after its source was made" -- keepsake feature add broken --dest /opt/broken
    ks_assert "the error names the cause" grep -q "Invalid argument" /tmp/ks-cmd.out
    ks_assert "nothing is mounted for it" sh -c "! grep -q ' /opt/broken ' /proc/self/mountinfo"
    ks_assert "its source folder, with the copy in it, was rolled back" test ! -e $KS_ROOT_MNT/broken
    ks_assert_eq "the destination's own file is untouched" "$(cat /opt/broken/file)" "the session's own"
    ks_assert "persistence.conf unchanged" cmp -s /tmp/conf.before $KS_ROOT_MNT/persistence.conf
    ks_assert "no custom definition left" sh -c "! grep -q broken $KS_ROOT_MNT/keepsake-features.conf"
    # For scripts: a failed --json feature command still prints one JSON object, the error.
    keepsake --json feature add broken --dest /opt/broken > /tmp/broken.json 2>/dev/null
    ks_assert "--json: one object with the error's kind" sh -c "[ \$(grep -c '^{' /tmp/broken.json) -eq 1 ] && grep -q '\"kind\":\"incomplete\"' /tmp/broken.json"
    mount --make-$propagation "$KS_ROOT_MNT"

    ks_expect_rc 0 "lock" -- keepsake lock
    ks_lock_is_clean
}
