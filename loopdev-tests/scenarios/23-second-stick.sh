# A second stick kept up to date (`keepsake backup --to-device`): created on the spot on
# another live stick, then brought up to date with only what changed (bytes written to the
# stick measured), every file fact carried (owners, modes, times, symlinks, hard links,
# extended attributes, ACLs, holes). Stopped by SIGINT at spread points, the backup is the
# previous one, whole; cut by power cuts at random moments, each top-level folder is the
# previous backup or the new one, or the cut fell after the commit and the next backup
# finishes it first;
# while the live user rewrites files and swaps symlinks during a backup, every copy is one
# whole version (or named as changing) and nothing root-only is read through a link, in the
# sync and in an archive made meanwhile. Unlocked right after the cut at the commit, the
# backup stick's plan is carried out first, where the live user cannot reach the volume; an
# unlock killed (SIGKILL) half way through it leaves nothing lock does not take away, and
# the next unlock carries out the rest. A backup that would leave the stick too full to be
# finished once begun stops before its commit (exit 12), the previous backup kept whole.
# At the end the backup stick passes Tails' rules for
# persistence.conf and unlocks with keepsake as a working Persistent Storage holding exactly
# the source's files and facts.
#
# Power cuts at KS_SYNC_CUTS_MS (default "0 150 400 800 1400") ms after the backup makes its
# work folder (the host looks at the console every 200 ms, which adds up to that much):
# counted from the staging, not from the command's start, so that the first ones fall
# inside the staging however fast the machine is (nothing of it is on the disk yet), and
# the later ones around the commit and the plan carried out. One more cut falls right after
# the commit, once the journal holds it: the staged files must be on the disk then.

host_main() {
    local at=${KS_SYNC_CUTS_MS:-0 150 400 800 1400} cuts a b c=0 ms inside=0
    ks_set passphrase "source-$(ks_random)"
    ks_set backup_passphrase "backup-$(ks_random)"
    ks_set canary "KSSYNC-root-only-$(ks_random)"
    a=$(ks_live_stick usb 320M) || return 1
    b=$(ks_live_stick usb2 320M) || return 1
    ks_phase first "usb=$a" "usb2=$b" || return 1
    cuts=$(echo $at | wc -w)
    for ms in $at; do
        c=$((c + 1))
        ks_set prev_old "$(ks_get old_tops)"
        ks_set prev_new "$(ks_get new_tops)"
        KS_KILL_AFTER_MS=$ms ks_phase "cut.$c" "usb=$a" "usb2=$b" >"$KS_SCEN_DIR/cut.out" \
            2>>"$KS_SCEN_DIR/qemu-killed.log" || { cat "$KS_SCEN_DIR/cut.out"; return 1; }
        grep -v '^    ok ' "$KS_SCEN_DIR/cut.out"
        if grep -q '^KS-POWER-CUT' "$KS_SCEN_DIR/cut.$c.log"; then
            if grep -q '^KS-SYNC-DONE' "$KS_SCEN_DIR/cut.$c.log"; then
                ks_host_ok "power cut $c at ${ms} ms, after the backup finished"
            else
                inside=$((inside + 1))
                ks_host_ok "power cut $c at ${ms} ms into a backup"
            fi
        else
            ks_host_fail "cut $c: the backup never started, no power cut"
            return 1
        fi
    done
    [ $inside -ge 2 ] && ks_host_ok "$inside of $cuts power cuts fell inside a backup" \
        || ks_host_fail "only $inside of $cuts power cuts fell inside a backup: lower KS_SYNC_CUTS_MS"
    # The cut no timer reaches: just after the commit, its journal transaction written.
    ks_set prev_old "$(ks_get old_tops)"
    ks_set prev_new "$(ks_get new_tops)"
    ks_set at_commit 1
    KS_KILL_AFTER_MS=0 ks_phase cut.commit "usb=$a" "usb2=$b" >"$KS_SCEN_DIR/cut.out" \
        2>>"$KS_SCEN_DIR/qemu-killed.log" || { cat "$KS_SCEN_DIR/cut.out"; return 1; }
    grep -v '^    ok ' "$KS_SCEN_DIR/cut.out"
    grep -q '^KS-POWER-CUT' "$KS_SCEN_DIR/cut.commit.log" \
        && ks_host_ok "power cut just after a backup's commit" \
        || { ks_host_fail "the cut at the commit did not happen"; return 1; }
    ks_set at_commit 0
    ks_set expect_committed 1
    ks_set prev_old "$(ks_get old_tops)"
    ks_set prev_new "$(ks_get new_tops)"
    ks_phase final "usb=$a" "usb2=$b" || return 1
    tails_check_conf "the backup stick's persistence.conf" backup "PersistentDirectory,AdditionalSoftware,GnuPG,Dotfiles"
    ks_expect_hits "the root-only canary on the backup stick" "$b" "text:$(ks_get_in canary)" -eq 0
    ks_expect_hits "the backup passphrase on either stick" "$a" "text:$(ks_get_in backup_passphrase)" -eq 0
}

KS_BPASS=/run/ks-test/bpass
ks_backup_pass() {
    (umask 077; sed -n 's/^backup_passphrase=//p' /run/ks-test/in | tail -n 1 | tr -d '\n' > $KS_BPASS)
}

