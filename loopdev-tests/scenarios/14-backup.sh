# Encrypted backups: a volume's features are backed up from one stick into an archive on the
# "host disk" (on purpose: only ciphertext may land there), verified, and restored onto a
# fresh stick, where every file type, owner, mode, time, symlink, empty folder, hole, hard
# link, user extended attribute and ACL (access and default) is back. Tampered and truncated
# archives and a wrong passphrase are refused with nothing changed. An incremental archive
# after a change is listed, verified with its chain (a tampered ancestor is caught, a missing
# one refused), restores one file alone with --path, and restores the changed and the
# unchanged files. The host-disk image is then scanned for the canaries.

host_main() {
    local a b host canary ctl
    canary="KSBACKUP-canary-$(ks_random)"; ctl="KSBACKUP-control-$(ks_random)"
    ks_set passphrase "stick-$(ks_random)"
    ks_set backup_passphrase "archive-$(ks_random)"
    ks_set canary "$canary"; ks_set control "$ctl"
    a=$(ks_live_stick usb 320M) || return 1
    b=$(ks_live_stick usb2 320M) || return 1
    host=$(ks_disk hostdisk 128M)
    ks_phase source "usb=$a" "hostdisk=$host" || return 1
    ks_set facts_hash "$(ks_get facts)"
    ks_set facts2_hash "$(ks_get facts2)"
    ks_phase target "usb=$b" "hostdisk=$host" || return 1
    ks_expect_hits "file canaries on the host disk that holds the archive" "$host" "text:$canary" -eq 0
    ks_expect_hits "the backup passphrase on the host disk" "$host" "text:$(ks_get_in backup_passphrase)" -eq 0
    ks_expect_hits "the archive itself (its magic) is on the host disk" "$host" "text:KSBACKUP" -ge 1
    ks_expect_hits "negative control: a canary written to the host disk on purpose" "$host" "text:$ctl" -ge 1
}

ks_backup_pass() {
    (umask 077; sed -n 's/^backup_passphrase=//p' /run/ks-test/in | tail -n 1 | tr -d '\n' > /run/ks-test/bpass)
}

KS_ARCHIVE_KDF="--archive-kdf-memory 8192 --archive-kdf-iterations 1"

# What must survive: names, owners, modes, sizes, contents, link targets (ks_manifest),
# modification times, link counts, ACLs (access and default, numeric) and user.* extended
# attributes, and the holes of the sparse file.
ks_tree_facts() {
    { ks_manifest "$1"
      (cd "$1" && find . -mindepth 1 ! -type l | sort | while read -r f; do
          echo "$f mtime $(stat -c %Y "$f") links $(stat -c %h "$f")" \
               "acl $(getfacl -cpn "$f" 2>/dev/null | tr '\n' ' ')" \
               "xattr $(getfattr -hd -m '^user\.' "$f" 2>/dev/null | grep -v '^#' | tr '\n' ' ')"
      done)
    } | grep -v '^\./lost+found'
}

# Whether `backup list`'s text (in /tmp/ks-cmd.out) shows the name docs/evil<ESC>[2J with
# its ESC escaped, and holds no ESC byte at all.
ks_no_raw_escape() {
    grep -qF 'docs/evil\x1b[2J' /tmp/ks-cmd.out && ! grep -q "$(printf '\033')" /tmp/ks-cmd.out
}

# The entry of PATH in `backup list --json`'s output (in /tmp/ks-cmd.out), and what it says.
# (The JSON is pretty-printed: its lines are joined first.)
ks_listed() {
    tr -d '\n' < /tmp/ks-cmd.out | sed 's/": */":/g' | grep -o "{[^{}]*\"path\":\"$1\"[^{}]*}"
}
ks_listed_as() { ks_listed "$1" | grep -q "\"type\":\"$2\""; }
ks_stored_here() { ks_listed "$1" | grep -q '"stored":"here"'; }
ks_stored_earlier() { ks_listed "$1" | grep -q '"stored":"[0-9a-f]\{32\}"'; }

