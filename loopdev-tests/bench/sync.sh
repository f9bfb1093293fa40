# Guest side of loopdev-tests/bench/sync: backups of one unlocked keepsake volume onto
# second sticks, by keepsake and by the usual tools, side by side in one boot.
#
# Each round: every contender makes a first backup of the source volume; 1 % of the files
# change at random (mut-R.tar and mut-R.sh from the seed disk) and every contender makes an
# incremental backup ("inc"); then 1 % of the files change within one sub-folder of
# Persistent (clus-R.tar and clus-R.sh) and every contender makes another ("clus"). After
# each incremental one (with verify), each backup is read back and compared with the source.
# Each measurement is printed as KS-OUT sample=CONTENDER first|inc|clus ROUND MS WRITTEN
# READ: its wall time with cold caches up to the end of a `sync`, the bytes written to the
# backup stick's disk and read from the source stick's disk (/sys/block/<disk>/stat, sectors
# of 512 bytes).
#
# shellcheck shell=dash disable=SC2086,SC2015
# (Option lists such as $KS_KDF are split on purpose; "a && b || fail" fails if either fails.)

SY_SRC=$KS_ROOT_MNT
SY_BPASS=/run/ks-test/bpass
SY_SEED=/dev/disk/by-serial/seed
SY_ARCHIVE_KDF="--archive-kdf-memory 8192 --archive-kdf-iterations 1"
# The bare LUKS2 volume rsync writes to: what keepsake makes (LUKS2, aes-xts-plain64 with a
# 512-bit key, argon2id, ext4 labelled TailsData), with keepsake's test KDF cost ($KS_KDF).
SY_BARE_KDF="--pbkdf argon2id --pbkdf-memory 8192 --pbkdf-force-iterations 4 --pbkdf-parallel 1"
SY_TAR_CREATE="--xattrs --acls"
SY_TAR_EXTRACT="--xattrs --xattrs-include=* --acls --numeric-owner -p"
export RESTIC_PASSWORD_FILE=$SY_BPASS
# The guest's busybox shell runs its own applets before anything on PATH: GNU tar and find
# (which bench/sync copies in) by their full names.
SY_TAR=/usr/bin/tar
SY_FIND=/usr/bin/find

sy_ns() { /usr/bin/date +%s%N; }
sy_disk() { basename "$(readlink -f "/dev/disk/by-serial/$1")"; }
# The backup stick's partition: 2 on the sticks laid out as a live stick, 1 on the others.
sy_part() { echo "/dev/$(sy_disk "$1")$2"; }
sy_sectors() { awk -v f="$2" '{print $f}' "/sys/block/$(sy_disk "$1")/stat"; }

sy_cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# measure CONTENDER KIND ROUND SERIAL COMMAND...: COMMAND and a `sync`, from cold caches.
measure() {
    local c=$1 kind=$2 r=$3 serial=$4 t0 t1 w0 w1 r0 r1 rc; shift 4
    sy_cold
    w0=$(sy_sectors "$serial" 7); r0=$(sy_sectors src 3)
    t0=$(sy_ns)
    "$@" >/tmp/sy-cmd.out 2>&1
    rc=$?
    sync
    t1=$(sy_ns)
    w1=$(sy_sectors "$serial" 7); r1=$(sy_sectors src 3)
    if [ "$rc" -ne 0 ]; then
        sed 's/^/    | /' /tmp/sy-cmd.out | tail -n 20
        echo "KS-FAIL $c $kind (round $r): exit $rc: $*"
        echo "KS-OUT failed=$c $kind $r $rc"
        return 1
    fi
    echo "KS-OUT sample=$c $kind $r $(( (t1 - t0) / 1000000 )) $(( (w1 - w0) * 512 )) $(( (r1 - r0) * 512 ))"
    ks_ok "$c $kind (round $r): $(( (t1 - t0) / 1000000 )) ms, $(( (w1 - w0) / 2048 )) MiB written"
}

# A part's time (and bytes) inside a measurement (rsync alone; making rsync's volume):
# kept in a file, since measure sends the command's output to one; printed at the end.
sy_part_time() { echo "part=$*" >> /tmp/sy-parts; }

