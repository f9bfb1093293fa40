# After `keepsake lock`, the guest's RAM holds neither the passphrase nor the volume key.
# The host dumps the guest's physical memory through the qemu monitor (pmemsave) and
# searches it; the volume key is read on the host from the stick's header, never by the
# guest. Negative controls: a canary kept on tmpfs, and a second dump taken while the
# volume is unlocked, in which the volume key (held by dm-crypt) must be found.

host_main() {
    ks_set passphrase "ram-pass-$(ks_random)"
    local note="KSRAM-note-$(ks_random)" feat="KSRAM-feature-$(ks_random)" ctl="KSRAM-tmpfs-$(ks_random)"
    ks_set note "$note"; ks_set feature "$feat"; ks_set control "$ctl"
    local usb locked="$KS_SCEN_DIR/ram-locked.bin" open="$KS_SCEN_DIR/ram-unlocked.bin"
    usb=$(ks_live_stick usb 320M) || return 1
    KS_RAM_DUMP=$locked ks_phase lifecycle_then_lock "usb=$usb" || return 1
    KS_RAM_DUMP=$open ks_phase unlocked "usb=$usb" || return 1
    local vk pass
    vk=$(ks_volume_key "$usb" 2)
    pass=$(ks_get_in passphrase)
    [ ${#vk} -eq 128 ] && ks_host_ok "volume key read from the header on the host (512 bits)" \
        || { ks_host_fail "no volume key ($vk)"; return 1; }
    [ -s "$locked" ] && [ -s "$open" ] && ks_host_ok "RAM dumps: $(( $(stat -c %s "$locked") >> 20 )) MiB each" \
        || { ks_host_fail "no RAM dump"; return 1; }
    echo "    ..    after lock:"
    ks_expect_hits "passphrase" "$locked" "text:$pass" -eq 0
    ks_expect_hits "volume key" "$locked" "hex:$vk" -eq 0
    ks_expect_hits "volume key, first half (AES key of XTS)" "$locked" "hex:${vk:0:64}" -eq 0
    ks_expect_hits "volume key, second half (XTS tweak key)" "$locked" "hex:${vk:64:64}" -eq 0
    ks_expect_hits "note canary (page cache of the volume)" "$locked" "text:$note" -eq 0
    ks_expect_hits "canaries of all 13 bind features" "$locked" "text:$feat" -eq 0
    ks_expect_hits "negative control: a canary kept on tmpfs" "$locked" "text:$ctl" -ge 1
    echo "    ..    while unlocked (negative controls):"
    # dm-crypt hands the two XTS halves to two AES contexts; each expanded key schedule
    # starts with its raw half. The whole 64-byte key need not be in one piece.
    ks_expect_hits "volume key, first half, in dm-crypt's AES context" "$open" "hex:${vk:0:64}" -ge 1
    ks_expect_hits "volume key, second half, in dm-crypt's tweak context" "$open" "hex:${vk:64:64}" -ge 1
    echo "    ..    (the whole 64-byte key in one piece: $(ks_scan "$open" "hex:$vk") hit(s))"
    ks_expect_hits "passphrase, still in the test's key file" "$open" "text:$pass" -ge 1
    ks_expect_hits "note canary, read into the page cache" "$open" "text:$note" -ge 1
    rm -f "$locked" "$open"
}

guest_lifecycle_then_lock() {
    ks_live_session
    ks_pass_file
    ks_expect_rc 0 "create" -- keepsake create --device /dev/vda --yes --key-file "$KS_PASS_FILE" $KS_KDF
    ks_expect_rc 0 "unlock" -- keepsake unlock --key-file "$KS_PASS_FILE"
    ks_expect_rc 0 "enable every built-in feature" -- keepsake feature enable $KS_ALL_FEATURES
    local n=0
    echo "$KS_EXPECT" | while read -r dest owner mode; do
        [ -n "$dest" ] || continue
        n=$((n + 1))
        { ks_in feature; echo "-$n"; } > "$dest/canary"
    done
    ks_in note > $KS_PERSISTENT/note.txt
    sync
    cat $KS_PERSISTENT/note.txt > /dev/null
    ks_expect_rc 0 "lock" -- keepsake lock
    ks_lock_is_clean
    # The control stays on tmpfs; every other trace of the test's secrets goes.
    ks_in control > /tmp/control.txt
    rm -rf /run/ks-test /tmp/ks-cmd.out
    ks_dump_ram_and_halt
}

guest_unlocked() {
    ks_live_session
    ks_pass_file
    ks_expect_rc 0 "unlock" -- keepsake unlock --key-file "$KS_PASS_FILE"
    ks_assert "the note is back" grep -q KSRAM-note $KS_PERSISTENT/note.txt
    ks_dump_ram_and_halt keep-caches
}