# Every fact of every entry below DIR (but lost+found and keepsake's own names), one line
# each, sorted: kind, owner, mode, mtime with nanoseconds, size and SHA-256 of a file, link
# target, every extended attribute (ACLs among them) in hex, and for a file with several
# names in the same top-level folder, the first of them. One stat, sha256sum and getfattr
# for the whole tree (the guest has one slow CPU); names hold no blanks.
ks_facts() {
    (cd "$1" && find . -mindepth 1 \( -path ./lost+found -o -path './.keepsake-*' \) -prune -o -print \
        | sort > /tmp/ff.list
    xargs stat -c '%n|%F|%u:%g %a %y|%s|%h %i' < /tmp/ff.list > /tmp/ff.stat
    grep '|regular' /tmp/ff.stat | cut -d'|' -f1 | xargs -r sha256sum > /tmp/ff.sum
    grep '|symbolic link' /tmp/ff.stat | cut -d'|' -f1 | while read -r f; do echo "$f $(readlink "$f")"; done > /tmp/ff.link
    xargs getfattr -h -d -m - -e hex < /tmp/ff.list 2>/dev/null \
        | awk '/^# file: / { cur = "./" substr($0, 9); next } $0 != "" { print cur " " $0 }' | sort > /tmp/ff.x)
    awk '
        FILENAME == "/tmp/ff.sum" { sum[$2] = $1; next }
        FILENAME == "/tmp/ff.link" { target[$1] = $2; next }
        FILENAME == "/tmp/ff.x" { x[$1] = x[$1] $2 " "; next }
        {
            split($0, f, "|"); path = f[1]; split(f[5], l, " "); split(path, pp, "/")
            line = path " " f[2] " " f[3]
            if (f[2] ~ /regular/) line = line " " f[4] " " sum[path]
            if (path in target) line = line " -> " target[path]
            line = line " [" x[path] "]"
            key = pp[2] " " l[2]
            if (f[2] ~ /regular/ && l[1] > 1) {
                if (key in first) line = line " same-as " first[key]; else first[key] = path
            }
            print line
        }' /tmp/ff.sum /tmp/ff.link /tmp/ff.x /tmp/ff.stat
}

# TOP=HASH for each top-level entry of DIR, comma-separated: the facts of each, hashed.
ks_top_hashes() {
    ks_facts "$1" > /tmp/tf
    for t in $(cut -d' ' -f1 /tmp/tf | cut -d/ -f2 | sort -u); do
        printf '%s=%s,' "$t" "$(grep "^\./$t[ /]" /tmp/tf | sha256sum | cut -c1-16)"
    done
}

# The backup volume opened by hand (the cryptsetup CLI), at /mnt/backup.
ks_backup_open() {
    mkdir -p /mnt/backup
    cryptsetup open --key-file $KS_BPASS /dev/vdb2 ks-check || ks_fail "cryptsetup open the backup"
    mount -t ext4 /dev/mapper/ks-check /mnt/backup || ks_fail "mount the backup"
}
ks_backup_close() {
    umount /mnt/backup && cryptsetup close ks-check || ks_fail "close the backup"
}

# ext4's lazy zeroing of the backup volume's inode tables, finished before the bytes the
# incremental backups write are measured. mkfs.ext4 leaves it to the kernel (keepsake's
# volumes like any other on dm-crypt), which zeroes one group's table at a time in the
# background whenever the volume is mounted, after a random delay of up to 5 s: a table
# here is 512 KiB less its inodes in use, and once it landed inside the backup of one
# changed 1 MiB file (1504 KiB written where other runs wrote 1061: 443 KiB, one group's
# table less 69 blocks in use). Mounted with init_itable=0 (no pause between groups) until
# dumpe2fs says every group is zeroed.
ks_backup_settle() {
    local waited=0 left
    cryptsetup open --key-file $KS_BPASS /dev/vdb2 ks-check || ks_fail "cryptsetup open the backup"
    ks_log "groups whose inode table the kernel has yet to zero: $(ks_groups_not_zeroed) of $(wc -l < /tmp/groups)"
    mkdir -p /mnt/backup
    mount -t ext4 -o init_itable=0 /dev/mapper/ks-check /mnt/backup || ks_fail "mount the backup"
    while left=$(ks_groups_not_zeroed) && [ "$left" != 0 ] && [ $waited -lt 120 ]; do
        sleep 1; waited=$((waited + 1))
    done
    umount /mnt/backup || ks_fail "unmount the backup"
    left=$(ks_groups_not_zeroed) || left="no group"
    cryptsetup close ks-check || ks_fail "close the backup"
    ks_assert "the backup volume's inode tables are zeroed before anything is measured (not zeroed: $left, after ${waited} s)" test "$left" = 0
}
# How many of the opened backup volume's groups dumpe2fs lists without ITABLE_ZEROED; fails
# when it lists none at all.
ks_groups_not_zeroed() {
    dumpe2fs /dev/mapper/ks-check 2>/dev/null | grep '^Group [0-9]' > /tmp/groups
    [ -s /tmp/groups ] || return 1
    grep -vc ITABLE_ZEROED /tmp/groups || true
}