# What a backup must carry, one fact a line: each name with its type, owner, mode, size,
# mtime (whole seconds: the tree's times are whole seconds, GNU tar's would be too), link
# target and hard-link group; each file's content hash; each extended attribute, POSIX ACLs
# included (system.posix_acl_*), in hex. lost+found and keepsake's restore leftover are
# not part of the tree.
sy_find() { $SY_FIND . -mindepth 1 \( -path ./lost+found -o -name persistence.conf.before-restore \) -prune -o "$@"; }
sy_manifest() {
    (cd "$1" || exit 1
     sy_find -printf '%p\t%y\t%U:%G\t%m\t%s\t%T@\t%n\t%i\t%l\n' | LC_ALL=C sort | awk -F '\t' '{
         split($6, t, "."); size = $2 == "f" ? $5 : "-"; link = ""
         if ($2 == "f" && $7 > 1) {
             if (!($8 in first)) { first[$8] = $1; link = "links " $7 } else link = "hard link to " first[$8]
         }
         print "name " $1 " " $2 " " $3 " " $4 " " size " " t[1] " " $9 " " link }'
     sy_find -type f -print0 | xargs -0 -r /usr/bin/b2sum -l 128 | awk '{print "data " $0}' | LC_ALL=C sort
     getfattr -R -P -d -m - -e hex --absolute-names . 2>/dev/null | awk '
         /^# file: / { f = substr($0, 9); next }
         /=/ && f != "." && f !~ /^\.\/lost\+found/ && f !~ /persistence\.conf\.before-restore$/ { print "xattr " f " " $0 }' \
         | LC_ALL=C sort)
}

# sy_compare CONTENDER ROUND KIND DIR: DIR's manifest against the source's of this round.
sy_compare() {
    local n x l
    sy_manifest "$4" > /tmp/sy-bk.manifest
    diff /tmp/sy-src.manifest /tmp/sy-bk.manifest > /tmp/sy-diff
    n=$(grep -c '^[-+][a-z]' /tmp/sy-diff)
    x=$(grep -c '^[-+]xattr ' /tmp/sy-diff)
    l=$(grep '^[-+]name ' /tmp/sy-diff | grep -c ' links \| hard link to ')
    echo "KS-OUT verify=$1 $2 $3 $n $x $l $(wc -l < /tmp/sy-bk.manifest)"
    if [ "$n" -eq 0 ]; then
        ks_ok "$1 (round $2, $3): the backup holds the source, every fact of $(wc -l < /tmp/sy-bk.manifest)"
    else
        echo "KS-FAIL $1 (round $2, $3): $n facts differ ($x of extended attributes or ACLs, $l of hard links); the first:"
        grep '^[-+][a-z]' /tmp/sy-diff | head -n 12 | sed 's/^/    | /'
    fi
}

# ---- the contenders: reset (untimed, at the start of a round), first, inc, verify -----
# (inc and verify take the round and the kind of change: inc or clus.)

# keepsake's second-stick sync: the first time onto a stick laid out as a live stick, where
# --create adds the persistence partition (partition 2), then onto the same stick.
ks_sync_reset() { sy_drop_partition bksync; }
ks_sync_first() {
    measure keepsake-sync first "$1" bksync keepsake --json backup --to-device "/dev/$(sy_disk bksync)" --create --yes --key-file "$SY_BPASS" $KS_KDF \
        && sy_sync_report first "$1"
}
ks_sync_inc() {
    measure keepsake-sync "$2" "$1" bksync keepsake --json backup --to-device "/dev/$(sy_disk bksync)" --key-file "$SY_BPASS" \
        && sy_sync_report "$2" "$1"
}
ks_sync_verify() { sy_verify_luks keepsake-sync "$1" "$2" "$(sy_part bksync 2)"; }
# What keepsake's JSON report says it copied, and what else it did: entries removed, and
# entries given new facts in place.
sy_sync_report() {
    local n
    n() { sed -n "s/.*\"$1\": *\([0-9]*\).*/\1/p" /tmp/sy-cmd.out | head -n 1; }
    sy_part_time keepsake-sync-copied "$1" "$2" "$(n files_copied)" "$(n bytes_copied)"
    echo "did=$1 $2 $(n removed) removed, $(n facts_set) given new facts in place" >> /tmp/sy-parts
}

