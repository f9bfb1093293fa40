# Guest-side helpers, sourced by /init before a scenario's guest_<phase> function runs.
# Every check prints one line; the first failure ends the phase with a non-zero status.

KS_PASS_FILE=/run/ks-test/passphrase

ks_log() { echo "KS-LOG $*"; }
ks_ok() { echo "KS-OK $*"; }
ks_fail() { echo "KS-FAIL $*"; exit 1; }
# ks_out KEY VALUE: hands a value back to the host (collected between phases).
ks_out() { echo "KS-OUT $1=$2"; }

# ks_expect_rc WANT DESCRIPTION -- COMMAND...: runs COMMAND, checks its exit status. In
# verbose mode (the demo), the command and everything it printed are shown as well.
ks_expect_rc() {
    local want=$1 what=$2; shift 3
    [ "${KS_VERBOSE:-0}" = 1 ] && echo "KS-STEP $(echo "$@" | sed 's/^ks_timed [^ ]* //')"
    "$@" >/tmp/ks-cmd.out 2>&1
    local got=$?
    [ "${KS_VERBOSE:-0}" = 1 ] && grep -v '^KS-TIME ' /tmp/ks-cmd.out | sed 's/^/KS-SAY /'
    grep '^KS-TIME ' /tmp/ks-cmd.out
    if [ "$got" -ne "$want" ]; then
        sed 's/^/    | /' /tmp/ks-cmd.out
        ks_fail "$what: exit $got, expected $want"
    fi
    ks_ok "$what (exit $got)"
}

ks_assert() {
    local what=$1; shift
    if "$@"; then ks_ok "$what"; else ks_fail "$what"; fi
}

ks_assert_eq() {
    if [ "$2" = "$3" ]; then ks_ok "$1: $2"; else ks_fail "$1: got '$2', expected '$3'"; fi
}

# Values the host passed in (KEY=VALUE lines in /run/ks-test/in on the share disk).
ks_in() { sed -n "s/^$1=//p" /run/ks-test/in 2>/dev/null | tail -n 1; }

ks_random() { head -c 18 /dev/urandom | base64 | tr '+/' 'xy'; }

# Milliseconds since boot, for timings.
ks_now_ms() { awk '{printf "%d\n", $1 * 1000}' /proc/uptime; }

# ks_timed NAME COMMAND...: runs COMMAND and reports its wall time as KS-TIME NAME ms.
ks_timed() {
    local name=$1 t0 t1 rc; shift
    t0=$(ks_now_ms); "$@"; rc=$?; t1=$(ks_now_ms)
    echo "KS-TIME $name $((t1 - t0))"
    return $rc
}

ks_no_mapping() { [ -z "$(ls /sys/block | grep '^dm-' 2>/dev/null)" ]; }
ks_no_loop_in_use() {
    local l
    for l in /sys/block/loop*; do
        [ -e "$l/loop/backing_file" ] && return 1
    done
    return 0
}
ks_not_mounted() { ! grep -q " $1 " /proc/self/mountinfo; }

# Unpack what the host put on the share disk (a tar stream on a raw disk).
if [ -e /dev/disk/by-serial/share ]; then
    mkdir -p /run/ks-test
    tar -xf /dev/disk/by-serial/share -C /run/ks-test 2>/dev/null
    chmod 0700 /run/ks-test
fi

# The cost every test volume uses: small, so that TCG stays quick. Never a default.
KS_KDF="--pbkdf-memory 8192 --pbkdf-force-iterations 4"
KS_IMAGE=/media/usb/keepsake.img
KS_ROOT_MNT=/live/persistence/TailsData_unlocked
KS_PERSISTENT=/home/amnesia/Persistent

# ks_disk_fs NAME MOUNTPOINT [format]: mounts the guest disk NAME (by serial), making an
# ext4 filesystem on it first with "format".
ks_disk_fs() {
    local dev=/dev/disk/by-serial/$1
    [ -e "$dev" ] || ks_fail "no disk $1"
    if [ "${3:-}" = format ]; then
        mkfs.ext4 -q -F "$dev" || ks_fail "mkfs on $1"
    fi
    mkdir -p "$2"
    mount -t ext4 "$dev" "$2" || ks_fail "mount $1 on $2"
}

