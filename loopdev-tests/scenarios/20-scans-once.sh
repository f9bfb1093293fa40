# Each scan of the host (the block devices and device-mapper list in /sys/block,
# /proc/self/mountinfo, /proc/keys, and lock's walk of /proc) happens once per command: unlock, status and lock run
# under strace and keepsake's own opens of each are counted (keepsake's, opened with
# O_CLOEXEC as Rust's std does; libcryptsetup's opens carry no O_CLOEXEC and are its own).
# lock reads /sys/block and mountinfo a second time on purpose: verify-gone checks the
# change. lock does not start libcryptsetup's crypto backend: closing a mapping needs no
# header. KS_SCAN_PROFILE=1 also logs the whole timed trace.

host_main() {
    ks_set passphrase "scans $(ks_random)"
    ks_set profile "${KS_SCAN_PROFILE:-0}"
    ks_phase checks
}

# traced NAME COMMAND...: runs COMMAND under strace (every syscall, relative times), the
# trace in /tmp/NAME.trace and, with KS_SCAN_PROFILE=1, in the log. Processes keepsake
# starts are let go at their execve (-b execve): the watcher unlock arms runs until lock,
# and its own scans at arming are its, not unlock's.
traced() {
    local name=$1; shift
    strace -f -b execve -qq -r -T -o "/tmp/$name.trace" "$@" >/tmp/ks-cmd.out 2>&1 \
        || { sed 's/^/    | /' /tmp/ks-cmd.out; ks_fail "$name: $*"; }
    [ "$(ks_in profile)" = 1 ] && sed "s/^/KS-PROFILE $name /" "/tmp/$name.trace"
    ks_ok "$name ran under strace"
}

# scans NAME PATH WANT: keepsake's opens of PATH in the trace of NAME number WANT.
scans() {
    local got
    got=$(grep -E "open(at)?\((AT_FDCWD, )?\"$2\", [^)]*O_CLOEXEC" "/tmp/$1.trace" | grep -vc ENOENT)
    ks_log "$1 opened $2 $got time(s)"
    ks_assert_eq "$1 reads $2 $3 time(s)" "$got" "$3"
}

guest_checks() {
    ks_disk_fs usb /media/usb format
    ks_pass_file
    ks_expect_rc 0 "create" -- keepsake create --image "$KS_IMAGE" --size 48M --key-file "$KS_PASS_FILE" $KS_KDF
    ks_expect_rc 0 "unlock" -- keepsake unlock --image "$KS_IMAGE" --key-file "$KS_PASS_FILE"
    local k
    for k in 1 2 3 4 5; do
        mkdir -p "/srv/s/f$k"
        keepsake feature add "f$k" --dest "/srv/s/f$k" >/dev/null || ks_fail "feature add f$k"
    done
    ks_expect_rc 0 "lock" -- keepsake lock
    traced unlock keepsake unlock --image "$KS_IMAGE" --key-file "$KS_PASS_FILE"
    traced status keepsake --json status
    traced lock keepsake lock
    ks_lock_is_clean
    scans unlock /proc/self/mountinfo 1
    scans unlock /sys/block 1
    scans unlock /proc/keys 1
    scans status /proc/self/mountinfo 1
    scans status /sys/block 1
    scans status /proc/keys 0
    scans lock /proc/self/mountinfo 2
    scans lock /sys/block 2
    scans lock /proc/keys 0
    scans lock /proc 1
    # Closing a mapping needs device-mapper's table, not the header: lock does not start
    # libcryptsetup's crypto backend (OpenSSL, which reads its config file when it starts;
    # loading a header starts it).
    local got
    got=$(grep -c 'openssl.cnf' /tmp/lock.trace)
    ks_assert_eq "lock starts no crypto backend" "$got" 0
    got=$(grep -c 'openssl.cnf' /tmp/unlock.trace)
    ks_assert_eq "unlock starts its crypto backend once" "$got" 1
}