# Back to a stick with only its live system's partition: the persistence partition's
# start (the LUKS2 headers) zeroed, the partition deleted.
sy_drop_partition() {
    local part
    part=$(sy_part "$1" 2)
    [ -b "$part" ] || return 0
    dd if=/dev/zero of="$part" bs=1M count=32 conv=fsync 2>/dev/null
    sfdisk -q --delete "/dev/$(sy_disk "$1")" 2 >/dev/null 2>&1 || ks_fail "delete partition 2 of $1"
    sy_wait test ! -b "$part" || ks_fail "$part is still there"
}

# sy_wait COMMAND...: until COMMAND succeeds, for at most 5 s.
sy_wait() {
    local n=0
    while [ $n -lt 50 ]; do "$@" && return 0; sleep 0.1; n=$((n + 1)); done
    return 1
}

sy_verify_luks() {
    mkdir -p /mnt/verify
    cryptsetup open --readonly --key-file "$SY_BPASS" "$4" verify || { echo "KS-FAIL $1: cannot open $4"; return 1; }
    mount -o ro /dev/mapper/verify /mnt/verify || { cryptsetup close verify; echo "KS-FAIL $1: cannot mount"; return 1; }
    sy_compare "$1" "$2" "$3" /mnt/verify
    umount /mnt/verify; cryptsetup close verify
}