# Writes the passphrase the host chose to a tmpfs file, without a newline. It goes from
# file to file through a pipe, never through the shell's memory (scenario 10 dumps RAM).
ks_pass_file() {
    mkdir -p /run/ks-test
    (umask 077; sed -n 's/^passphrase=//p' /run/ks-test/in | tail -n 1 | tr -d '\n' > "$KS_PASS_FILE")
}

ks_mode() { stat -c '%u:%g %a' "$1"; }

ks_mount_opts() { awk -v p="$1" '$5 == p {print $6}' /proc/self/mountinfo | tail -n 1; }

ks_has_opt() { ks_mount_opts "$1" | tr ',' '\n' | grep -qx "$2"; }

# A description of a folder tree: names, owners, modes, sizes, link targets and content
# hashes, one line each, sorted. Two trees with the same manifest hold the same data.
ks_manifest() {
    (cd "$1" && find . -mindepth 1 | sort | while read -r f; do
        if [ -L "$f" ]; then
            echo "$f link $(stat -c '%u:%g' "$f") -> $(readlink "$f")"
        elif [ -d "$f" ]; then
            echo "$f dir $(stat -c '%u:%g %a' "$f")"
        else
            echo "$f file $(stat -c '%u:%g %a %s' "$f") $(sha256sum < "$f" | cut -c1-64)"
        fi
    done)
}

ks_lock_is_clean() {
    ks_assert "no dm mapping remains" ks_no_mapping
    ks_assert "no loop device is attached" ks_no_loop_in_use
    ks_assert "the volume is not mounted" ks_not_mounted "$KS_ROOT_MNT"
    ks_assert "the Persistent folder is not mounted" ks_not_mounted "$KS_PERSISTENT"
    ks_assert "no cryptsetup key in the kernel keyring" ks_no_volume_key_in_keyring
}

ks_no_volume_key_in_keyring() { ! grep -q 'cryptsetup' /proc/keys 2>/dev/null; }

# Tor, as a live system runs it: as root, dropping to debian-tor, DataDirectory
# /var/lib/tor, no network, one onion service.
KS_ONION=/var/lib/tor/onion-web
ks_tor_setup() {
    mkdir -p /etc/tor /var/lib/tor /var/log/tor
    chown 101:101 /var/lib/tor /var/log/tor
    chmod 2700 /var/lib/tor
    cat > /etc/tor/torrc <<'TORRC'
DataDirectory /var/lib/tor
User debian-tor
DisableNetwork 1
SocksPort 0
RunAsDaemon 0
Log notice file /var/log/tor/notices.log
HiddenServiceDir /var/lib/tor/onion-web
HiddenServicePort 80 127.0.0.1:8080
TORRC
}

ks_tor_pid() { pidof tor | tr ' ' '\n' | head -n 1; }

# Starts tor in the background and waits for its onion address.
ks_tor_start() {
    rm -f /tmp/tor-started
    setsid tor -f /etc/tor/torrc >/dev/null 2>&1 &
    ks_tor_wait_address
}

ks_tor_wait_address() {
    local i
    for i in $(seq 1 600); do
        [ -s "$KS_ONION/hostname" ] && [ -n "$(ks_tor_pid)" ] && return 0
        [ "$i" -gt 50 ] && [ -z "$(ks_tor_pid)" ] && break
        sleep 0.1
    done
    tail -n 5 /var/log/tor/notices.log 2>/dev/null | sed 's/^/KS-LOG tor: /'
    return 1
}

ks_onion_address() { cat "$KS_ONION/hostname" 2>/dev/null; }

# The 64 secret bytes of the onion service key, in hex.
ks_onion_secret_hex() { od -An -v -tx1 -j 32 "$KS_ONION/hs_ed25519_secret_key" | tr -d ' \n'; }

ks_tor_bound() { grep -q " /var/lib/tor " /proc/self/mountinfo; }

# Ends the phase successfully and asks the host to dump this guest's RAM (the phase's
# last step: the host quits the VM after the dump). Clean caches are dropped first, as
# `keepsake lock` does, unless "keep-caches" is given.
ks_dump_ram_and_halt() {
    sync
    [ "${1:-}" = keep-caches ] || echo 3 > /proc/sys/vm/drop_caches
    echo "KS-PHASE-RC 0"
    echo "KS-DUMP-NOW"
    while true; do sleep 60; done
}

# Every built-in feature but persistent (enabled by default) and tor-state (scenario 08).
KS_ALL_FEATURES="dotfiles gnupg ssh-client network-connections bookmarks thunderbird electrum pidgin additional-software printers greeter-settings tor-bridges"