# Whether manifests $1 and $2 differ in no line but those of path $3 (busybox's diff writes
# unified diffs: a manifest line removed or added starts with -./ or +./).
ks_only_changed() {
    diff -U0 "$1" "$2" > /tmp/manifest.diff
    grep -q "^[-+]\./$3 " /tmp/manifest.diff || return 1
    ! grep '^[-+]\./' /tmp/manifest.diff | grep -v "^[-+]\./$3 " | grep -q .
}

guest_source() {
    ks_live_session
    ks_pass_file
    ks_backup_pass
    ks_expect_rc 0 "create stick A" -- keepsake create --device /dev/vda --yes --key-file "$KS_PASS_FILE" $KS_KDF
    ks_expect_rc 0 "unlock" -- keepsake unlock --key-file "$KS_PASS_FILE"
    ks_expect_rc 0 "enable gnupg and dotfiles" -- keepsake feature enable gnupg dotfiles
    local p=$KS_PERSISTENT
    mkdir -p $p/docs/deep $p/empty
    ks_in canary > $p/docs/note.txt
    { head -c 200000 /dev/urandom; ks_in canary; } > $p/docs/deep/big.bin
    # More than one 1 MiB batch, so that --threads 2 below seals on a worker and writes
    # the archive on the output thread (the guest has one CPU: the default is one thread).
    { head -c 3000000 /dev/urandom; ks_in canary; } > $p/docs/deep/three-mb.bin
    : > $p/docs/empty-file
    printf '#!/bin/sh\necho hi\n' > $p/docs/script.sh && chmod 0755 $p/docs/script.sh
    chmod 0600 $p/docs/note.txt && chmod 0640 $p/docs/empty-file
    ln -s note.txt $p/docs/link && ln -s /etc/hostname $p/docs/abs-link
    dd if=/dev/urandom of=$p/sparse.img bs=4096 count=2 seek=5000 2>/dev/null
    truncate -s 64M $p/sparse.img
    # A hard link, a user attribute, and access and default ACLs.
    ln $p/docs/deep/big.bin $p/docs/big-again.bin
    chown -R 1000:1000 $p
    chown 0:7 $p/docs/empty-file
    setfattr -n user.origin -v "kept-$(ks_random)" $p/docs/note.txt
    setfattr -n user.folder -v "a folder's" $p/docs/deep
    setfacl -m u:1000:rx,g:7:r $p/docs/script.sh
    setfacl -m u:1000:rwx $p/docs && setfacl -d -m u:1000:rwx,g:7:rx $p/docs
    touch -d "2021-06-01 12:00:00" $p/docs/note.txt $p/empty
    ks_in canary > /home/amnesia/.gnupg/pubring.kbx
    echo "set -o vi" > /live/persistence/TailsData_unlocked/dotfiles/.bashrc
    ks_tree_facts $KS_ROOT_MNT > /tmp/facts
    ks_out facts "$(sha256sum < /tmp/facts | cut -c1-64)"
    ks_log "the tree: $(wc -l < /tmp/facts) facts; sparse file uses $(stat -c %b $p/sparse.img) blocks for 64 MiB"
    # The facts see what they must keep (else a loss would go unseen).
    ks_assert "the facts hold the user attribute" grep -q 'user.origin="kept-' /tmp/facts
    ks_assert "the facts hold the default ACL" grep -q 'default:user:1000:rwx' /tmp/facts
    ks_assert "the facts hold the hard link's count" grep -q '^./Persistent/docs/big-again.bin mtime [0-9]* links 2' /tmp/facts

    ks_disk_fs hostdisk /media/hostdisk format
    ks_expect_rc 0 "backup to the host disk, on two threads" -- ks_timed backup keepsake --json backup /media/hostdisk/k.ksb --threads 2 --key-file /run/ks-test/bpass $KS_ARCHIVE_KDF
    ks_assert "the report lists the features" grep -q '"gnupg"' /tmp/ks-cmd.out
    ks_expect_rc 2 "backup over an existing file" -- keepsake backup /media/hostdisk/k.ksb --key-file /run/ks-test/bpass $KS_ARCHIVE_KDF
    ks_expect_rc 0 "backup verify" -- ks_timed verify keepsake backup verify /media/hostdisk/k.ksb --key-file /run/ks-test/bpass
    ks_expect_rc 0 "backup of one feature to stdout" -- sh -c "keepsake backup --feature gnupg - --key-file /run/ks-test/bpass $KS_ARCHIVE_KDF > /media/hostdisk/gnupg.ksb"
    ks_expect_rc 0 "it verifies from stdin" -- sh -c "keepsake backup verify - --key-file /run/ks-test/bpass < /media/hostdisk/gnupg.ksb"
    ks_assert "it holds only gnupg" sh -c "grep -q '^/media/hostdisk/gnupg.ksb\|gnupg' /tmp/ks-cmd.out && ! grep -q Persistent /tmp/ks-cmd.out"
    # Damaged copies: one flipped byte in the middle, the last chunk cut off.
    cp /media/hostdisk/k.ksb /media/hostdisk/flipped.ksb
    local size; size=$(stat -c %s /media/hostdisk/k.ksb)
    printf '\377' | dd of=/media/hostdisk/flipped.ksb bs=1 seek=$((size / 2)) conv=notrunc 2>/dev/null
    head -c $((size - 100)) /media/hostdisk/k.ksb > /media/hostdisk/truncated.ksb
    ks_expect_rc 7 "verify a flipped byte" -- keepsake backup verify /media/hostdisk/flipped.ksb --key-file /run/ks-test/bpass
    ks_expect_rc 7 "verify a truncated archive" -- keepsake backup verify /media/hostdisk/truncated.ksb --key-file /run/ks-test/bpass
    ks_expect_rc 3 "verify with a wrong passphrase" -- keepsake backup verify /media/hostdisk/k.ksb --key-file "$KS_PASS_FILE"

    # An incremental archive after a change: one file changed, one new, the rest as it was.
    ks_expect_rc 0 "list the full archive" -- keepsake --json backup list /media/hostdisk/k.ksb --key-file /run/ks-test/bpass
    ks_assert "it lists the second name as a hard link" ks_listed_as Persistent/docs/deep/big.bin hardlink
    { echo "changed $(ks_random)"; ks_in canary; } >> $p/docs/note.txt
    ks_in canary > $p/docs/new.txt && chown 1000:1000 $p/docs/new.txt
    # A name the live user chose, holding ESC: a listing must not hand it to root's terminal.
    echo "clear" > "$p/docs/evil$(printf '\033')[2J" && chown 1000:1000 $p/docs/evil*
    ks_tree_facts $KS_ROOT_MNT > /tmp/facts2
    ks_out facts2 "$(sha256sum < /tmp/facts2 | cut -c1-64)"
    ks_expect_rc 2 "an incremental after itself is refused" -- keepsake backup /media/hostdisk/x.ksb --since /media/hostdisk/x.ksb --key-file /run/ks-test/bpass
    ks_expect_rc 4 "an incremental after a missing archive is refused" -- keepsake backup /media/hostdisk/y.ksb --since /media/hostdisk/none.ksb --key-file /run/ks-test/bpass
    ks_expect_rc 3 "an incremental with another passphrase is refused" -- keepsake backup /media/hostdisk/y.ksb --since /media/hostdisk/k.ksb --key-file "$KS_PASS_FILE"
    ks_assert "and none of them left a file" sh -c '! ls /media/hostdisk/x.ksb* /media/hostdisk/y.ksb* 2>/dev/null | grep -q .'
    ks_expect_rc 0 "incremental backup" -- ks_timed incremental keepsake --json backup /media/hostdisk/inc.ksb --since /media/hostdisk/k.ksb --key-file /run/ks-test/bpass
    ks_log "full archive $(stat -c %s /media/hostdisk/k.ksb) bytes, incremental $(stat -c %s /media/hostdisk/inc.ksb) bytes"
    ks_assert "the incremental is small: the 3 MB file is not in it" test "$(stat -c %s /media/hostdisk/inc.ksb)" -lt 100000
    ks_expect_rc 0 "list the incremental" -- keepsake --json backup list /media/hostdisk/inc.ksb --key-file /run/ks-test/bpass
    ks_assert "the changed file is stored in it" ks_stored_here Persistent/docs/note.txt
    ks_assert "the unchanged one is in the full archive" ks_stored_earlier Persistent/docs/deep/three-mb.bin
    ks_expect_rc 0 "list the incremental as text" -- keepsake backup list /media/hostdisk/inc.ksb --key-file /run/ks-test/bpass
    ks_assert "the name holding ESC is listed escaped, and no ESC reaches the terminal" ks_no_raw_escape
    ks_expect_rc 0 "verify the chain" -- keepsake backup verify /media/hostdisk/inc.ksb --key-file /run/ks-test/bpass
    ks_assert "it says the full archive is intact too" grep -q "archives it is made after: /media/hostdisk/k.ksb" /tmp/ks-cmd.out
    # A chain with its full archive changed (a copy, beside a copy of the incremental), and
    # an incremental alone.
    mkdir -p /media/hostdisk/tamper /media/hostdisk/lone
    cp /media/hostdisk/k.ksb /media/hostdisk/inc.ksb /media/hostdisk/tamper/
    cp /media/hostdisk/inc.ksb /media/hostdisk/lone/
    printf '\377' | dd of=/media/hostdisk/tamper/k.ksb bs=1 seek=$((size / 2)) conv=notrunc 2>/dev/null
    ks_expect_rc 7 "verify a chain whose full archive was changed" -- keepsake backup verify /media/hostdisk/tamper/inc.ksb --key-file /run/ks-test/bpass
    ks_assert "the error names it" grep -q "tamper/k.ksb was changed" /tmp/ks-cmd.out
    ks_expect_rc 11 "verify an incremental without its full archive" -- keepsake backup verify /media/hostdisk/lone/inc.ksb --key-file /run/ks-test/bpass
    # A fifo at the full archive's name, as the live user could leave one in a folder of its
    # own: nobody writes to it, and opening it to read would wait for good.
    mkfifo /media/hostdisk/lone/k.ksb
    ks_expect_rc 11 "a fifo in place of the full archive is refused" -- \
        timeout 120 keepsake backup verify /media/hostdisk/lone/inc.ksb --key-file /run/ks-test/bpass
    ks_assert "at once, and it says why" grep -q "lone/k.ksb is not a regular file" /tmp/ks-cmd.out
    ks_expect_rc 2 "a fifo given as the archive is refused" -- \
        timeout 120 keepsake backup verify /media/hostdisk/lone/k.ksb --key-file /run/ks-test/bpass
    rm /media/hostdisk/lone/k.ksb
    ks_expect_rc 0 "lock" -- keepsake lock
    ks_in control > /media/hostdisk/control.txt
    sync && umount /media/hostdisk
}

