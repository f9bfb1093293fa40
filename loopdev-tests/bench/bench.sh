# Guest side of loopdev-tests/bench/run: keepsake against the bare tools, side by side, in
# one boot. Each measurement is printed as KS-OUT <name>=<ms> and the host takes medians.
#
#   unlock/lock with N features vs `cryptsetup open` + `mount` + N `mount --bind`, and
#   the N `umount`s + `umount` + `cryptsetup close` (same volume, same keyslot, same KDF),
#   once with util-linux's mount and umount (what Tails and Debian run; bench/run copies
#   them into the guest) and once with busybox's (the guest's own: smaller, faster);
#   the KDF alone (`cryptsetup open --test-passphrase`); `status --json` with 100 features vs
#   `findmnt --json` + `cryptsetup status`;
#   create on 1 GiB and 8 GiB sparse images vs `luksFormat` + `open` + `mkfs.ext4` + `close`.

# A small KDF cost, the same for both sides, so that what is compared is everything else;
# at a real cost (seconds of argon2id) the ratios only come closer to 1.
KS_BENCH_KDF="--pbkdf-memory 8192 --pbkdf-force-iterations 4"

ks_ns() { /usr/bin/date +%s%N; }

# bench NAME COMMAND...: runs COMMAND, prints its wall time in µs; the phase fails if it fails.
bench() {
    local name=$1 t0 t1; shift
    t0=$(ks_ns)
    "$@" >/tmp/bench.out 2>&1 || { sed 's/^/    | /' /tmp/bench.out; ks_fail "$name: $*"; }
    t1=$(ks_ns)
    echo "KS-OUT $name=$(( (t1 - t0) / 1000 ))"
}

# bound N WHO: WHO bound exactly N folders under /srv/b, or the phase fails.
bound() {
    [ "$(grep -c ' /srv/b/f' /proc/self/mountinfo)" -eq "$1" ] || ks_fail "$2 bound $1 folders"
}

# The two mount programs the bare script is run with: util-linux's and busybox's.
UL_MOUNT=/usr/bin/mount UL_UMOUNT=/usr/bin/umount

# bare_open MOUNT N, bare_close UMOUNT N: the bare script with MOUNT (a command) and UMOUNT.
bare_open() {
    local mount=$1 n=$2 k
    cryptsetup open --key-file "$KS_PASS_FILE" "/bench/vol-$n.img" bare || return 1
    $mount -o nosuid,nodev,noatime /dev/mapper/bare /mnt/bare || return 1
    for k in $(seq 1 "$n"); do $mount --bind "/mnt/bare/f$k" "/srv/b/f$k" || return 1; done
}

bare_close() {
    local umount=$1 n=$2 k
    for k in $(seq "$n" -1 1); do $umount "/srv/b/f$k" || return 1; done
    $umount /mnt/bare && cryptsetup close bare
}

# What `status --json` tells, from the bare tools: the mounts as JSON, and the mapping.
bare_status() {
    findmnt --json >/dev/null && cryptsetup status TailsData_unlocked
}

bare_create() {
    truncate -s "$2" "$1" || return 1
    cryptsetup luksFormat -q --type luks2 --pbkdf argon2id --pbkdf-memory 8192 \
        --pbkdf-force-iterations 4 --pbkdf-parallel 1 --key-file "$KS_PASS_FILE" "$1" || return 1
    cryptsetup open --key-file "$KS_PASS_FILE" "$1" barec || return 1
    mkfs.ext4 -q -L TailsData /dev/mapper/barec || return 1
    cryptsetup close barec
}

guest_all() {
    ks_pass_file
    local runs i n k
    runs=$(ks_in runs)
    mkfs.ext4 -q -F /dev/disk/by-serial/bench && mkdir -p /bench && mount /dev/disk/by-serial/bench /bench
    mkdir -p /mnt/bare /home/amnesia && chown 1000:1000 /home/amnesia
    echo "KS-OUT machine=$(uname -r), $(grep -c ^processor /proc/cpuinfo) vCPU, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
    "$UL_MOUNT" --version | grep -q util-linux || ks_fail "$UL_MOUNT is util-linux's mount"
    "$UL_UMOUNT" --version | grep -q util-linux || ks_fail "$UL_UMOUNT is util-linux's umount"
    busybox mount --help 2>&1 | grep -qi busybox || ks_fail "busybox has its own mount"
    for n in $(ks_in sizes); do
        ks_expect_rc 0 "create the N=$n volume" -- keepsake create --image "/bench/vol-$n.img" --size 128M --key-file "$KS_PASS_FILE" $KS_BENCH_KDF
        ks_expect_rc 0 "unlock it" -- keepsake unlock --image "/bench/vol-$n.img" --key-file "$KS_PASS_FILE"
        # A new Tails-layout volume enables the Persistent folder and Additional Software
        # (two binds): off, so that keepsake binds exactly the N folders the bare script does.
        ks_expect_rc 0 "disable the default features" -- keepsake feature disable persistent additional-software
        for k in $(seq 1 "$n"); do
            mkdir -p "/srv/b/f$k"
            keepsake feature add "f$k" --dest "/srv/b/f$k" >/dev/null || ks_fail "feature add f$k"
        done
        ks_expect_rc 0 "lock" -- keepsake lock
        for i in $(seq 1 "$runs"); do
            bench "kdf.$n" cryptsetup open --test-passphrase --key-file "$KS_PASS_FILE" "/bench/vol-$n.img"
            bench "keepsake_unlock.$n" keepsake unlock --image "/bench/vol-$n.img" --key-file "$KS_PASS_FILE"
            bound "$n" "keepsake"
            [ "$(grep -c ' - ext4 /dev/mapper/TailsData_unlocked ' /proc/self/mountinfo)" -eq $((n + 1)) ] \
                || ks_fail "keepsake mounted the volume and $n binds, nothing more"
            if [ "$n" = 100 ]; then
                bench "status_json.$n" keepsake --json status
                bench "bare_status.$n" bare_status
            fi
            bench "keepsake_lock.$n" keepsake lock
            bench "bare_unlock.$n" bare_open "$UL_MOUNT" "$n"
            bound "$n" "the bare script"
            bench "bare_lock.$n" bare_close "$UL_UMOUNT" "$n"
            bench "busybox_unlock.$n" bare_open "busybox mount" "$n"
            bound "$n" "the busybox script"
            bench "busybox_lock.$n" bare_close "busybox umount" "$n"
        done
        ks_ok "N=$n: $runs runs each"
    done
    for size in 1G 8G; do
        for i in $(seq 1 "$runs"); do
            bench "keepsake_create.$size" keepsake create --image "/bench/c.img" --size "$size" --key-file "$KS_PASS_FILE" $KS_BENCH_KDF
            rm -f /bench/c.img
            bench "bare_create.$size" bare_create /bench/c.img "$size"
            rm -f /bench/c.img
        done
        ks_ok "create $size: $runs runs each"
    done
}
