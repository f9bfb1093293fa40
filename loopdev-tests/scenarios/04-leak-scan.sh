# Nothing keepsake handles reaches a disk in plaintext. Canaries in every bound feature's
# folder, the passphrase, the recovery key and the volume key are searched for in the raw
# images afterwards: the "host internal disk" (mounted read-write, and keepsake's working
# folder and TMPDIR) must hold none of them, the USB stick no plaintext. Negative controls,
# written on purpose to each disk, show that the scan finds what is there.

host_main() {
    local pass="leak-pass-$(ks_random)"
    local note="KSCANARY-note-$(ks_random)" big="KSCANARY-big-$(ks_random)" sub="KSCANARY-sub-$(ks_random)"
    local feat="KSCANARY-feature-$(ks_random)"
    local gone="KSCANARY-deleted-$(ks_random)" ctl_host="KSCONTROL-host-$(ks_random)" ctl_usb="KSCONTROL-usb-$(ks_random)"
    ks_set passphrase "$pass"
    ks_set note "$note"; ks_set big "$big"; ks_set sub "$sub"; ks_set gone "$gone"; ks_set feature "$feat"
    ks_set control_host "$ctl_host"; ks_set control_usb "$ctl_usb"
    ks_phase write || return 1
    ks_phase reread || return 1
    local usb="$KS_SCEN_DIR/usb.img" host="$KS_SCEN_DIR/hostdisk.img" vk
    vk=$(ks_get volume_key)
    [ ${#vk} -eq 128 ] && ks_host_ok "volume key captured (512 bits)" || ks_host_fail "no volume key captured ($vk)"
    local rk rk_bare
    rk=$(ks_get recovery_key); rk_bare=$(echo "$rk" | tr -d -)
    [ ${#rk} -eq 47 ] && ks_host_ok "recovery key captured" || ks_host_fail "no recovery key captured ($rk)"
    for img in "$host" "$usb"; do
        ks_expect_hits "passphrase" "$img" "text:$pass" -eq 0
        ks_expect_hits "note canary" "$img" "text:$note" -eq 0
        ks_expect_hits "big-file canary" "$img" "text:$big" -eq 0
        ks_expect_hits "subfolder canary" "$img" "text:$sub" -eq 0
        ks_expect_hits "deleted-file canary" "$img" "text:$gone" -eq 0
        ks_expect_hits "canaries in all 13 bind features" "$img" "text:$feat" -eq 0
        ks_expect_hits "recovery key" "$img" "text:$rk" -eq 0
        ks_expect_hits "recovery key without dashes" "$img" "text:$rk_bare" -eq 0
        ks_expect_hits "volume key" "$img" "hex:$vk" -eq 0
        ks_expect_hits "volume key, first half" "$img" "hex:${vk:0:64}" -eq 0
        ks_expect_hits "volume key, second half" "$img" "hex:${vk:64:64}" -eq 0
    done
    ks_expect_hits "negative control on the host disk" "$host" "text:$ctl_host" -ge 1
    ks_expect_hits "negative control on the USB stick" "$usb" "text:$ctl_usb" -ge 1
}

guest_write() {
    ks_disk_fs hostdisk /media/hostdisk format
    ks_disk_fs usb /media/usb format
    ks_pass_file
    # Tempt keepsake to use the host disk: it is the working folder and TMPDIR.
    mkdir -p /media/hostdisk/tmp && cd /media/hostdisk
    export TMPDIR=/media/hostdisk/tmp
    ks_expect_rc 0 "create" -- keepsake create --image "$KS_IMAGE" --size 64M --key-file "$KS_PASS_FILE" $KS_KDF
    ks_expect_rc 0 "add a recovery key" -- keepsake --json recovery-key add --image "$KS_IMAGE" --key-file "$KS_PASS_FILE" $KS_KDF
    ks_out recovery_key "$(sed -n 's/.*"recovery_key": "\([^"]*\)".*/\1/p' /tmp/ks-cmd.out)"
    rm /tmp/ks-cmd.out
    ks_expect_rc 0 "unlock" -- keepsake unlock --image "$KS_IMAGE" --key-file "$KS_PASS_FILE"
    ks_system_folders
    ks_expect_rc 0 "enable every built-in feature" -- keepsake feature enable $KS_ALL_FEATURES
    local n=0
    echo "$KS_EXPECT" | while read -r dest owner mode; do
        [ -n "$dest" ] || continue
        n=$((n + 1))
        echo "$(ks_in feature)-$n" > "$dest/canary"
    done
    local p=$KS_PERSISTENT
    ks_in note > $p/note.txt
    { head -c 300000 /dev/urandom; ks_in big; head -c 300000 /dev/urandom; } > $p/big.bin
    mkdir $p/deep && ks_in sub > $p/deep/sub.txt
    ks_in gone > $p/gone.txt && sync && rm $p/gone.txt
    chown -R 1000:1000 $p
    sync
    cryptsetup luksDump --dump-volume-key -q --key-file "$KS_PASS_FILE" "$KS_IMAGE" > /tmp/vk.txt 2>&1
    ks_out volume_key "$(sed -n '/MK dump:/,$p' /tmp/vk.txt | sed 's/MK dump://' | tr -d ' \t\n:')"
    rm /tmp/vk.txt
    ks_expect_rc 0 "lock" -- keepsake lock
    ks_in control_host > /media/hostdisk/control.txt
    ks_in control_usb > /media/usb/control.txt
    cd / && sync && umount /media/hostdisk /media/usb
}

guest_reread() {
    ks_disk_fs hostdisk /media/hostdisk
    ks_disk_fs usb /media/usb
    ks_pass_file
    cd /media/hostdisk
    export TMPDIR=/media/hostdisk/tmp
    ks_system_folders
    ks_expect_rc 0 "unlock again" -- keepsake unlock --image "$KS_IMAGE" --key-file "$KS_PASS_FILE"
    ks_assert_eq "note canary readable through the volume" "$(cat $KS_PERSISTENT/note.txt)" "$(ks_in note)"
    ks_assert "big-file canary readable" grep -q "$(ks_in big)" $KS_PERSISTENT/big.bin
    ks_assert_eq "a canary in each bind feature" "$(cat $(echo "$KS_EXPECT" | awk 'NF {print $1 "/canary"}') | grep -c "$(ks_in feature)")" 13
    ks_expect_rc 0 "lock" -- keepsake lock
    ks_assert "nothing was written into TMPDIR on the host disk" test -z "$(ls -A /media/hostdisk/tmp)"
    cd / && umount /media/hostdisk /media/usb
}