# ks_old_or_new NOW OLD NEW: whether every top-level entry's hash in NOW is its hash in
# OLD or in NEW (TOP=HASH lists); prints those that are neither.
ks_old_or_new() {
    local now=$1 old=$2 new=$3 h t bad=""
    for t in $(echo "$now$old$new" | tr ',' '\n' | cut -d= -f1 | sort -u); do
        h=$(echo "$now" | tr ',' '\n' | sed -n "s/^$t=//p")
        if [ "$h" != "$(echo "$old" | tr ',' '\n' | sed -n "s/^$t=//p")" ] \
            && [ "$h" != "$(echo "$new" | tr ',' '\n' | sed -n "s/^$t=//p")" ]; then
            bad="$bad $t"
        fi
    done
    echo "$bad"
    [ -z "$bad" ]
}

ks_neither() { ! ks_old_or_new "$@" >/dev/null; }

# ks_each_top_old_or_new WHAT NOW OLD NEW: ks_old_or_new, or the phase fails.
ks_each_top_old_or_new() {
    local bad
    bad=$(ks_old_or_new "$2" "$3" "$4") || ks_fail "$1: neither the old backup nor the new:$bad"
    ks_ok "$1: each top-level folder is the old backup or the new ($(echo "$2" | tr ',' '\n' | grep -c .) folders)"
}

# ks_after_cut WHAT: the backup a power cut left, opened by hand as Tails would open it:
# each top-level folder is the old backup or the new one; or the cut fell after the commit
# (a plan is left, and some of its steps may be done), and then the next backup finishes it
# first (it says so) and the backup is the new one.
ks_after_cut() {
    local now committed=""
    ks_backup_open
    now=$(ks_top_hashes /mnt/backup)
    ks_log "left by the cut: $(ls -a /mnt/backup | grep '^\.keepsake-sync' | tr '\n' ' ')$(ls /mnt/backup/.keepsake-sync 2>/dev/null | wc -l) entries in it"
    [ -e /mnt/backup/.keepsake-sync/plan ] && committed=1
    ks_backup_close
    [ "$(ks_in expect_committed)" = 1 ] \
        && ks_assert "$1: the cut at the commit left the plan" test -n "$committed"
    if [ -z "$committed" ]; then
        ks_each_top_old_or_new "$1" "$now" "$(ks_in prev_old)" "$(ks_in prev_new)"
        return
    fi
    ks_log "$1: the cut fell after the commit"
    ks_expect_rc 0 "$1: the next backup" -- ks_sync
    ks_assert "$1: it finished the plan first" grep -q '"finished_interrupted"' /tmp/ks-cmd.out
    ks_backup_open
    ks_assert "$1: the backup is the new one" test "$(ks_top_hashes /mnt/backup)" = "$(ks_in prev_new)"
    ks_backup_close
}

# Sectors written to a disk since boot (/sys/block/DISK/stat, field 7).
ks_sectors_written() { awk '{print $7}' /sys/block/$1/stat; }

# The tree: a few hundred files in folders, two owners, modes, a setgid folder, empty
# files and folders, a sparse file, symlinks, hard links (one across two features),
# extended attributes and ACLs (access and default).
ks_populate() {
    local p=$KS_PERSISTENT i d
    for d in 1 2 3 4 5 6 7 8; do
        mkdir -p $p/tree/d$d/sub
        for i in $(seq 1 25); do head -c $((i * 997)) /dev/urandom > $p/tree/d$d/f$i; done
        head -c 1048576 /dev/urandom > $p/tree/d$d/sub/mib
    done
    mkdir -p $p/empty-folder $p/shared
    : > $p/empty-file
    dd if=/dev/urandom of=$p/sparse.img bs=4096 count=2 seek=3000 2>/dev/null && truncate -s 32M $p/sparse.img
    ln -s tree/d1/f1 $p/link && ln -s /etc/hostname $p/abs-link
    ln $p/tree/d1/f2 $p/tree/d2/f2-again
    setfattr -n user.origin -v "https://example.org" $p/tree/d1/f3
    setfattr -n user.tag -v folder $p/tree/d4
    setfacl -m u:1234:r $p/tree/d5/f5
    setfacl -d -m u:1234:rx $p/shared && setfacl -m u:1234:rwx $p/shared
    chown -R 1000:1000 $p
    chown 0:7 $p/tree/d6/f6 && chmod 0640 $p/tree/d6/f6
    chmod 2750 $p/tree/d7
    touch -d "2021-06-01 12:00:00.123456789" $p/tree/d8/f8
    echo "set -o vi" > $KS_ROOT_MNT/dotfiles/.bashrc
    ln $KS_ROOT_MNT/dotfiles/.bashrc $KS_ROOT_MNT/gnupg/bashrc-again
    echo "keyring" > /home/amnesia/.gnupg/pubring.kbx
}

# The backup to the second stick.
ks_sync() { keepsake --json backup --to-device /dev/vdb --key-file $KS_BPASS "$@"; }

guest_first() {
    ks_live_session
    ks_pass_file
    ks_backup_pass
    ks_expect_rc 4 "a backup with nothing unlocked" -- ks_sync
    ks_expect_rc 0 "create the source stick" -- keepsake create --device /dev/vda --yes --key-file "$KS_PASS_FILE" $KS_KDF
    ks_expect_rc 0 "unlock" -- keepsake unlock --key-file "$KS_PASS_FILE"
    ks_expect_rc 0 "enable gnupg and dotfiles" -- keepsake feature enable gnupg dotfiles
    ks_populate
    ks_facts $KS_ROOT_MNT > /tmp/source.facts
    ks_assert "the facts see the ACLs" grep -q 'system.posix_acl_default' /tmp/source.facts
    ks_assert "the facts see the hard link" grep -q 'f2-again.* same-as ./Persistent/tree/d1/f2' /tmp/source.facts

    ks_expect_rc 2 "the source stick as its own backup" -- keepsake backup --to-device /dev/vda --key-file $KS_BPASS
    local w0 w1 before
    ks_expect_rc 0 "create the backup stick and make the first backup" -- ks_timed first ks_sync --create --yes $KS_KDF
    ks_assert "every top-level folder is new" sh -c "grep -q '\"state\": \"new\"' /tmp/ks-cmd.out && ! grep -q '\"state\": \"unchanged\"' /tmp/ks-cmd.out"
    ks_assert "the backup volume is closed again" sh -c "! ls /dev/mapper | grep -q keepsake-backup"
    ks_assert "and unmounted" sh -c "! grep -q /run/keepsake/backup /proc/self/mountinfo"
    ks_backup_open
    ks_facts /mnt/backup > /tmp/backup.facts
    ks_backup_close
    diff /tmp/source.facts /tmp/backup.facts | head -20 | sed 's/^/KS-LOG diff: /'
    ks_assert "the backup holds every file with every fact ($(wc -l < /tmp/source.facts) entries)" cmp -s /tmp/source.facts /tmp/backup.facts
    ks_backup_settle

    before=$(sha256sum < /dev/vdb)
    ks_expect_rc 2 "--create again on a stick that has a persistence partition" -- ks_sync --create --yes $KS_KDF
    ks_expect_rc 3 "a wrong passphrase for the backup stick" -- keepsake backup --to-device /dev/vdb --key-file "$KS_PASS_FILE"
    ks_assert_eq "the second stick is untouched by both" "$(sha256sum < /dev/vdb)" "$before"
    # A container file the live user owns: root's files must not go where they can write.
    truncate -s 40M /home/amnesia/theirs.img
    cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
        --key-file $KS_BPASS /home/amnesia/theirs.img || ks_fail "luksFormat the live user's container"
    chown 1000:1000 /home/amnesia/theirs.img
    before=$(sha256sum < /home/amnesia/theirs.img)
    ks_expect_rc 8 "a backup into a container the live user could have written" -- \
        keepsake backup --to-device /home/amnesia/theirs.img --key-file $KS_BPASS
    ks_assert "the refusal says why" grep -q "someone other than root could have written" /tmp/ks-cmd.out
    ks_assert_eq "the container is untouched" "$(sha256sum < /home/amnesia/theirs.img)" "$before"
    rm /home/amnesia/theirs.img
    w0=$(ks_sectors_written vdb)
    ks_expect_rc 0 "a backup with nothing changed" -- ks_timed unchanged ks_sync
    w1=$(ks_sectors_written vdb)
    ks_assert "it copied nothing" grep -q '"files_copied": 0' /tmp/ks-cmd.out
    ks_log "nothing changed: $(( (w1 - w0) / 2 )) KiB written to the backup stick"
    ks_assert "it wrote less than 1 MiB" test $(( (w1 - w0) / 2 )) -lt 1024

    # 1 % of the tree's bytes: three 1 MiB files rewritten; a file added, one removed, a
    # mode and an attribute changed, a folder removed.
    local p=$KS_PERSISTENT
    for d in 1 2 3; do head -c 1048576 /dev/urandom > $p/tree/d$d/sub/mib; done
    echo new > $p/tree/d4/new-file && chown 1000:1000 $p/tree/d4/new-file
    rm $p/tree/d5/f7
    chmod 0600 $p/tree/d6/f9
    setfattr -n user.changed -v yes $p/tree/d7/f1
    rm -r $p/tree/d8
    ks_facts $KS_ROOT_MNT > /tmp/source.facts
    w0=$(ks_sectors_written vdb)
    ks_expect_rc 0 "a backup after 1 % changed" -- ks_timed incremental ks_sync
    w1=$(ks_sectors_written vdb)
    ks_log "$(sed -n 's/.*"files_copied": \([0-9]*\).*/\1/p' /tmp/ks-cmd.out) files copied, $(sed -n 's/.*"bytes_copied": \([0-9]*\).*/\1/p' /tmp/ks-cmd.out) bytes; $(( (w1 - w0) / 2 )) KiB written to the backup stick for 3 MiB changed"
    ks_assert "4 files copied (3 rewritten, 1 new)" grep -q '"files_copied": 4,' /tmp/ks-cmd.out
    ks_assert "2 given new facts in place (a mode, an attribute), 2 entries removed" \
        sh -c "grep -q '\"facts_set\": 2,' /tmp/ks-cmd.out && grep -Eq '\"removed\": 2(,|\$)' /tmp/ks-cmd.out"
    ks_assert "Persistent updated, the other folders unchanged" sh -c "test \$(grep -c '\"updated\"' /tmp/ks-cmd.out) = 1 && test \$(grep -c '\"unchanged\"' /tmp/ks-cmd.out) -ge 3"
    ks_assert "at most 2 x the changed bytes + 2 MiB written (the tree is 12 MiB)" test $(( (w1 - w0) / 2 )) -lt $((3 * 2048 + 2048))
    ks_backup_open
    ks_facts /mnt/backup > /tmp/backup.facts
    ks_backup_close
    diff /tmp/source.facts /tmp/backup.facts | head -20 | sed 's/^/KS-LOG diff: /'
    ks_assert "the backup follows: changes, additions, removals and facts" cmp -s /tmp/source.facts /tmp/backup.facts

    # One file rewritten deep in Persistent: that file alone is written (the mtime the
    # rename gave its folder set back), nothing else is touched.
    head -c 1048576 /dev/urandom > $p/tree/d3/sub/mib
    ks_facts $KS_ROOT_MNT > /tmp/source.facts
    w0=$(ks_sectors_written vdb)
    ks_expect_rc 0 "a backup after one file deep in Persistent changed" -- ks_timed deep ks_sync
    w1=$(ks_sectors_written vdb)
    ks_log "one 1 MiB file rewritten in Persistent/tree/d3/sub: $(( (w1 - w0) / 2 )) KiB written to the backup stick"
    ks_assert "it copied that file alone, removed nothing and set no facts" \
        sh -c "grep -q '\"files_copied\": 1,' /tmp/ks-cmd.out && grep -Eq '\"removed\": 0(,|\$)' /tmp/ks-cmd.out && grep -q '\"facts_set\": 0,' /tmp/ks-cmd.out"
    ks_assert "at most 1.25 x the changed bytes written" test $(( (w1 - w0) / 2 )) -lt 1280
    ks_backup_open
    ks_facts /mnt/backup > /tmp/backup.facts
    ks_backup_close
    diff /tmp/source.facts /tmp/backup.facts | head -20 | sed 's/^/KS-LOG diff: /'
    ks_assert "the backup follows, every folder's times included" cmp -s /tmp/source.facts /tmp/backup.facts

    ks_too_full_to_finish
    ks_live_user_during_a_backup
    ks_stops_at_spread_points
    # The state the first power cut starts from.
    ks_backup_open
    ks_out old_tops "$(ks_top_hashes /mnt/backup)"
    ks_out new_tops "$(ks_top_hashes /mnt/backup)"
    ks_backup_close
    ks_expect_rc 0 "lock" -- keepsake lock
}

# A backup stick filled (as root, in lost+found, which no backup touches) to ~300 blocks
# short of all root can take there: room for 100 new one-block files and the plan, not
# for what putting them in place may take at worst. The backup stops before its commit
# with exit 12 and says why; the stick keeps its previous backup, whole, with nothing of
# the run left. Without that check, a rename finding no room would fail at every later
# backup and unlock (the unit test shows it on loop ext4; here it runs on dm-crypt, the
# reserved clusters read from /sys/fs/ext4/dm-N).
ks_too_full_to_finish() {
    local p=$KS_PERSISTENT i d bs free resv= fill
    ks_backup_open
    ks_facts /mnt/backup > /tmp/backup-before.facts
    bs=$(stat -f -c %S /mnt/backup)
    free=$(stat -f -c %f /mnt/backup)
    for d in /sys/block/dm-*; do
        [ "$(cat $d/dm/name)" = ks-check ] && resv=$(cat /sys/fs/ext4/${d##*/}/reserved_clusters)
    done
    [ -n "$resv" ] || ks_fail "the backup volume's reserved clusters"
    fill=$(( (free - resv - 300) * bs / 1024 ))
    ks_log "backup volume: $free blocks of $bs bytes free, $resv reserved; filling $fill KiB"
    dd if=/dev/zero of=/mnt/backup/lost+found/filler bs=1048576 count=$((fill / 1024)) 2>/dev/null \
        && dd if=/dev/zero of=/mnt/backup/lost+found/filler bs=1024 seek=$((fill / 1024 * 1024)) \
            count=$((fill % 1024)) conv=notrunc 2>/dev/null || ks_fail "fill the backup volume"
    sync
    ks_log "left for root: $(( $(stat -f -c %f /mnt/backup) - resv )) blocks"
    ks_backup_close
    # Put one by one into a folder the backup has (a new folder would be one step).
    for i in $(seq 100 199); do echo x > $p/many-$i; done
    ks_expect_rc 12 "a backup that would leave the stick too full to finish it" -- ks_sync
    ks_assert "it says why, and that the stick keeps its previous backup" sh -c \
        "grep -q 'too little to be sure the backup can be finished once begun' /tmp/ks-cmd.out && grep -q 'keeps its previous backup, whole' /tmp/ks-cmd.out && grep -q '\"kind\":\"no-space\"' /tmp/ks-cmd.out"
    ks_backup_open
    ks_facts /mnt/backup > /tmp/backup.facts
    ks_assert "the stick holds its previous backup" cmp -s /tmp/backup-before.facts /tmp/backup.facts
    ks_assert "and nothing of the run" test ! -e /mnt/backup/.keepsake-sync
    rm /mnt/backup/lost+found/filler
    ks_backup_close
    rm $p/many-*
}

# The live user rewrites in place (truncate, then write), so each instant's content is a
# prefix of one version: a copy, FILE, must be one of those, never two versions mixed.
ks_one_version() { # LABEL FILE
    yes "$(head -n 1 "$2")" | head -n 30000 | head -c "$(stat -c %s "$2")" > /tmp/version
    ks_assert "$1 is what the file held at one moment: $(stat -c %s "$2") bytes of '$(head -n 1 "$2")'" \
        cmp -s /tmp/version "$2"
}

# True if no regular file under DIR holds the root-only canary; those that do are named.
# Not grep -r: busybox's follows symlinks, and a symlink kept as a symlink (the live
# user's swap, pointing at root's secret) is what a backup must do, not a leak.
ks_no_canary_in() { # DIR
    ! find "$1" -type f -exec grep -q -F "$(ks_in canary)" {} \; -print | grep .
}

# What a copy of the live user's swap is, if it caught one: a symlink or a plain file.
ks_swap_seen() { # PATH WHOSE
    if [ -L "$1" ]; then ks_log "$2 caught the swap as a symlink to $(readlink "$1")"
    elif [ -e "$1" ]; then ks_log "$2 caught the swap as a file: $(head -c 40 "$1")"
    fi
}

# The live user rewrites files and swaps a symlink in and out while a backup runs.
ks_live_user_during_a_backup() {
    local p=$KS_PERSISTENT f rc
    mkdir -p $p/churn && chown 1000:1000 $p/churn
    (umask 077; ks_in canary > /root/secret)
    rm -f /tmp/writer.stop
    # A symlink to root's secret that stays: both copies must keep it as a symlink, and the
    # canary check must not count it (a check that follows it goes red here every time).
    /usr/bin/setpriv --reuid 1000 --regid 1000 --clear-groups ln -s /root/secret $p/churn/link
    # It stops between two rounds when told, with no symlink left half way through one.
    /usr/bin/setpriv --reuid 1000 --regid 1000 --clear-groups sh -c "
        i=0
        while [ ! -e /tmp/writer.stop ]; do
            i=\$((i + 1))
            for f in 1 2 3; do yes \"version \$i\" | head -n 30000 > $p/churn/f\$f; done
            ln -s /root/secret $p/churn/swap; rm -f $p/churn/swap
            echo plain > $p/churn/swap; rm -f $p/churn/swap
        done" 2>/tmp/writer.err &
    local writer=$! i=0
    # Up to 10 s for its first file: the guest is slow when the host is busy.
    while [ ! -s $p/churn/f1 ] && [ $i -lt 100 ]; do usleep 100000; i=$((i + 1)); done
    ks_assert "the live user is writing" test -s $p/churn/f1
    ks_expect_rc 0 "a backup while the live user rewrites files and swaps a symlink" -- ks_sync
    cp /tmp/ks-cmd.out /tmp/ks-sync.out
    # The archive's walk too: it holds each file open from its listing to its data, and a
    # second thread opens files ahead of the listing. It reads each file once: one read
    # while the file was rewritten is named in its report.
    ks_expect_rc 0 "an archive while the live user does the same" -- \
        keepsake backup /tmp/churn.ksb --key-file $KS_BPASS --archive-kdf-memory 8192 --archive-kdf-iterations 1
    cp /tmp/ks-cmd.out /tmp/ks-archive.out
    touch /tmp/writer.stop; wait $writer
    ks_backup_open
    for f in 1 2 3; do
        if grep -q "churn/f$f" /tmp/ks-sync.out; then
            ks_log "churn/f$f was named as changing every time it was copied"
        else
            ks_one_version "churn/f$f" /mnt/backup/Persistent/churn/f$f
        fi
    done
    ks_swap_seen /mnt/backup/Persistent/churn/swap "the backup"
    ks_assert_eq "the backup keeps the live user's symlink to root's secret" \
        "$(readlink /mnt/backup/Persistent/churn/link)" /root/secret
    ks_assert "nothing root-only was read through the live user's symlink" ks_no_canary_in /mnt/backup
    ks_backup_close
    # The archive's copy of churn, put back in its place: the same two checks.
    ks_expect_rc 0 "restore churn from the archive" -- \
        keepsake restore /tmp/churn.ksb --path Persistent/churn --overwrite --key-file $KS_BPASS
    for f in 1 2 3; do
        local b=$p/churn/f$f
        [ -e $b ] || { ks_log "churn/f$f was left out of the archive"; continue; }
        if grep -q "churn/f$f" /tmp/ks-archive.out; then
            ks_log "archive: $(grep "churn/f$f" /tmp/ks-archive.out | head -n 1)"
            continue
        fi
        ks_one_version "archived churn/f$f" $b
    done
    ks_swap_seen $p/churn/swap "the archive"
    ks_assert_eq "the archive gives back the live user's symlink to root's secret" "$(readlink $p/churn/link)" /root/secret
    ks_assert "nothing root-only was read into the archive through the live user's symlink" ks_no_canary_in $p/churn
    rm -rf $p/churn /tmp/churn.ksb
    ks_expect_rc 0 "the next backup" -- ks_sync
}

# SIGINT, SIGTERM and SIGHUP at spread points of a backup that has 10 MiB to copy: the
# backup is the old one whole (stopped) or the new one (finished), nothing of the run is
# left, the exit status and the message say which.
ks_stops_at_spread_points() {
    local p=$KS_PERSISTENT at ms sig rc old new now stopped=0 round=0 halfway
    for at in 0:INT 20:TERM 40:HUP 70:INT 100:TERM 1500:HUP; do
        ms=${at%:*} sig=${at#*:}
        round=$((round + 1)) halfway=""
        for d in 1 2 3 4 5 6 7; do
            head -c 1048576 /dev/urandom > $p/tree/d$d/sub/mib
            head -c 450000 /dev/urandom > $p/tree/d$d/f25
        done
        echo "round $round" > $KS_ROOT_MNT/dotfiles/.bashrc
        ks_backup_open
        old=$(ks_top_hashes /mnt/backup)
        ks_backup_close
        new=$(ks_top_hashes $KS_ROOT_MNT)
        # The signal as sudo delivers it, counted from when the work folder appears.
        /hostile/signal-after --seen /run/keepsake/backup .keepsake-sync "$ms" "$sig" \
            keepsake --json backup --to-device /dev/vdb --key-file $KS_BPASS > /tmp/ks-stop.out 2>&1
        rc=$?
        case $sig:$rc in
            INT:130|TERM:143|HUP:129)
                 if grep -q "after the command had finished; it is complete" /tmp/ks-stop.out; then
                     ks_log "SIG$sig at $ms ms came after the backup was complete"
                 elif grep -q "keeps its previous backup, whole" /tmp/ks-stop.out; then
                     stopped=$((stopped + 1)) halfway=1
                 else
                     cat /tmp/ks-stop.out; ks_fail "SIG$sig at $ms ms: the message does not say what the backup holds"
                 fi ;;
            *:0) ;;
            *) cat /tmp/ks-stop.out; ks_fail "SIG$sig at $ms ms: exit $rc" ;;
        esac
        ms="SIG$sig at $ms ms"
        ks_backup_open
        now=$(ks_top_hashes /mnt/backup)
        ks_assert "$ms (exit $rc): nothing of the run is left" sh -c "! ls -a /mnt/backup | grep -q '^\.keepsake-sync'"
        ks_backup_close
        ks_each_top_old_or_new "$ms (exit $rc)" "$now" "$old" "$new"
        if [ -n "$halfway" ]; then
            ks_assert "$ms: stopped half way, the old backup, whole" test "$now" = "$old"
        else
            ks_assert "$ms: finished, the new backup" test "$now" = "$new"
        fi
    done
    ks_assert "at least 4 of 6 backups were stopped half way ($stopped)" test $stopped -ge 4
    ks_expect_rc 0 "the backup after them" -- ks_sync
    ks_backup_open
    ks_assert "it is the new one" test "$(ks_top_hashes /mnt/backup)" = "$(ks_top_hashes $KS_ROOT_MNT)"
    # Negative control: one file of the backup changed by hand is told from both.
    local old_tops; old_tops=$(ks_top_hashes /mnt/backup)
    echo tampered >> /mnt/backup/Persistent/tree/d2/f3
    ks_assert "negative control: a backup changed by hand is neither old nor new" \
        ks_neither "$(ks_top_hashes /mnt/backup)" "$old_tops" "$(ks_top_hashes $KS_ROOT_MNT)"
    ks_backup_close
    ks_expect_rc 0 "the next backup repairs it" -- ks_sync
    ks_assert "it copied the one file back" grep -q '"files_copied": 1,' /tmp/ks-cmd.out
    ks_assert "and touched nothing else" sh -c "grep -Eq '\"removed\": 0(,|\$)' /tmp/ks-cmd.out && grep -q '\"facts_set\": 0,' /tmp/ks-cmd.out"
}

# One power cut: the backup the last cut left is checked, the source changed, then a
# backup starts and the host cuts the power.
guest_cut() {
    ks_live_session
    ks_pass_file
    ks_backup_pass
    # Two sticks with a persistence partition, and no live medium mounted to prefer.
    ks_expect_rc 0 "unlock" -- keepsake unlock --device /dev/vda --key-file "$KS_PASS_FILE"
    ks_after_cut "after the power cut"
    ks_backup_open
    local now; now=$(ks_top_hashes /mnt/backup)
    ks_backup_close
    local p=$KS_PERSISTENT d
    for d in 1 2 3 4 5 6 7; do head -c 1048576 /dev/urandom > $p/tree/d$d/sub/mib; done
    date > $KS_ROOT_MNT/dotfiles/.bashrc
    date > $KS_ROOT_MNT/gnupg/note
    sync
    ks_out old_tops "$now"
    ks_out new_tops "$(ks_top_hashes $KS_ROOT_MNT)"
    [ "$(ks_in at_commit)" = 1 ] && ks_cut_at_commit
    # The host's clock starts when the backup's first folder build appears.
    ks_sync > /tmp/ks-cut.out 2>&1 &
    local pid=$!
    while kill -0 $pid 2>/dev/null \
        && ! ls -a /run/keepsake/backup 2>/dev/null | grep -q '^\.keepsake-sync$'; do
        usleep 5000
    done
    echo "KS-WRITING"
    wait $pid || { cat /tmp/ks-cut.out; ks_fail "the backup failed before the cut"; }
    echo "KS-SYNC-DONE"
    sleep 600
}

# The backup stopped just after its commit (strace holds the plan's rename, the first
# rename in the work folder, on its way out; glibc makes renameat2 with no flags renameat), the journal transaction holding the rename
# written as ext4's 5-second timer would (an fsync of the work folder, which writes no
# file's data), then the power cut. Every staged file must be on the disk already: the
# next phase checks that the backup the plan makes is the new one, byte for byte.
ks_cut_at_commit() {
    local work=/run/keepsake/backup/.keepsake-sync pid i=0 staged
    strace -f -qq -o /dev/null -P $work -e trace=renameat,renameat2 \
        -e inject=renameat,renameat2:delay_exit=60000000:when=1 \
        keepsake --json backup --to-device /dev/vdb --key-file $KS_BPASS > /tmp/ks-cut.out 2>&1 &
    pid=$!
    while kill -0 $pid 2>/dev/null && [ ! -e $work/plan ] && [ $i -lt 6000 ]; do
        usleep 20000; i=$((i + 1))
    done
    [ -e $work/plan ] || { cat /tmp/ks-cut.out; ks_fail "the backup never reached its commit"; }
    staged=$(ls $work | grep -c '^n\.')
    sync $work || ks_fail "fsync of the work folder"
    ks_assert "the backup is held just after its commit: $staged entries staged, none put in place" \
        test "$staged $(ls $work | grep -c '^n\.') $(ls $work | grep -c '^g\.')" = "$staged $staged 0"
    echo "KS-WRITING"
    sleep 600
}

# ks_hold_unlock_at_the_plan: `keepsake unlock` of the backup stick started under strace,
# which holds it 20 s on its way out of the plan's first rename (the first step not done
# yet), then waited for until it is held there. Sets H_PID (strace's pid) and H_AT (the work
# folder it is held in, empty if it never was).
ks_hold_unlock_at_the_plan() {
    local before i=0 work
    ks_backup_open
    ks_assert "the cut at the commit left the plan" test -e /mnt/backup/.keepsake-sync/plan
    before=$(ls -a /mnt/backup/.keepsake-sync | md5sum)
    ks_backup_close
    strace -qq -o /dev/null -P /run/keepsake/finishing-TailsData_unlocked/.keepsake-sync \
        -P $KS_ROOT_MNT/.keepsake-sync -e trace=renameat,renameat2 \
        -e inject=renameat,renameat2:delay_exit=20000000:when=1 \
        keepsake unlock --device /dev/vdb --key-file $KS_BPASS > /tmp/ks-unlock.out 2>&1 &
    H_PID=$! H_AT=""
    while kill -0 $H_PID 2>/dev/null && [ $i -lt 3000 ]; do
        for work in /run/keepsake/finishing-TailsData_unlocked/.keepsake-sync $KS_ROOT_MNT/.keepsake-sync; do
            [ -d $work ] && [ "$(ls -a $work | md5sum)" != "$before" ] && H_AT=$work && break 2
        done
        usleep 20000; i=$((i + 1))
    done
    ks_assert "unlock is held after the plan's first step (in ${H_AT:-no work folder})" test -n "$H_AT"
}

# SIGKILL of unlock while it carries out the plan: nothing can roll back. What it leaves
# (the volume open, mounted on unlock's own folder in /run/keepsake, no record of it) is
# what lock must take away, and the next unlock must carry out the rest of the plan
# (ks_unlock_finishes_the_plan, next).
ks_unlock_killed_while_finishing() {
    local child
    ks_hold_unlock_at_the_plan
    child=$(cat /proc/$H_PID/task/$H_PID/children 2>/dev/null)
    ks_assert "keepsake unlock runs under strace (pid ${child:-none})" test -n "$child"
    kill -KILL $child
    wait $H_PID
    ks_assert "the SIGKILL left the volume mounted on unlock's own folder" \
        grep -q ' /run/keepsake/finishing-TailsData_unlocked ' /proc/mounts
    ks_expect_rc 0 "lock after the SIGKILL" -- keepsake lock
    ks_assert "lock took away the volume and every mount of it" \
        sh -c '! ls /dev/mapper | grep -q TailsData && ! grep -q finishing- /proc/mounts'
}

# The backup stick the cut at the commit left, unlocked as the one Persistent Storage
# before any backup runs again: unlock carries out the plan first, and where the live user
# cannot reach the volume, since the plan's steps act on names in the live user's folders.
# strace holds the plan's first rename (wherever the work folder is mounted) while the live
# user looks for its Persistent folder; then what shows is the new backup. (Not `strace -f`:
# the watcher unlock leaves running would keep strace, and this wait, going.)
ks_unlock_finishes_the_plan() {
    local now
    ks_hold_unlock_at_the_plan
    ks_assert "the volume is not mounted at its mount root meanwhile" \
        sh -c '! grep -q " $1 " /proc/mounts' - $KS_ROOT_MNT
    ks_assert "while unlock carries out the plan, the live user cannot reach the volume" \
        sh -c '! /usr/bin/setpriv --reuid 1000 --regid 1000 --clear-groups ls "$1/Persistent" >/dev/null 2>&1' - $KS_ROOT_MNT
    wait $H_PID || { cat /tmp/ks-unlock.out; ks_fail "unlock of the backup stick after the cut"; }
    ks_assert "unlock finished the backup the cut had stopped" \
        grep -q "finished a backup to this volume that had been stopped half way" /tmp/ks-unlock.out
    ks_assert "and left no mount or folder of its own for it" \
        sh -c '! ls -d /run/keepsake/finishing-* 2>/dev/null && ! grep -q finishing- /proc/mounts'
    now=$(ks_top_hashes $KS_ROOT_MNT)
    ks_assert "what the backup stick shows is the new backup" test "$now" = "$(ks_in prev_new)"
    ks_expect_rc 0 "lock the backup stick" -- keepsake lock
}

guest_final() {
    ks_live_session
    ks_pass_file
    ks_backup_pass
    ks_unlock_killed_while_finishing
    ks_unlock_finishes_the_plan
    ks_expect_rc 0 "unlock" -- keepsake unlock --device /dev/vda --key-file "$KS_PASS_FILE"
    ks_expect_rc 0 "a backup after the cuts" -- ks_sync
    ks_assert "it removed what the cut left, if anything" true
    ks_facts $KS_ROOT_MNT > /tmp/source.facts
    ks_backup_open
    ks_facts /mnt/backup > /tmp/backup.facts
    tails_hand_back backup /mnt/backup/persistence.conf
    # ext4's own rule, which decides when a commit syncs the whole volume: a symlink
    # target of 59 bytes is kept in the inode, one of 60 in a block of its own.
    local t59 blocks
    t59=$(head -c 59 /dev/zero | tr '\0' x)
    ln -s "$t59" /mnt/backup/.keepsake-check-59 && ln -s "${t59}x" /mnt/backup/.keepsake-check-60
    blocks=$(stat -c '%s:%b' /mnt/backup/.keepsake-check-59 /mnt/backup/.keepsake-check-60 | tr '\n' ' ')
    ks_assert "ext4 keeps a 59-byte symlink target in the inode, a 60-byte one in a block ($blocks)" \
        sh -c 'case "$1" in "59:0 60:0 ") exit 1 ;; "59:0 60:"*) exit 0 ;; *) exit 1 ;; esac' - "$blocks"
    rm /mnt/backup/.keepsake-check-59 /mnt/backup/.keepsake-check-60
    ks_backup_close
    diff /tmp/source.facts /tmp/backup.facts | head -20 | sed 's/^/KS-LOG diff: /'
    ks_assert "the backup holds every file with every fact" cmp -s /tmp/source.facts /tmp/backup.facts
    ks_expect_rc 0 "lock the source" -- keepsake lock
    # The backup stick as the one Persistent Storage: keepsake unlocks it, as Tails would.
    ks_expect_rc 0 "unlock the backup stick" -- keepsake unlock --device /dev/vdb --key-file $KS_BPASS
    ks_facts $KS_ROOT_MNT > /tmp/restored.facts
    diff /tmp/source.facts /tmp/restored.facts | head -20 | sed 's/^/KS-LOG diff: /'
    ks_assert "unlocked, it is the source: bytes and facts" cmp -s /tmp/source.facts /tmp/restored.facts
    ks_assert "its Persistent folder is bound" test -s $KS_PERSISTENT/tree/d1/sub/mib
    ks_assert "its gnupg is bound" grep -q keyring /home/amnesia/.gnupg/pubring.kbx
    ks_assert "its dotfiles are linked" test -L /home/amnesia/.bashrc
    ks_expect_rc 0 "lock the backup stick" -- keepsake lock
    ks_lock_is_clean
}