guest_target() {
    ks_live_session
    ks_pass_file
    ks_backup_pass
    ks_disk_fs hostdisk /media/hostdisk
    ks_expect_rc 0 "create a fresh stick B" -- keepsake create --device /dev/vda --yes --key-file "$KS_PASS_FILE" $KS_KDF
    ks_expect_rc 0 "unlock" -- keepsake unlock --key-file "$KS_PASS_FILE"
    ks_manifest $KS_ROOT_MNT > /tmp/before
    ks_expect_rc 7 "restore a tampered archive" -- keepsake restore /media/hostdisk/flipped.ksb --key-file /run/ks-test/bpass
    ks_expect_rc 7 "restore a truncated archive" -- keepsake restore /media/hostdisk/truncated.ksb --key-file /run/ks-test/bpass
    ks_expect_rc 3 "restore with a wrong passphrase" -- keepsake restore /media/hostdisk/k.ksb --key-file "$KS_PASS_FILE"
    ks_expect_rc 11 "restore an incremental without its full archive" -- keepsake restore /media/hostdisk/lone/inc.ksb --key-file /run/ks-test/bpass
    ks_expect_rc 7 "restore an incremental whose full archive was changed" -- keepsake restore /media/hostdisk/tamper/inc.ksb --key-file /run/ks-test/bpass
    ks_manifest $KS_ROOT_MNT > /tmp/after
    ks_assert "the volume is exactly as before all five" cmp -s /tmp/before /tmp/after
    ks_assert "and no staging folder is left" sh -c "! ls -a $KS_ROOT_MNT | grep -q '^\.keepsake-'"
    ks_expect_rc 0 "restore --dry-run" -- keepsake restore --dry-run /media/hostdisk/k.ksb --key-file /run/ks-test/bpass
    ks_assert "the dry run names the folders" grep -q "would restore .*Persistent" /tmp/ks-cmd.out
    ks_manifest $KS_ROOT_MNT > /tmp/after
    ks_assert "and changed nothing" cmp -s /tmp/before /tmp/after
    # On two threads: small files and every file's owner, mode and time are written on
    # the finishing thread (the guest's one CPU would make the default one thread).
    ks_expect_rc 0 "restore, on two threads" -- ks_timed restore keepsake restore /media/hostdisk/k.ksb --threads 2 --key-file /run/ks-test/bpass
    ks_assert "nothing of the staging is left" sh -c "! ls -a $KS_ROOT_MNT | grep -q '^\.keepsake-'"
    rm -f $KS_ROOT_MNT/persistence.conf.before-restore
    ks_tree_facts $KS_ROOT_MNT > /tmp/facts
    ks_assert_eq "every name, owner, mode, size, content, link and time is back" \
        "$(sha256sum < /tmp/facts | cut -c1-64)" "$(ks_in facts_hash)"
    ks_assert "the sparse file is still sparse" test "$(stat -c %b $KS_PERSISTENT/sparse.img)" -lt 1000
    ks_assert "the active Persistent feature shows the restored files" grep -q KSBACKUP-canary $KS_PERSISTENT/docs/note.txt
    ks_expect_rc 5 "restore again without --overwrite" -- keepsake restore /media/hostdisk/k.ksb --key-file /run/ks-test/bpass
    ks_expect_rc 0 "restore one feature with --overwrite" -- keepsake restore --feature persistent --overwrite /media/hostdisk/k.ksb --key-file /run/ks-test/bpass
    ks_assert "the hard link is a link, not a copy" test $KS_PERSISTENT/docs/big-again.bin -ef $KS_PERSISTENT/docs/deep/big.bin

    # One file from the incremental: only it changes.
    ks_manifest $KS_ROOT_MNT > /tmp/m1
    ks_expect_rc 5 "restore --path over an existing file without --overwrite" -- keepsake restore --path Persistent/docs/note.txt /media/hostdisk/inc.ksb --key-file /run/ks-test/bpass
    ks_expect_rc 0 "restore --path of one changed file" -- keepsake restore --path Persistent/docs/note.txt --overwrite /media/hostdisk/inc.ksb --key-file /run/ks-test/bpass
    ks_manifest $KS_ROOT_MNT > /tmp/m2
    ks_assert "the file has its new content" grep -q '^changed ' $KS_PERSISTENT/docs/note.txt
    ks_assert "and nothing else changed" ks_only_changed /tmp/m1 /tmp/m2 Persistent/docs/note.txt
    ks_assert "the new file did not come with it" test ! -e $KS_PERSISTENT/docs/new.txt
    ks_assert "its attribute came with it" sh -c "getfattr -n user.origin $KS_PERSISTENT/docs/note.txt | grep -q kept-"
    # The whole incremental: the state after the change, changed and unchanged files alike.
    ks_expect_rc 0 "restore the incremental" -- ks_timed restore-incremental keepsake restore --overwrite /media/hostdisk/inc.ksb --key-file /run/ks-test/bpass
    rm -f $KS_ROOT_MNT/persistence.conf.before-restore
    ks_tree_facts $KS_ROOT_MNT > /tmp/facts2
    ks_assert_eq "every fact of the changed tree is back" \
        "$(sha256sum < /tmp/facts2 | cut -c1-64)" "$(ks_in facts2_hash)"
    ks_assert "the unchanged big file came from the full archive" grep -q KSBACKUP-canary $KS_PERSISTENT/docs/deep/three-mb.bin
    ks_expect_rc 0 "lock" -- keepsake lock
    ks_expect_rc 0 "unlock: the restored persistence.conf activates gnupg and dotfiles" -- keepsake unlock --key-file "$KS_PASS_FILE"
    ks_assert "gnupg is bound" grep -q KSBACKUP-canary /home/amnesia/.gnupg/pubring.kbx
    ks_assert "the dotfile is linked" test -L /home/amnesia/.bashrc
    ks_expect_rc 0 "lock" -- keepsake lock
    umount /media/hostdisk
}
