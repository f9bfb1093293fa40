# Power cuts: the VM is killed (qemu SIGKILL) at a random moment while a writer creates
# and fsyncs files in the Persistent folder. Every next boot must unlock (journal replay,
# e2fsck -p) and find every file whose fsync had returned, byte for byte. After the last
# cut, `keepsake check` must tell the unclean shutdown (journal not replayed yet) from
# damage: exit 0, unclean_shutdown in its report, no "filesystem has errors". The last
# boot checks the filesystem with e2fsck -fn through the cryptsetup CLI; then a few bytes
# of an inode are damaged on purpose and `keepsake check` must find it (exit 7).
#
# Phases are named cycle.N (each runs guest_cycle). KS_POWER_CUTS (default 20) sets the
# number of cuts; each comes at a random moment, 0..KS_POWER_CUT_MAX_MS (default 3000) ms
# after the writer starts.

host_main() {
    local cuts=${KS_POWER_CUTS:-20} max=${KS_POWER_CUT_MAX_MS:-3000} usb c ms synced total=0
    ks_set passphrase "cut-$(ks_random)"
    usb=$(ks_live_stick usb 320M) || return 1
    ks_phase create "usb=$usb" || return 1
    for c in $(seq 1 "$cuts"); do
        ms=$((RANDOM % max))
        KS_KILL_AFTER_MS=$ms ks_phase "cycle.$c" "usb=$usb" >"$KS_SCEN_DIR/cycle.out" 2>>"$KS_SCEN_DIR/qemu-killed.log" || {
            cat "$KS_SCEN_DIR/cycle.out"; return 1; }
        if ! grep -q '^KS-POWER-CUT' "$KS_SCEN_DIR/cycle.$c.log"; then
            cat "$KS_SCEN_DIR/cycle.out"
            ks_host_fail "cycle $c: the writer never started, no power cut"
            return 1
        fi
        # Only whole reports count: the cut may fall in the middle of the last one (its
        # fsync had returned, but a truncated name or hash cannot be checked).
        synced=$(tr -d '\r' < "$KS_SCEN_DIR/cycle.$c.log" \
            | sed -n 's/^KS-SYNCED \(f-[0-9a-f]*-[0-9]* [0-9a-f]\{64\}\)$/\1/p')
        [ -n "$synced" ] && echo "$synced" | sed 's/^/synced=/' >> "$KS_SCEN_DIR/in"
        total=$((total + $(echo -n "$synced" | grep -c '^')))
        ks_host_ok "cut $c at ${ms} ms: unlocked, $(sed -n 's/^KS-OK verified \([0-9]*\).*/\1/p' \
            "$KS_SCEN_DIR/cycle.$c.log" | tr -d '\r') earlier files intact," \
            "$(echo -n "$synced" | grep -c '^') fsynced before the cut" \
            "$(tr -d '\r' < "$KS_SCEN_DIR/cycle.$c.log" | sed -n 's/^KS-LOG fsck: /(fsck: /p' | sed 's/$/)/')"
    done
    ks_phase checkcut "usb=$usb" || return 1
    ks_phase final "usb=$usb" || return 1
    ks_phase damage "usb=$usb" || return 1
    ks_host_ok "tally: $cuts power cuts, $cuts unlocks after a cut, $total fsynced files all intact"
}

guest_create() {
    ks_live_session
    ks_pass_file
    ks_expect_rc 0 "create" -- keepsake create --device /dev/vda --yes --key-file "$KS_PASS_FILE" $KS_KDF
}

# Every file the host saw fsynced (synced=NAME SHA256 lines) is there, byte for byte.
ks_verify_synced() {
    local n=0 bad=0 name sum
    sed -n 's/^synced=//p' /run/ks-test/in > /tmp/synced
    while read -r name sum; do
        n=$((n + 1))
        [ "$(sha256sum < "$KS_PERSISTENT/$name" 2>/dev/null | cut -c1-64)" = "$sum" ] \
            || { echo "KS-LOG lost or damaged: $name"; bad=$((bad + 1)); }
    done < /tmp/synced
    [ "$bad" -eq 0 ] || ks_fail "$bad of $n fsynced files lost or damaged"
    ks_ok "verified $n fsynced files"
}