# rsync between the unlocked volume and a bare LUKS2 volume, opened and mounted by hand: the
# first time on a new partition of a stick laid out as a live stick, with a new volume
# (sfdisk + luksFormat + mkfs.ext4), as keepsake's --create does. rsync-staged is the same
# with --delay-updates: every update is written beside its target first and all are
# renamed into place at the end, the pattern of keepsake's staging and commit (which a
# plain rsync, writing and renaming one file after the other, does not follow).
rsync_reset() { sy_drop_partition bkrsync; }
rsync_staged_reset() { sy_drop_partition bkrsyncs; }
# sy_rsync KIND ROUND [STICK [NAME [OPTION...]]]: one rsync run onto STICK (default bkrsync),
# whose times are kept under NAME (default rsync).
sy_rsync() {
    local kind=$1 r=$2 stick=${3:-bkrsync} name=${4:-rsync} disk part t0 w0 rc
    shift 2; [ $# -gt 0 ] && shift; [ $# -gt 0 ] && shift
    disk=/dev/$(sy_disk "$stick"); part=$(sy_part "$stick" 2)
    t0=$(sy_ns); w0=$(sy_sectors "$stick" 7)
    if [ "$kind" = first ]; then
        echo 'type=8DA63339-0007-60C0-C436-083AC8230908, name="TailsData"' | sfdisk -q --append "$disk" || return 1
        sy_wait test -b "$part" || return 1
        cryptsetup luksFormat -q --type luks2 $SY_BARE_KDF --key-file "$SY_BPASS" "$part" || return 1
    fi
    cryptsetup open --key-file "$SY_BPASS" "$part" rbk || return 1
    if [ "$kind" = first ]; then
        mkfs.ext4 -q -L TailsData /dev/mapper/rbk || return 1
        # What making the volume took and wrote, before any file.
        sync
        sy_part_time "$name-create" first "$r" $(( ($(sy_ns) - t0) / 1000000 )) $(( ($(sy_sectors "$stick" 7) - w0) * 512 ))
    fi
    mkdir -p /mnt/rbk && mount /dev/mapper/rbk /mnt/rbk || return 1
    t0=$(sy_ns)
    rsync -aHAX --delete "$@" "$SY_SRC/" /mnt/rbk/
    rc=$?
    sy_part_time "$name-alone" "$kind" "$r" $(( ($(sy_ns) - t0) / 1000000 ))
    umount /mnt/rbk && cryptsetup close rbk && return $rc
}
rsync_first() { measure rsync first "$1" bkrsync sy_rsync first "$1"; }
rsync_inc() { measure rsync "$2" "$1" bkrsync sy_rsync "$2" "$1"; }
rsync_verify() { sy_verify_luks rsync "$1" "$2" "$(sy_part bkrsync 2)"; }
rsync_staged_first() { measure rsync-staged first "$1" bkrsyncs sy_rsync first "$1" bkrsyncs rsync-staged --delay-updates; }
rsync_staged_inc() { measure rsync-staged "$2" "$1" bkrsyncs sy_rsync "$2" "$1" bkrsyncs rsync-staged --delay-updates; }
rsync_staged_verify() { sy_verify_luks rsync-staged "$1" "$2" "$(sy_part bkrsyncs 2)"; }

# restic into a repository on the second stick (plain ext4); no cache: a live system's
# would be in RAM and gone at the next boot. restic finds the parent snapshot itself.
restic_reset() {
    rm -rf /bk/restic/repo
    restic --no-cache -q init --repo /bk/restic/repo >/tmp/sy-cmd.out 2>&1 || { cat /tmp/sy-cmd.out; ks_fail "restic init"; }
    # Its key's scrypt cost, which init calibrates on this machine (restic has no option for it).
    echo "KS-OUT restic_kdf=$(cat /bk/restic/repo/keys/* | grep -o '"[Nrp]": *[0-9]*' | tr -d '" ' | tr '\n' ' ')"
}
restic_first() { measure restic first "$1" bkrestic restic --no-cache -q -r /bk/restic/repo backup "$SY_SRC"; }
restic_inc() { measure restic "$2" "$1" bkrestic restic --no-cache -q -r /bk/restic/repo backup "$SY_SRC"; }
restic_verify() {
    rm -rf /scratch/r
    restic --no-cache -q -r /bk/restic/repo restore latest --target /scratch/r >/tmp/sy-cmd.out 2>&1 \
        || { cat /tmp/sy-cmd.out; echo "KS-FAIL restic: restore"; return 1; }
    sy_compare restic "$1" "$2" "/scratch/r$SY_SRC"
    rm -rf /scratch/r
}

# GNU tar with xattrs and ACLs, through age to one recipient (X25519: no KDF), a full
# archive each time, beside the earlier ones (first, inc, clus).
tar_age_reset() { rm -f /bk/tarage/*.tar.age; }
sy_tar_age() { (set -o pipefail; $SY_TAR $SY_TAR_CREATE -C "$SY_SRC" -cf - . | age -r "$(cat /run/ks-test/age.pub)" > "$1"); }
tar_age_first() { measure tar-age first "$1" bktarage sy_tar_age /bk/tarage/first.tar.age; }
tar_age_inc() { measure tar-age "$2" "$1" bktarage sy_tar_age "/bk/tarage/$2.tar.age"; }
tar_age_verify() {
    rm -rf /scratch/r; mkdir -p /scratch/r
    (set -o pipefail; age -d -i /run/ks-test/age.key "/bk/tarage/$2.tar.age" | $SY_TAR $SY_TAR_EXTRACT -xf - -C /scratch/r) \
        || { echo "KS-FAIL tar-age: extract"; return 1; }
    sy_compare tar-age "$1" "$2" /scratch/r
    rm -rf /scratch/r
}

# keepsake's archive: a full backup, then incremental ones with --since, each after the one
# before (or, with a keepsake that has no --since yet, full ones).
ks_archive_reset() { rm -f /bk/karch/*.ksb; }
ks_archive_first() { measure keepsake-archive first "$1" bkarch keepsake backup /bk/karch/first.ksb --key-file "$SY_BPASS" $SY_ARCHIVE_KDF; }
ks_archive_inc() {
    local prev=first; [ "$2" = clus ] && prev=inc
    if [ "$(ks_in ksarch_mode)" = since ]; then
        measure keepsake-archive "$2" "$1" bkarch keepsake backup "/bk/karch/$2.ksb" --since "/bk/karch/$prev.ksb" --key-file "$SY_BPASS"
    else
        measure keepsake-archive "$2" "$1" bkarch keepsake backup "/bk/karch/$2.ksb" --key-file "$SY_BPASS" $SY_ARCHIVE_KDF
    fi
}
# keepsake restores into the unlocked volume: the source is locked, a fresh volume on the
# scratch disk takes the archive, and the source is unlocked again.
ks_archive_verify() {
    keepsake lock >/tmp/sy-cmd.out 2>&1 || { cat /tmp/sy-cmd.out; ks_fail "lock the source"; }
    rm -f /scratch/v.img
    if keepsake create --image /scratch/v.img --size 800M --key-file "$KS_PASS_FILE" $KS_KDF >/tmp/sy-cmd.out 2>&1 \
        && keepsake unlock --image /scratch/v.img --key-file "$KS_PASS_FILE" >>/tmp/sy-cmd.out 2>&1 \
        && keepsake restore "/bk/karch/$2.ksb" --overwrite --key-file "$SY_BPASS" >>/tmp/sy-cmd.out 2>&1; then
        sy_compare keepsake-archive "$1" "$2" "$SY_SRC"
    else
        sed 's/^/    | /' /tmp/sy-cmd.out | tail -n 20
        echo "KS-FAIL keepsake-archive: restore into a fresh volume"
    fi
    keepsake lock >/dev/null 2>&1
    rm -f /scratch/v.img
    sy_unlock_source
}

sy_unlock_source() {
    ks_expect_rc 0 "unlock the source volume" -- keepsake unlock --device "/dev/$(sy_disk src)" --key-file "$KS_PASS_FILE"
}

# sy_change ROUND KIND: the change of the tree before the incremental backups of KIND: inc
# (mut-R: anywhere) or clus (clus-R: within one sub-folder of Persistent).
sy_change() {
    local tag=mut; [ "$2" = clus ] && tag=clus
    (cd "$SY_SRC" && $SY_TAR -xOf "$SY_SEED" "$tag-$1.tar" | $SY_TAR $SY_TAR_EXTRACT -xf - && $SY_TAR -xOf "$SY_SEED" "$tag-$1.sh" | sh -e) \
        || ks_fail "round $1: change the tree ($tag)"
    sync
}

# sy_settle STICK: ext4's lazy zeroing of the inode tables finished on the volume of STICK's
# partition 2, untimed, before any incremental backup onto it is measured. mkfs.ext4 leaves
# it to the kernel by default (keepsake's volumes and rsync's alike): ext4lazyinit zeroes
# them whenever the volume is mounted, starting after a random delay of up to 5 s and a
# reading of every block bitmap, 2 MiB a block group on these 8 GiB sticks, so that it
# would land inside some measurements and not others. Mounted with init_itable=0 (no pause
# between groups) until the disk has been quiet for 3 s, then unmounted, until every group
# says ITABLE_ZEROED.
sy_settle() {
    local part dev t0 n=0 io0 io1 quiet zeroed groups
    part=$(sy_part "$1" 2); t0=$(sy_ns)
    cryptsetup open --key-file "$SY_BPASS" "$part" settle || { echo "KS-FAIL settle $1: cannot open"; return 1; }
    dev=$(basename "$(readlink -f /dev/mapper/settle)")
    mkdir -p /mnt/settle
    while [ $n -lt 10 ]; do
        dumpe2fs /dev/mapper/settle 2>/dev/null | grep '^Group [0-9]' > /tmp/sy-groups
        zeroed=$(grep -c ITABLE_ZEROED /tmp/sy-groups); groups=$(wc -l < /tmp/sy-groups)
        [ "$zeroed" -eq "$groups" ] && break
        mount -o init_itable=0 /dev/mapper/settle /mnt/settle || break
        sleep 6
        quiet=0; io1=$(awk '{print $3, $7}' "/sys/block/$dev/stat")
        while [ $quiet -lt 3 ] && [ $(( ($(sy_ns) - t0) / 1000000000 )) -lt 600 ]; do
            sleep 1; io0=$io1; io1=$(awk '{print $3, $7}' "/sys/block/$dev/stat")
            if [ "$io1" = "$io0" ]; then quiet=$((quiet + 1)); else quiet=0; fi
        done
        umount /mnt/settle; n=$((n + 1))
    done
    cryptsetup close settle
    echo "KS-OUT settled=$1 $zeroed of $groups groups zeroed, $(( ($(sy_ns) - t0) / 1000000 )) ms, $n mounts"
    [ "$zeroed" -eq "$groups" ] || echo "KS-FAIL settle $1: $zeroed of $groups groups zeroed"
}

# ---- --blocks: what each sync's incremental backups of round 1 wrote, block by block ----
# The kernel's block_bio_queue events on the device-mapper devices (the backup's plaintext,
# in 512-byte sectors) while the backup runs; then each 4 KiB block written is named from
# the volume itself, opened read-only: a file's data, a folder's, the journal's, an inode
# table's, a bitmap's, the superblock's and group descriptors', or free now (written, then
# freed before the end: a staged file's or plan's that was removed).
SY_T=/sys/kernel/tracing
sy_trace_on() {
    [ -e $SY_T/trace ] || mount -t tracefs nodev $SY_T || return 1
    echo 0 > $SY_T/tracing_on; echo > $SY_T/trace; echo 16384 > $SY_T/buffer_size_kb
    echo 1 > $SY_T/events/block/block_bio_queue/enable && echo 1 > $SY_T/tracing_on
}
# sy_trace_off FILE: the writes traced, as "MAJOR,MINOR SECTOR COUNT" lines, into FILE.
sy_trace_off() {
    echo 0 > $SY_T/tracing_on
    grep -o 'block_bio_queue: [0-9]*,[0-9]* W[A-Z]* [0-9]* + [0-9]*' $SY_T/trace | awk '{print $2, $4, $6}' > "$1"
    echo > $SY_T/trace
}
# sy_blocks CONTENDER KIND TRACE PART: the blocks the trace's writes to a dm device other
# than the source's hit, named; printed as KS-OUT blocks=CONTENDER KIND CLASS COUNT.
sy_blocks() {
    local c=$1 kind=$2 src dm blocks
    src=$(findmnt -n -o MAJ:MIN "$SY_SRC" | tr ':' ',')
    dm=$(awk '$2 == "device-mapper" {print $1}' /proc/devices)
    awk -v src="$src" -v dm="$dm" 'index($1, dm ",") == 1 && $1 != src { for (s = $2; s < $2 + $3; s += 8) print int(s / 8) }' "$3" \
        | sort -un > /tmp/sy-blocks
    blocks=$(wc -l < /tmp/sy-blocks)
    cryptsetup open --readonly --key-file "$SY_BPASS" "$4" blk || { echo "KS-FAIL $c $kind: cannot open $4 to name blocks"; return 1; }
    mkdir -p /mnt/blk && mount -o ro /dev/mapper/blk /mnt/blk || { cryptsetup close blk; echo "KS-FAIL $c $kind: cannot mount"; return 1; }
    $SY_FIND /mnt/blk -xdev -type d -printf '%i\n' > /tmp/sy-dirs
    debugfs -R stats /dev/mapper/blk 2>/dev/null > /tmp/sy-stats
    debugfs -R "icheck $(tr '\n' ' ' < /tmp/sy-blocks)" /dev/mapper/blk 2>/dev/null | awk 'NR > 1' > /tmp/sy-owners
    awk -v c="$c" -v kind="$kind" '
        FILENAME == "/tmp/sy-dirs" { dir[$1] = 1; next }
        FILENAME == "/tmp/sy-stats" {
            if ($0 ~ /^Inode blocks per group:/) per = $NF
            if ($0 ~ /block bitmap at/) {
                gsub(/,/, ""); bb[$6] = 1; ib[$10] = 1; it[$14] = 1
                if (first == "" || $6 < first) first = $6
            }
            next }
        {   b = $1; o = $2
            if (o == 8) k = "journal"
            else if (o == 7 || b < first) k = "superblock, group descriptors"
            else if (o ~ /^[0-9]+$/) k = (o in dir) ? "folders" : "files"
            else if (b in bb) k = "block bitmaps"
            else if (b in ib) k = "inode bitmaps"
            else { k = "free now"; for (t in it) if (b >= t + 0 && b < t + per) k = "inode tables" }
            n[k]++ }
        END { for (k in n) print "KS-OUT blocks=" c " " kind " " n[k] " " k }' /tmp/sy-dirs /tmp/sy-stats /tmp/sy-owners
    echo "KS-OUT blocks=$c $kind $blocks all"
    umount /mnt/blk; cryptsetup close blk
}
# sy_stick CONTENDER: the stick a sync contender (one that writes an ext4 volume of its
# own) backs up to; nothing for the others.
sy_stick() {
    case $1 in keepsake-sync) echo bksync ;; rsync) echo bkrsync ;; rsync-staged) echo bkrsyncs ;; esac
}
# sy_inc_traced CONTENDER ROUND KIND: the contender's incremental backup, traced and named
# (the sync contenders, round 1, with --blocks), or just run.
sy_inc_traced() {
    local stick part= rc
    stick=$(sy_stick "$1")
    [ -n "$stick" ] && part=$(sy_part "$stick" 2)
    if [ "$(ks_in blocks)" != 1 ] || [ "$2" != 1 ] || [ -z "$part" ]; then "$(sy_fn "$1")_inc" "$2" "$3"; return; fi
    sy_trace_on || ks_fail "tracefs"
    "$(sy_fn "$1")_inc" "$2" "$3"; rc=$?
    sy_trace_off "/tmp/sy-trace-$1-$3"
    [ $rc -eq 0 ] && sy_blocks "$1" "$3" "/tmp/sy-trace-$1-$3" "$part"
    return $rc
}

# The contender's function prefix: keepsake-sync -> ks_sync, tar-age -> tar_age.
sy_fn() { echo "$1" | sed 's/^keepsake-/ks_/; s/-/_/g'; }

# sy_rotate R WORD...: the words, rotated left by R - 1, so that no contender always runs first.
sy_rotate() {
    local k=$(( ($1 - 1) % ($# - 1) )) w; shift
    while [ "$k" -gt 0 ]; do w=$1; shift; set -- "$@" "$w"; k=$((k - 1)); done
    echo "$@"
}

guest_all() {
    local c r rounds contenders order verify t0 stick
    t0=$(sy_ns)
    ks_pass_file
    (umask 077; sed -n 's/^backup_passphrase=//p' /run/ks-test/in | tail -n 1 | tr -d '\n' > "$SY_BPASS")
    rounds=$(ks_in rounds); contenders=$(ks_in contenders); verify=$(ks_in verify)
    echo "KS-OUT machine=$(uname -r), $(grep -c ^processor /proc/cpuinfo) vCPU, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
    echo "KS-OUT versions=$(rsync --version | head -n 1 | awk '{print $3}') $(restic version | awk '{print $2}') $(age --version) $($SY_TAR --version | head -n 1 | awk '{print $4}') $(cryptsetup --version | awk '{print $2}')"
    $SY_TAR --version | grep -q 'GNU tar' || ks_fail "tar is GNU tar"
    mkdir -p /home/amnesia && chown 1000:1000 /home/amnesia
    ks_system_folders

    # The source: a live stick's volume, as keepsake makes it, with the tree unpacked into
    # the folders of the features that hold it.
    ks_expect_rc 0 "create the source volume" -- keepsake create --device "/dev/$(sy_disk src)" --yes --key-file "$KS_PASS_FILE" $KS_KDF
    sy_unlock_source
    ks_expect_rc 0 "enable the features that hold the tree" -- keepsake feature enable gnupg dotfiles network-connections
    ks_expect_rc 0 "unpack the tree into the volume" -- sh -c "set -o pipefail; $SY_TAR -xOf $SY_SEED tree.tar | $SY_TAR $SY_TAR_EXTRACT -xf - -C $SY_SRC"
    sync
    sy_manifest "$SY_SRC" > /tmp/sy-src.manifest
    ks_log "the source: $(grep -c '^name ' /tmp/sy-src.manifest) names, $(grep -c '^data ' /tmp/sy-src.manifest) files, $(du -sm "$SY_SRC" | cut -f1) MiB"
    # The manifest sees what the tools must carry (a check of the check).
    ks_assert "the manifest sees the tree's ACLs" test "$(grep -c '^xattr .* system.posix_acl_access=' /tmp/sy-src.manifest)" -ge "$(ks_in acls)"
    ks_assert "the manifest sees the tree's user xattrs" test "$(grep -c '^xattr .* user\.' /tmp/sy-src.manifest)" -ge "$(ks_in xattrs)"
    ks_assert "the manifest sees the tree's hard links" test "$(grep -c ' hard link to ' /tmp/sy-src.manifest)" -eq "$(ks_in hardlinks)"

    # The backup media: the archives' sticks are plain ext4 (the archives are encrypted).
    for c in bkrestic bktarage bkarch; do
        # Not lazy: ext4lazyinit would zero inode tables in the background, during measurements.
        mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$(sy_part "$c" 1)" || ks_fail "mkfs on $c"
    done
    mkdir -p /bk/restic /bk/tarage /bk/karch /scratch
    mount "$(sy_part bkrestic 1)" /bk/restic && mount "$(sy_part bktarage 1)" /bk/tarage \
        && mount "$(sy_part bkarch 1)" /bk/karch || ks_fail "mount the archive sticks"
    mkfs.ext4 -q -F /dev/disk/by-serial/scratch && mount /dev/disk/by-serial/scratch /scratch || ks_fail "the scratch disk"
    (umask 077; age-keygen -o /run/ks-test/age.key 2>/dev/null) && age-keygen -y /run/ks-test/age.key > /run/ks-test/age.pub \
        || ks_fail "age-keygen"
    ks_log "set up in $(( ($(sy_ns) - t0) / 1000000000 )) s"

    for r in $(seq 1 "$rounds"); do
        order=$(sy_rotate "$r" $contenders)
        for c in $order; do "$(sy_fn "$c")_reset"; done
        case " $order " in *" restic "*)
            # restic's scrypt cost is calibrated by init on this machine: open it alone.
            measure restic open "$r" bkrestic restic --no-cache -q -r /bk/restic/repo cat config ;;
        esac
        for c in $order; do "$(sy_fn "$c")_first" "$r" || touch "/tmp/sy-broken-$c"; done
        for c in $order; do
            [ -e "/tmp/sy-broken-$c" ] && continue
            stick=$(sy_stick "$c")
            [ -n "$stick" ] && sy_settle "$stick"
        done
        ks_log "round $r: first backups done at $(( ($(sy_ns) - t0) / 1000000000 )) s"
        # 1 % of the files change at random (mut), then 1 % within one sub-folder (clus).
        for kind in inc clus; do
            sy_change "$r" "$kind"
            for c in $order; do
                [ -e "/tmp/sy-broken-$c" ] || sy_inc_traced "$c" "$r" "$kind" || touch "/tmp/sy-broken-$c"
            done
            ks_log "round $r: incremental backups ($kind) done at $(( ($(sy_ns) - t0) / 1000000000 )) s"
            if [ "$verify" = all ] || { [ "$verify" = first ] && [ "$r" = 1 ]; }; then
                sy_manifest "$SY_SRC" > /tmp/sy-src.manifest
                # keepsake-archive last: its check locks and unlocks the source.
                for c in $(echo $order | tr ' ' '\n' | grep -v '^keepsake-archive$') $(echo $order | tr ' ' '\n' | grep '^keepsake-archive$'); do
                    [ -e "/tmp/sy-broken-$c" ] || "$(sy_fn "$c")_verify" "$r" "$kind"
                done
                ks_log "round $r: checked at $(( ($(sy_ns) - t0) / 1000000000 )) s"
            fi
        done
        rm -f /tmp/sy-broken-*
    done
    sed 's/^/KS-OUT /' /tmp/sy-parts 2>/dev/null
    echo "KS-OUT guest_seconds=$(( ($(sy_ns) - t0) / 1000000000 ))"
}