# Each bind feature's destination, owner:group and mode, as the catalogue declares them.
KS_EXPECT="
/home/amnesia/Persistent 1000:1000 700
/home/amnesia/.gnupg 1000:1000 700
/home/amnesia/.ssh 1000:1000 700
/etc/NetworkManager/system-connections 0:0 700
/home/amnesia/.mozilla/firefox/bookmarks 1000:1000 700
/home/amnesia/.thunderbird 1000:1000 700
/home/amnesia/.electrum 1000:1000 700
/home/amnesia/.purple 1000:1000 700
/var/cache/apt/archives 0:0 755
/var/lib/apt/lists 0:0 755
/etc/cups 0:7 755
/var/lib/gdm3/settings/persistent 0:0 700
/var/lib/tca 0:0 700"

# A live system's view: the stick's system partition mounted read-only, system folders
# present with their owners (/etc/cups is root:lp).
ks_live_session() {
    mkdir -p /run/live/medium
    mount -o ro /dev/vda1 /run/live/medium
    ks_system_folders
}

ks_system_folders() {
    mkdir -p /etc/cups /var/cache/apt/archives /var/lib/apt/lists /etc/NetworkManager
    chown 0:7 /etc/cups && chmod 0755 /etc/cups
    echo "# the live system's default" > /etc/cups/.keep-cups
}

# Checks that do not end the phase (scenarios 17 and 18, which report every rule a client
# breaks, not only the first): each failure prints KS-FAIL, and ks_checks_done fails the
# phase at its end. Use ks_fail/ks_assert for the steps later checks depend on.
KS_SOFT_FAILED=0
ks_check() {
    local what=$1; shift
    if "$@"; then ks_ok "$what"; else echo "KS-FAIL $what"; KS_SOFT_FAILED=1; fi
}
ks_check_eq() {
    if [ "$2" = "$3" ]; then ks_ok "$1: $2"; else echo "KS-FAIL $1: got '$2', expected '$3'"; KS_SOFT_FAILED=1; fi
}
# ks_check_rc WANT DESCRIPTION -- COMMAND...: as ks_expect_rc; the output stays in /tmp/ks-cmd.out.
ks_check_rc() {
    local want=$1 what=$2 got; shift 3
    "$@" >/tmp/ks-cmd.out 2>&1
    got=$?
    if [ "$got" -ne "$want" ]; then
        sed 's/^/    | /' /tmp/ks-cmd.out
        echo "KS-FAIL $what: exit $got, expected $want"; KS_SOFT_FAILED=1
        return 1
    fi
    ks_ok "$what (exit $got)"
}
ks_checks_done() { [ "$KS_SOFT_FAILED" = 0 ]; }
# The device and inode of a path: a bind mount shows its source's.
ks_inode() { stat -L -c '%d:%i' "$1" 2>/dev/null; }
# The file system type and superblock options of the topmost mount on a path.
ks_fstype() { awk -v p="$1" '$5 == p {for (i = 7; i <= NF; i++) if ($i == "-") t = $(i + 1)} END {print t}' /proc/self/mountinfo; }
ks_super_opts() { awk -v p="$1" '$5 == p {for (i = 7; i <= NF; i++) if ($i == "-") t = $(i + 3)} END {print t}' /proc/self/mountinfo; }
# ks_check_refused DESCRIPTION -- COMMAND...: COMMAND must fail (any non-zero exit).
ks_check_refused() {
    local what=$1 got; shift 2
    "$@" >/tmp/ks-cmd.out 2>&1
    got=$?
    sed 's/^/    | /' /tmp/ks-cmd.out
    if [ "$got" -eq 0 ]; then echo "KS-FAIL $what: exit 0, expected a refusal"; KS_SOFT_FAILED=1; return 1; fi
    ks_ok "$what (exit $got)"
}

# tails_hand_back NAME PATH: the config's text, stat and ACL, for the host's checks.
tails_hand_back() {
    sed "s/^/KS-LOG $1: /" "$2"
    ks_out "conf_$1" "$(base64 < "$2" | tr -d '\n')"
    ks_out "stat_$1" "$(stat -c '%u:%g %f %F' "$2")"
    ks_out "acl_$1" "$(acl-dump "$2" | tr '\n' ',' | sed 's/,$//')"
}