guest_cycle() {
    ks_live_session
    ks_pass_file
    ks_expect_rc 0 "unlock after the power cut" -- keepsake --json unlock --key-file "$KS_PASS_FILE"
    echo "KS-LOG fsck: $(sed -n 's/.*"fsck": *"\([^"]*\)".*/\1/p' /tmp/ks-cmd.out | head -n 1)"
    ks_verify_synced
    # The writer: a new file, its data fsynced, then its folder; only then reported.
    local cycle i=0 data=/tmp/data
    cycle=$(cat /proc/sys/kernel/random/uuid | cut -c1-8)
    echo "KS-WRITING"
    while true; do
        i=$((i + 1))
        head -c $(( (i % 7 + 1) * 9000 )) /dev/urandom > $data
        dd if=$data of="$KS_PERSISTENT/f-$cycle-$i" bs=64k conv=fsync 2>/dev/null || ks_fail "write f-$cycle-$i"
        sync "$KS_PERSISTENT" || ks_fail "fsync the folder"
        echo "KS-SYNCED f-$cycle-$i $(sha256sum < $data | cut -c1-64)"
    done
}

# The volume as the last cut left it: its journal not replayed. check only looks.
guest_checkcut() {
    ks_live_session
    ks_pass_file
    cryptsetup open --readonly --key-file "$KS_PASS_FILE" /dev/vda2 look || ks_fail "open with cryptsetup"
    debugfs -R stats /dev/mapper/look 2>/dev/null | grep '^Filesystem features:' > /tmp/features
    cryptsetup close look
    ks_assert "the premise: the journal needs recovery after the cut" grep -qw needs_recovery /tmp/features
    ks_expect_rc 0 "check after the power cut" -- keepsake --json check --key-file "$KS_PASS_FILE"
    ks_assert "its report says the shutdown was unclean" grep -q '"unclean_shutdown": *true' /tmp/ks-cmd.out
    ks_assert "it says that unlock replays the journal" grep -q 'keepsake unlock` replays it' /tmp/ks-cmd.out
    ks_assert "it does not call the filesystem damaged" sh -c '! grep -q "filesystem has errors" /tmp/ks-cmd.out'
    cryptsetup open --readonly --key-file "$KS_PASS_FILE" /dev/vda2 look || ks_fail "open with cryptsetup"
    debugfs -R stats /dev/mapper/look 2>/dev/null | grep '^Filesystem features:' > /tmp/features
    cryptsetup close look
    ks_assert "check left the journal to unlock" grep -qw needs_recovery /tmp/features
}

guest_final() {
    ks_live_session
    ks_pass_file
    cryptsetup open --readonly --key-file "$KS_PASS_FILE" /dev/vda2 check || ks_fail "open with cryptsetup"
    e2fsck -fn /dev/mapper/check > /tmp/fsck.out 2>&1
    local rc=$?
    cryptsetup close check
    [ $rc -eq 0 ] || sed 's/^/    | /' /tmp/fsck.out
    ks_assert_eq "e2fsck -fn after every cut: exit status" "$rc" 0
    ks_expect_rc 0 "unlock" -- keepsake unlock --key-file "$KS_PASS_FILE"
    ks_verify_synced
    ks_expect_rc 0 "lock" -- keepsake lock
}

# Real damage on a cleanly shut-down volume: a few bytes of the root folder's inode
# overwritten (its checksum no longer matches). check must still call it corrupt.
guest_damage() {
    ks_live_session
    ks_pass_file
    local block_size where block offset
    cryptsetup open --key-file "$KS_PASS_FILE" /dev/vda2 hurt || ks_fail "open with cryptsetup"
    block_size=$(debugfs -R stats /dev/mapper/hurt 2>/dev/null | sed -n 's/^Block size: *//p')
    where=$(debugfs -R 'imap <2>' /dev/mapper/hurt 2>/dev/null | sed -n 's/.*located at block \([0-9]*\), offset \(0x[0-9a-f]*\).*/\1 \2/p')
    block=${where% *}; offset=${where#* }
    [ -n "$block_size" ] && [ -n "$block" ] || { cryptsetup close hurt; ks_fail "where is inode 2: '$block_size' '$where'"; }
    # i_size_lo and i_atime: 8 bytes from the inode's 5th byte.
    printf '\x5a\xa5\x5a\xa5\x5a\xa5\x5a\xa5' \
        | dd of=/dev/mapper/hurt bs=1 seek=$((block * block_size + offset + 4)) conv=notrunc 2>/dev/null
    sync
    cryptsetup close hurt || ks_fail "close"
    ks_expect_rc 7 "check finds the damaged inode" -- keepsake --json check --key-file "$KS_PASS_FILE"
    ks_assert "it names the filesystem errors" grep -q "the filesystem has errors" /tmp/ks-cmd.out
    ks_assert "the shutdown was clean" grep -q '"unclean_shutdown": *false' /tmp/ks-cmd.out
}
