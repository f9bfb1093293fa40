# The preflight refuses to read a secret where it could reach a disk, and each refusal has
# its override: unencrypted swap (encrypted swap and zram pass), a core-dump handler that
# writes to disk, a disk-backed /tmp. And the process itself: memory locked, core limit 0,
# no core file when it crashes while waiting for a passphrase (while an unhardened process
# in the same place does dump core).

host_main() {
    ks_set passphrase "safety $(ks_random)"
    local usb host
    usb=$(ks_disk usb 256M)
    host=$(ks_swap_disk hostdisk 96M) || return 1
    ks_phase checks "usb=$usb" "hostdisk=$host"
}

ks_unlock_lock() {
    keepsake unlock --image "$KS_IMAGE" --key-file "$KS_PASS_FILE" "$@" && keepsake lock
}

guest_checks() {
    ks_disk_fs usb /media/usb format
    mkfs.ext4 -q /dev/vdb1 && mkdir -p /media/hostdisk && mount /dev/vdb1 /media/hostdisk
    ks_pass_file
    ks_expect_rc 0 "create on a safe host" -- keepsake create --image "$KS_IMAGE" --size 48M --key-file "$KS_PASS_FILE" $KS_KDF
    # A real archive, so that verify gets past its header (judged before any secret is read).
    ks_expect_rc 0 "a backup on a safe host" -- sh -c "keepsake unlock --image $KS_IMAGE --key-file $KS_PASS_FILE && keepsake backup /tmp/safe.ksb --key-file $KS_PASS_FILE --archive-kdf-memory 8192 --archive-kdf-iterations 1 && keepsake lock"

    # Unencrypted swap on the host disk.
    mkswap /dev/vdb2 >/dev/null && swapon /dev/vdb2 || ks_fail "swapon"
    ks_expect_rc 6 "create refused with unencrypted swap" -- keepsake create --image /media/usb/new.img --size 48M --key-file "$KS_PASS_FILE" $KS_KDF
    ks_assert "the error names the swap device and the override" grep -q "/dev/vdb2 (not encrypted).*--allow-unencrypted-swap" /tmp/ks-cmd.out
    ks_assert "nothing was created" test ! -e /media/usb/new.img
    ks_expect_rc 6 "unlock refused with unencrypted swap" -- keepsake unlock --image "$KS_IMAGE" --key-file "$KS_PASS_FILE"
    ks_assert "nothing was opened" ks_no_mapping
    # Every other command that reads a secret refuses the same way, the header untouched.
    local h k="--key-file $KS_PASS_FILE" i="--image $KS_IMAGE"
    h=$(head -c 16777216 "$KS_IMAGE" | sha256sum)
    ks_expect_rc 6 "passphrase change refused" -- keepsake passphrase change $i $k --new-key-file /etc/passwd $KS_KDF
    ks_expect_rc 6 "recovery-key add refused" -- keepsake recovery-key add $i $k $KS_KDF
    ks_expect_rc 6 "check refused" -- keepsake check $i $k
    ks_expect_rc 6 "repair refused" -- keepsake repair $i $k
    ks_expect_rc 6 "backup verify refused" -- keepsake backup verify /tmp/safe.ksb $k
    ks_assert_eq "the header is unchanged" "$(head -c 16777216 "$KS_IMAGE" | sha256sum)" "$h"
    ks_expect_rc 0 "--allow-unencrypted-swap overrides it" -- ks_unlock_lock --allow-unencrypted-swap
    ks_assert "with a warning" grep -q "warning: unencrypted swap" /tmp/ks-cmd.out
    swapoff /dev/vdb2

    # Encrypted swap (plain dm-crypt with a random key) and zram are fine.
    cryptsetup open --type plain --cipher aes-xts-plain64 --key-size 512 --key-file /dev/urandom -q /dev/vdb2 cswap \
        && mkswap /dev/mapper/cswap >/dev/null && swapon /dev/mapper/cswap || ks_fail "encrypted swap"
    ks_expect_rc 0 "unlock with encrypted swap" -- ks_unlock_lock
    swapoff /dev/mapper/cswap && cryptsetup close cswap
    echo 64M > /sys/block/zram0/disksize && mkswap /dev/zram0 >/dev/null && swapon /dev/zram0 || ks_fail "zram swap"
    ks_expect_rc 0 "unlock with zram swap" -- ks_unlock_lock
    swapoff /dev/zram0

    # Core dumps handed to a handler, or written to the host disk.
    local pattern; pattern=$(cat /proc/sys/kernel/core_pattern)
    echo '|/bin/cat' > /proc/sys/kernel/core_pattern
    ks_expect_rc 6 "unlock refused with a core-dump handler" -- keepsake unlock --image "$KS_IMAGE" --key-file "$KS_PASS_FILE"
    ks_assert "the error names the override" grep -q -- "--allow-core-dump-handler" /tmp/ks-cmd.out
    echo '/media/hostdisk/core.%p' > /proc/sys/kernel/core_pattern
    ks_expect_rc 6 "unlock refused with core dumps written to the host disk" -- keepsake unlock --image "$KS_IMAGE" --key-file "$KS_PASS_FILE"
    ks_expect_rc 0 "--allow-core-dump-handler overrides it" -- ks_unlock_lock --allow-core-dump-handler
    echo '/tmp/core.%p' > /proc/sys/kernel/core_pattern
    ks_expect_rc 0 "core dumps into tmpfs are fine" -- ks_unlock_lock
    echo "$pattern" > /proc/sys/kernel/core_pattern

    # /tmp on the host disk.
    mkdir -p /media/hostdisk/tmp && mount --bind /media/hostdisk/tmp /tmp
    ks_expect_rc 6 "unlock refused with /tmp on a disk" -- keepsake unlock --image "$KS_IMAGE" --key-file "$KS_PASS_FILE"
    ks_expect_rc 0 "--allow-disk-backed-tmp overrides it" -- ks_unlock_lock --allow-disk-backed-tmp
    umount /tmp

    # The process while it waits for a passphrase.
    echo '/tmp/core.%p' > /proc/sys/kernel/core_pattern
    ulimit -c unlimited
    mkfifo /run/pass.fifo
    keepsake unlock --image "$KS_IMAGE" --passphrase-fd 3 3<>/run/pass.fifo &
    local pid=$! i
    for i in $(seq 1 100); do grep -q "pipe_read\|wait_woken" /proc/$pid/wchan 2>/dev/null && break; sleep 0.1; done
    sleep 1
    ks_assert "it runs" test -d /proc/$pid
    ks_log "waiting keepsake: $(grep -E 'VmLck|VmRSS' /proc/$pid/status | tr -s ' \t' ' ' | tr '\n' ' ')"
    ks_assert "its memory is locked (VmLck > 0)" sh -c "[ \$(awk '/VmLck/ {print \$2}' /proc/$pid/status) -gt 0 ]"
    ks_assert_eq "its core size limit" "$(awk '/Max core file size/ {print $5, $6}' /proc/$pid/limits)" "0 0"
    kill -ABRT $pid; wait $pid 2>/dev/null
    sleep 1
    ks_assert "it left no core file when it crashed" test -z "$(ls /tmp/core.* 2>/dev/null)"
    sleep 600 &
    local control=$!
    kill -ABRT $control; wait $control 2>/dev/null
    sleep 1
    ks_assert "negative control: an unhardened process does dump core there" test -n "$(ls /tmp/core.$control 2>/dev/null)"
    rm -f /tmp/core.* /run/pass.fifo
    echo "$pattern" > /proc/sys/kernel/core_pattern
    ks_assert "nothing of keepsake's was left mapped" ks_no_mapping
}
