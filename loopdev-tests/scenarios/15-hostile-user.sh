# The live user (uid 1000) against root (issues 11, 24): twelve classes of attack, run as
# uid 1000 against real keepsake commands, and each with a negative control that runs the
# same attack against a deliberately naive root operation built for the test, to show the
# harness can see the attack win. The checks look at what the attack was after (a root
# file's owner, mode, content and existence; a marker only a root process can write; the
# volume's data; the mount table), not only at exit codes. The attack programs are
# loopdev-tests/hostile/*.c, built static by lib/vm.sh and found in the guest in /hostile.
#
# One boot: classes 5, 8, 6, 4, 2, 3, 7, 9, 10 on one volume, 11 to 13 beside it, then
# class 1 with a real tor running (H_PHASES=files or H_PHASES=tor runs one part, from a
# blank stick; H_CLASSES="11 12" some classes of the files phase). Checks here
# are soft: a failed one is counted and the phase goes on, so that one run reports every
# class. The races run H_ROUNDS rounds each, bounded in time; the controls fewer.
#
# What this scenario assumes of keepsake once issue 11 is fixed (the lead's list):
#  1. tor: a process is "the tor using /var/lib/tor" only if it runs as root or debian-tor,
#     its /proc/PID/exe is /usr/bin/tor (dev+inode) and it shares keepsake's mount and user
#     namespaces; tor is restarted only through systemd or as /usr/bin/tor -f /etc/tor/torrc.
#     With a real root tor running and the user's fake armed: `feature enable tor-state`
#     and `unlock` (tor-state enabled) exit 0, and the fake never runs as root. A fake that
#     moved into its own mount namespace while the volume was mounted keeps the volume
#     mounted there: `lock` exits 5 naming it and changes nothing; `lock --force` ends it
#     and exits 0.
#  2. Folders keepsake creates are never chmod-ed or chown-ed by name: `feature enable gnupg`
#     (no ~/.gnupg) and `feature enable dotfiles` (a sub-folder of mode 0777 in the volume's
#     dotfiles) leave a root file alone however the user swaps the new folder; any exit but
#     1 or a signal is accepted (the race decides between 0 and a refusal).
#  3. The dotfiles rollback (a folder where the volume has a file makes `feature enable
#     dotfiles` fail) removes only its own links, through the parent's descriptor: a parent
#     swapped for a symlink to /etc costs /etc nothing. Any exit but 1 or a signal.
#  4. `restore --feature persistent --overwrite` with a mount inside Persistent: exit 5 and
#     the old content intact (a transaction).
#  5. A forged archive (the 64-byte v1 header asking 4194304 KiB x 64 passes, 1 lane, then
#     200 random bytes: 264 bytes): `backup verify` and `restore` exit 6 or 7 within 10 s
#     and read no passphrase (it is offered with --passphrase-fd 0 and must stay in the pipe).
#  6. A bind source inside a user-writable feature (source=Persistent/sbin over
#     /usr/local/sbin, Persistent/profile.d over /etc/profile.d) is refused: `unlock` and
#     `feature enable Persistent/sbin` (a line of keepsake-features.conf) exit 9 and nothing
#     is bound there; an archive whose persistence.conf carries the lines does not get them
#     bound either (restore refuses it, or the next unlock refuses the lines with exit 9).
#  7. `lock` (default RLIMIT_NOFILE 1024) with a folder 1100 levels deep in the home
#     (dotfiles active) or in Persistent: exit 0, nothing left, the tree kept.
#  8. `unlock` with a persistence.conf over 64 KiB, or not UTF-8: exit 9.
# And of issue 24 (who can write the bytes, namespaces, commands cut short):
#  9. The user hides the volume in namespaces of its own (chrooted, pivot_root-ed, a pid
#     namespace with a private /proc, a mount over its root): `lock` exits 5 naming it,
#     `lock --force` exits 0 and leaves no mapping.
# 10. SIGINT, SIGTERM, SIGHUP to `restore --overwrite` of a 24 MiB archive at 10% of a
#     measured restore's start and at 0..75% of its work (from when its staging folder
#     appears): exit 128+N (0 if it finished first), no .keepsake-* folder left at
#     the volume root, the content the old or the new archive's whole; at least one
#     restore per signal really stopped; the next restore works. Each signal at 30% and 70%
#     of unlock, feature enable, feature disable and lock: 128+N from keepsake (not death
#     by the signal), the volume unlocked or locked whole and the feature on or off whole,
#     the next command works; the next lock leaves no mapping. SIGKILL of a restore leaves its
#     staging folder (the control): `check` exits 7 naming it, the next unlock removes it;
#     so does the next restore.
# 11. A crafted container (root's files inside, binding a folder over /usr/local/sbin) in
#     places the user could have written it: unlock exits 9 and binds nothing outside the
#     home; feature enable and add of system paths exit 8; status says why.
# 12. A LUKS2 volume whose data segment is cipher_null: unlock exits 7, check names it.
# 13. persistence.conf owned by 115:122 where another account holds those ids: exit 9.
# Stand-ins, said where they are used: root plants the configs of classes 6 and 8 (the user
# cannot write persistence.conf; they stand for a damaged or restored one) and root mounts
# a tmpfs for the user's FUSE mount of class 4 (no FUSE in the guest).

H_ROUNDS=${H_ROUNDS:-20}
H_CONTROL_ROUNDS=6

host_main() {
    ks_set passphrase "hostile $(ks_random)"
    ks_set backup_passphrase "archive $(ks_random)"
    local usb
    usb=$(ks_live_stick usb 320M) || return 1
    # H_PHASES picks phases when working on one class; each phase can start from a blank stick.
    # H_ROUNDS and H_CLASSES reach the guest's init as its environment (kernel command line).
    local phase classes=${H_CLASSES:-}
    KS_BOOT_ARGS="${KS_BOOT_ARGS:-}${H_ROUNDS:+ H_ROUNDS=$H_ROUNDS}${classes:+ H_CLASSES=${classes// /,}}"
    for phase in ${H_PHASES:-all}; do ks_phase $phase "usb=$usb"; done
    h_host_summary
}

# One line per class: how often the attack won against keepsake, and the control.
h_host_summary() {
    local c v titles
    titles="1:root runs the user's fake tor
2:root chmod through a mkdir race
3:root unlink through a swapped parent (dotfiles rollback)
4:restore --overwrite with a mount inside the feature
5:forged archive header (argon2id 4 GiB x 64)
6:config binds a user-writable source over system paths
7:a deep tree blocks lock (EMFILE)
8:unlock exits 0 with persistence.conf refused
9:the live user hides the volume in namespaces of its own
10:SIGINT/SIGTERM/SIGHUP during restore, unlock, feature changes, lock; SIGKILL's leftovers
11:a container the live user could have written binds over system paths
12:a cipher_null data segment opens and writes in clear
13:Tails' config ids held by another account are trusted"
    echo "  # per class: attack won against keepsake / negative control won against the naive op"
    for c in 1 2 3 4 5 6 7 8 9 10 11 12 13; do
        v=$(ks_get "class$c")
        if [ -z "$v" ] && [ -n "${H_CLASSES:-}" ] && [ $c != 1 ] && ! h_class_chosen $c; then
            echo "    ..    class $c: not run (H_CLASSES=$H_CLASSES)"
        elif [ -z "$v" ] && ! h_phase_chosen $c; then
            echo "    ..    class $c: not run (H_PHASES=$H_PHASES)"
        elif [ -z "$v" ]; then
            ks_host_fail "class $c ($(echo "$titles" | sed -n "s/^$c://p")): no result (the phase ended before it)"
        else
            echo "    ..    class $c ($(echo "$titles" | sed -n "s/^$c://p")): $v"
        fi
    done
}

# Whether H_PHASES runs the phase of class $1 (1 is the tor phase's, the others the files').
h_phase_chosen() {
    local want=files
    [ "$1" = 1 ] && want=tor
    case " ${H_PHASES:-all} " in *" all "*|*" $want "*) return 0 ;; esac
    return 1
}

# H_CLASSES="9 7" (or 9,7) runs only those classes of the files phase (when working on one).
h_class_chosen() {
    case " $(echo "${H_CLASSES:-5 8 6 4 2 3 7 9 10 11 12 13}" | tr ',' ' ') " in *" $1 "*) return 0 ;; esac
    return 1
}

# ---------------------------------------------------------------- guest: soft checks

H_FAILED=0
h_ok() { echo "KS-OK $*"; }
h_fail() { echo "KS-FAIL $*"; H_FAILED=$((H_FAILED + 1)); }
h_check() {
    local what=$1; shift
    if "$@"; then h_ok "$what"; else h_fail "$what"; fi
}
h_result() {
    [ "$H_FAILED" -eq 0 ] || ks_log "$H_FAILED check(s) failed in this phase"
    [ "$H_FAILED" -eq 0 ]
}

# A class: its attack checks (H_AW of H_AT won) and its negative control (H_CW of H_CT).
h_class_begin() {
    H_CLASS=$1; H_AW=0; H_AT=0; H_CW=0; H_CT=0
    echo "KS-STEP class $1: $2"
}
h_class_end() { ks_out "class$H_CLASS" "attack won $H_AW/$H_AT; control won $H_CW/$H_CT"; }

# h_attack WHAT PREDICATE...: the attack is held off when PREDICATE holds.
h_attack() {
    local what=$1; shift
    H_AT=$((H_AT + 1))
    if "$@"; then h_ok "[$H_CLASS] $what"; else H_AW=$((H_AW + 1)); h_fail "[$H_CLASS] ATTACK WON: $what"; fi
}

# h_control WHAT PREDICATE...: the same predicate must fail against the naive operation.
h_control() {
    local what=$1; shift
    H_CT=$((H_CT + 1))
    if "$@"; then h_fail "[$H_CLASS] control: the naive operation held off the attack: $what"
    else H_CW=$((H_CW + 1)); h_ok "[$H_CLASS] control: the attack beat the naive operation: $what"; fi
}

# For raced controls: the attack must have won at least once over the rounds.
h_control_rounds() {
    H_CT=$((H_CT + $1))
    H_CW=$((H_CW + $2))
    if [ "$2" -ge 1 ]; then
        h_ok "[$H_CLASS] control: the attack beat the naive operation in $2 of $1 rounds ($3)"
    else
        h_fail "[$H_CLASS] control: the attack never beat the naive operation in $1 rounds ($3): the harness cannot see this attack"
    fi
}

# h_run SECONDS COMMAND...: runs a root command, bounded in time. H_RC is its exit status,
# H_MS its wall time; its output is in /tmp/h-cmd.out.
h_run() {
    local secs=$1 t0; shift
    h_now; t0=$H_NOW
    timeout -s KILL "$secs" "$@" > /tmp/h-cmd.out 2>&1
    H_RC=$?
    h_now; H_MS=$((H_NOW - t0))
}
# H_NOW: milliseconds since boot, without a fork (rounds are many, and forks cost under TCG).
h_now() {
    local up
    read -r up _ < /proc/uptime
    H_NOW=$(( ${up%.*} * 1000 + 1${up#*.} * 10 - 1000 ))
}
h_rc_is() { [ "$H_RC" -eq "$1" ]; }
# A refusal or a success, but not an internal error (1), a signal or a timeout.
h_not_internal() { [ "$H_RC" -ne 1 ] && [ "$H_RC" -lt 124 ]; }
h_said() { head -c 300 /tmp/h-cmd.out | tr '\n' ' ' | sed 's/ *$//'; }
h_expect_rc() {
    local want=$1 what=$2
    if [ "$H_RC" -eq "$want" ]; then h_ok "[$H_CLASS] $what (exit $H_RC)"
    else h_fail "[$H_CLASS] $what: exit $H_RC, expected $want: $(h_said)"; fi
}

H_AS_USER="/usr/bin/setpriv --reuid 1000 --regid 1000 --clear-groups --reset-env"
h_as_user() { $H_AS_USER "$@"; }
h_is_mount() { awk -v p="$1" '$5 == p {f = 1} END {exit !f}' /proc/self/mountinfo; }
h_unlocked() { [ -n "$(ls /sys/block | grep '^dm-')" ]; }
h_unlock() { h_run 120 keepsake unlock --key-file "$KS_PASS_FILE"; }
h_lock() { h_run 120 keepsake lock; }
# Setup steps between attacks: they must work, or what follows means nothing.
h_setup() {
    local what=$1; shift
    h_run 120 "$@"
    [ "$H_RC" -eq 0 ] || h_fail "[$H_CLASS] setup: $what: exit $H_RC: $(h_said)"
}

# Owner, mode and content hash of a regular file (empty if it is not one).
h_file_id() { [ -f "$1" ] && [ ! -L "$1" ] && echo "$(stat -c '%u:%g %a' "$1") $(sha256sum < "$1" | cut -c1-16)"; }

# The user's race-swap in the background, its inotify watch in place.
h_watch() {
    rm -f /tmp/h-ready /tmp/h-watch.out
    # Not through a function: $! must be the watcher itself.
    $H_AS_USER /hostile/race-swap "$@" /tmp/h-ready 15000 > /tmp/h-watch.out 2>&1 &
    H_WATCHER=$!
    local i=0
    while [ ! -e /tmp/h-ready ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
}
# Ends the watcher; true if it swapped something.
h_watch_end() {
    local said=
    kill "$H_WATCHER" 2>/dev/null
    wait "$H_WATCHER" 2>/dev/null
    read -r said < /tmp/h-watch.out
    case $said in *swapped*) return 0 ;; esac
    return 1
}

# h_clear PREFIX...: removes every path that starts with PREFIX (a folder and the
# watcher's leftovers beside it), unmounting first whatever is mounted there: never
# deleting through a mount.
h_clear() {
    local p m all=
    for p in "$@"; do
        # The shell's own read: no fork per round (forks are slow under TCG).
        while read -r _ _ _ _ m _; do
            case $m in "$p"*) umount -l "$m" ;; esac
        done < /proc/self/mountinfo
        all="$all $p $p*"
    done
    rm -rf $all
}

# h_round_fail N LINE: a round the attack won. The first three say how; the summary after
# the rounds gives the count.
h_round_fail() {
    if [ "$1" -le 3 ]; then h_fail "$2"; else H_FAILED=$((H_FAILED + 1)); fi
}

h_tally() { echo $1 | tr ' ' '\n' | sort | uniq -c | awk '{printf "%s%dx exit %s", sep, $1, $2; sep = ", "}'; }

# ---------------------------------------------------------------- guest: phase "files"

H_VICTIM=/etc/hostile-victim-chmod
H_CONF=/etc/hostile-victim.conf

guest_all() { h_files; h_tor; h_result; }
guest_files() { h_files; h_result; }
guest_tor() { h_tor; h_result; }

h_files() {
    [ -x /hostile/race-swap ] || { h_fail "the attack programs are not in the guest (gcc missing on the host?)"; return 1; }
    H_DOT=$KS_ROOT_MNT/dotfiles
    mkfs.ext4 -q -L Tails /dev/vda1 && ks_live_session
    ks_pass_file
    (umask 077; sed -n 's/^backup_passphrase=//p' /run/ks-test/in | tail -n 1 | tr -d '\n' > /run/ks-test/bpass)
    ks_expect_rc 0 "create" -- keepsake create --device /dev/vda --yes --key-file "$KS_PASS_FILE" $KS_KDF
    ks_expect_rc 0 "unlock" -- keepsake unlock --key-file "$KS_PASS_FILE"
    cp $KS_ROOT_MNT/persistence.conf /tmp/h-conf.good
    local c t0 locked=
    for c in 5 8 6 4 2 3 7 9 10 11 12 13; do
        h_class_chosen $c || continue
        # Class 10 starts from the volume unlocked with its good config; 11 to 13 from it
        # locked, with its good config.
        if [ $c = 10 ]; then
            h_unlocked || h_unlock
            h_plant_conf good
        elif [ $c -ge 11 ] && [ -z "$locked" ]; then
            h_unlocked || h_unlock
            h_plant_conf good
            h_lock
            locked=1
        fi
        t0=$(ks_now_ms)
        h_class$c; h_time $c $t0
    done
    if [ -z "$locked" ]; then
        h_unlocked || h_unlock
        h_plant_conf good
        h_lock
    fi
}

h_time() { echo "KS-TIME class$1 $(( $(ks_now_ms) - $2 ))"; }

# --- 5. A forged archive header that asks argon2id for 4 GiB x 64 passes.

# Writes a 264-byte archive: a well-formed version-1 header (docs/backup-format.md) at the
# format's ceilings, then 200 random bytes standing for a first chunk.
h_forge_archive() {
    { printf 'KSBACKUP\001\001\000\000'   # magic, version 1, KDF argon2id, reserved
      printf '\000\000\100\000'           # memory 0x00400000 KiB = 4 GiB
      printf '\100\000\000\000'           # 64 iterations
      printf '\001\000\000\000'           # 1 lane
      head -c 16 /dev/urandom             # salt
      printf '\000\000\001\000'           # chunk size 65536
      head -c 7 /dev/urandom              # nonce prefix
      head -c 13 /dev/zero                # reserved
      head -c 200 /dev/urandom
    } > "$1"
}

# Runs keepsake with a passphrase offered on standard input; what it left in the pipe
# goes to /tmp/h-left.
h_run_offering() {
    h_run 60 sh -c 'printf "offered-passphrase\nrest\n" | { "$@"; rc=$?; cat > /tmp/h-left; exit $rc; }' sh "$@"
}
h_refused_up_front() {
    { [ "$H_RC" -eq 6 ] || [ "$H_RC" -eq 7 ]; } && [ "$H_MS" -lt 10000 ] && grep -qx offered-passphrase /tmp/h-left
}
h_passphrase_read() { grep -qx offered-passphrase /tmp/h-left && echo "not read" || echo "read"; }

h_class5() {
    h_class_begin 5 "a forged archive header asking argon2id for 4 GiB x 64 passes"
    h_forge_archive /tmp/h-forged.ksb
    h_check "[5] the forged archive is $(stat -c %s /tmp/h-forged.ksb) bytes, made by printf" test "$(stat -c %s /tmp/h-forged.ksb)" -eq 264
    h_run_offering keepsake backup verify /tmp/h-forged.ksb --passphrase-fd 0
    h_attack "backup verify of the forged archive is refused up front: exit $H_RC (want 6 or 7), ${H_MS} ms, passphrase $(h_passphrase_read)" h_refused_up_front
    ks_manifest $KS_ROOT_MNT > /tmp/h-before
    h_run_offering keepsake restore /tmp/h-forged.ksb --passphrase-fd 0
    h_attack "restore of the forged archive is refused up front: exit $H_RC (want 6 or 7), ${H_MS} ms, passphrase $(h_passphrase_read)" h_refused_up_front
    ks_manifest $KS_ROOT_MNT > /tmp/h-after
    h_attack "the volume is as it was" cmp -s /tmp/h-before /tmp/h-after
    h_run_offering /hostile/naive-kdf /tmp/h-forged.ksb
    h_control "a reader that trusts the header's cost ends with exit $H_RC" h_refused_up_front
    h_class_end
}

# --- 10. Stop signals: every command rolls back or finishes, then exits 128+N.
#
# As the live user would through sudo (sudo relays the signal it gets to keepsake; there is
# no sudo in the guest, so /hostile/signal-after stands in for it: it runs the command with
# the signals at their defaults and sends one after a delay). Restore is interrupted at
# spread fractions of a measured restore's start and of its work; each round restores the
# archive (a or b) the volume does not hold, so that old and new alternate. SIGKILL cannot
# be caught: what it leaves is the class's negative control, and then what check says and
# the next unlock and restore clean.

H10_ARGS="--feature persistent --overwrite --key-file /run/ks-test/bpass"
# What the volume's Persistent holds: the "a" or "b" archive's content, or neither.
h10_state() {
    ks_manifest $KS_ROOT_MNT/Persistent > /tmp/h10-now
    if cmp -s /tmp/h10-now /tmp/h10-a.man; then echo a
    elif cmp -s /tmp/h10-now /tmp/h10-b.man; then echo b
    else echo mixed; fi
}
h10_leftovers() { ls -a $KS_ROOT_MNT | grep '^\.keepsake-' | tr '\n' ' '; }
h10_none_left() { [ -z "$(h10_leftovers)" ]; }
# h10_fill a|b MIB: Persistent holds MIB files of 1 MiB of random bytes, then its archive.
h10_fill() {
    local name=$1 mib=$2
    rm -rf $KS_ROOT_MNT/Persistent/*
    h_as_user sh -c "cd ~/Persistent && mkdir -p deep/er && for i in \$(seq -w 1 $mib); do head -c 1048576 /dev/urandom > $name-\$i; done && echo $name > deep/er/mark" \
        || h_fail "[10] setup: the user could not write in Persistent"
    ks_manifest $KS_ROOT_MNT/Persistent > /tmp/h10-$name.man
    rm -f /tmp/h10-$name.ksb
    h_setup "backup $name" keepsake backup --feature persistent /tmp/h10-$name.ksb \
        --key-file /run/ks-test/bpass --archive-kdf-memory 8192 --archive-kdf-iterations 1
}
# h10_signal [--seen|--arming] MS SIGNAL COMMAND...: H_RC; H10_SENT=1 if the signal reached it
# running, H10_DIED=1 if the signal itself ended it. With --seen, MS count from when a
# restore's staging folder appears at the volume root (H10_SEEN: when, H10_END: when it
# ended, both in ms from the start). With --arming, MS count from when a watcher's state
# file appears in /run/keepsake: unlock is then waiting for it to say it is armed.
h10_signal() {
    local seen=
    [ "$1" = --seen ] && { seen="--seen $KS_ROOT_MNT .keepsake-restore-"; shift; }
    [ "$1" = --arming ] && { seen="--seen /run/keepsake watch."; shift; }
    local ms=$1 sig=$2; shift 2
    h_run 300 /hostile/signal-after $seen "$ms" "$sig" "$@"
    H10_SENT=0 H10_DIED=0
    case $(tail -n 1 /tmp/h-cmd.out) in *"not sent"*) ;; *sent*) H10_SENT=1 ;; esac
    case $(tail -n 1 /tmp/h-cmd.out) in *"ended by the signal"*) H10_DIED=1 ;; esac
    H10_SEEN=$(sed -n 's/^seen at \([0-9]*\) ms$/\1/p' /tmp/h-cmd.out)
    H10_END=$(sed -n 's/^ended at \([0-9]*\) ms$/\1/p' /tmp/h-cmd.out)
}
# gnupg as feature enable/disable leave it: on (its line and its bind), off (neither), or
# torn (one without the other).
h10_gnupg() {
    local line=no bound=no
    grep -q 'source=gnupg' $KS_ROOT_MNT/persistence.conf 2>/dev/null && line=yes
    h_is_mount /home/amnesia/.gnupg && bound=yes
    case $line$bound in yesyes) echo on ;; nono) echo off ;; *) echo "torn (line $line, bound $bound)" ;; esac
}
# h10_whole_after WANT BEFORE: the command exited WANT by itself (or 0: not sent, or it
# landed after keepsake's last look at it), or the signal ended it before keepsake set
# its handler and nothing changed
# ($whole is still BEFORE); and what it changed is whole ($whole is not "neither" nor
# "torn"). Counts in H10_CAUGHT the signals keepsake itself caught.
# h10_caught WANT: whether keepsake itself caught the last signal (it reached the command
# running, did not end it, and the exit is WANT); each one is counted in H10_CAUGHT.
h10_caught() {
    [ "$H10_SENT" = 1 ] && [ "$H10_DIED" = 0 ] && [ "$H_RC" -eq "$1" ] || return 1
    H10_CAUGHT=$((H10_CAUGHT + 1))
}
h10_whole_after() {
    h10_caught "$1"
    { { [ "$H_RC" -eq "$1" ] && [ "$H10_DIED" = 0 ]; } || [ "$H_RC" -eq 0 ] \
        || { [ "$H10_DIED" = 1 ] && [ "$whole" = "$2" ]; }; } \
        && [ "$whole" != neither ] && case $whole in torn*) false ;; *) true ;; esac
}
# Whole includes the watcher unlock arms: armed when unlocked; gone (it stops when the
# mapping goes, within moments) when locked, its state file with it.
h10_unlocked_whole() {
    h_unlocked && h_is_mount $KS_ROOT_MNT && h_is_mount /home/amnesia/Persistent \
        && keepsake status 2>/dev/null | grep -q "watched: pulling"
}
h10_locked_whole() {
    ks_no_mapping && ks_not_mounted $KS_ROOT_MNT && ks_not_mounted /home/amnesia/Persistent && h10_no_watcher
}
h10_no_watcher() {
    local i
    for i in $(seq 1 40); do
        ls /run/keepsake/watch.*.json >/dev/null 2>&1 || return 0
        sleep 0.05
    done
    return 1
}

# h10_took VAR: VAR is the last run's time if it ran whole (exit 0), or, after h10_signal,
# if keepsake caught the signal and finished (its own 128+N).
h10_took() {
    [ "$H_RC" -eq 0 ] || { [ "$H_RC" -gt 128 ] && [ "$H10_DIED" = 0 ]; } && eval "$1=$H_MS"
}

h_class10() {
    h_class_begin 10 "SIGINT, SIGTERM, SIGHUP during restore, unlock, feature changes and lock; what a SIGKILL leaves"
    # Persistent active, as the user has it: the archives are made from there.
    h_is_mount /home/amnesia/Persistent || { h_lock; h_unlock; }
    h10_fill b 24
    h10_fill a 6
    # A whole restore, timed, and when its staging folder appeared: the signals land at
    # fractions of its start (the archive opened, its key derived) and of its work.
    h10_signal --seen 999999 TERM keepsake restore $H10_ARGS /tmp/h10-b.ksb
    local full=${H10_END:-0} work=$((${H10_END:-0} - ${H10_SEEN:-0})) cur target sig want at state left n sent stopped how
    h_check "[10] a whole restore of 24 MiB exits 0 in $full ms (staging from ${H10_SEEN:-never} ms) and leaves nothing: $(h10_leftovers)" \
        eval '[ "$H_RC" -eq 0 ] && [ "$H10_SENT" = 0 ] && [ -n "$H10_SEEN" ] && [ "$(h10_state)" = b ] && h10_none_left'
    for sig in INT TERM HUP; do
        case $sig in INT) want=130 ;; TERM) want=143 ;; HUP) want=129 ;; esac
        sent=0; stopped=0; n=0
        for at in start:10 work:0 work:25 work:50 work:75; do
            cur=$(h10_state); [ "$cur" = a ] && target=b || target=a
            case $at in
                start:*) h10_signal $((full * ${at#*:} / 100)) $sig keepsake restore $H10_ARGS /tmp/h10-$target.ksb ;;
                work:*) h10_signal --seen $((work * ${at#*:} / 100)) $sig keepsake restore $H10_ARGS /tmp/h10-$target.ksb ;;
            esac
            at="${at%:*} ${at#*:}%"
            state=$(h10_state); left=$(h10_leftovers); n=$((n + 1))
            if [ "$H10_SENT" = 1 ]; then
                sent=$((sent + 1))
                if [ "$H10_DIED" = 1 ]; then
                    how="ended by the signal before keepsake set its handler: nothing begun"
                else
                    how=$(grep -m1 interrupted /tmp/h-cmd.out | cut -c1-160)
                    [ "$state" = "$cur" ] && stopped=$((stopped + 1))
                fi
                # Exit 0 with the new content whole: the restore had passed its last look
                # at the flag (or exited) when the signal landed; that too is whole.
                h_attack "SIG$sig at $at (ended at $H10_END ms): exit $H_RC (want $want, or 0 finished just before), content $state (was $cur), left: ${left:-nothing}: $how" \
                    eval '{ [ "$H_RC" -eq $want ] || { [ "$H_RC" -eq 0 ] && [ "$state" = "$target" ]; }; } && { [ "$state" = "$cur" ] || [ "$state" = "$target" ]; } && [ -z "$left" ]'
            else
                h_attack "SIG$sig at $at: finished first: exit $H_RC (want 0), content $state (want $target), left: ${left:-nothing}" \
                    eval '[ "$H_RC" -eq 0 ] && [ "$state" = "$target" ] && [ -z "$left" ]'
            fi
        done
        h_attack "SIG$sig: $stopped of $n restores stopped by keepsake and rolled back ($sent signalled while running); at least 1" \
            test "$stopped" -ge 1
        ks_out "class10_$sig" "$stopped/$n rolled back, $sent signalled"
    done
    cur=$(h10_state); [ "$cur" = a ] && target=b || target=a
    h_run 300 keepsake restore $H10_ARGS /tmp/h10-$target.ksb
    h_attack "the next restore after the signals exits $H_RC (want 0) with the $target archive whole" \
        eval '[ "$H_RC" -eq 0 ] && [ "$(h10_state)" = $target ] && h10_none_left'

    # SIGKILL: nothing can roll back. The staging folder stays (the negative control: the
    # checks above would see it), check names it, the next unlock removes it.
    cur=$target; [ "$cur" = a ] && target=b || target=a
    h10_signal --seen 100 KILL keepsake restore $H10_ARGS /tmp/h10-$target.ksb
    left=$(h10_leftovers)
    h_control "SIGKILL 100 ms into the extraction: exit $H_RC, left: ${left:-nothing}" eval '[ -z "$left" ]'
    h_setup "lock after the SIGKILL" keepsake lock
    h_run 300 keepsake check --key-file "$KS_PASS_FILE"
    h_attack "check names the killed restore's staging folder: exit $H_RC (want 7): $(grep -m1 keepsake-restore /tmp/h-cmd.out | cut -c1-200)" \
        eval '[ "$H_RC" -eq 7 ] && grep -q "\.keepsake-restore-[0-9]* is the staging folder of a restore that was killed" /tmp/h-cmd.out'
    h_unlock
    left=$(h10_leftovers)
    h_attack "the next unlock removes it: exit $H_RC, left: ${left:-nothing}, content $(h10_state) (want $cur)" \
        eval '[ "$H_RC" -eq 0 ] && [ -z "$left" ] && [ "$(h10_state)" = $cur ]'
    h10_signal --seen 100 KILL keepsake restore $H10_ARGS /tmp/h10-$target.ksb
    h_check "[10] a second SIGKILL leaves $(h10_leftovers)" eval '[ -n "$(h10_leftovers)" ]'
    h_run 300 keepsake restore $H10_ARGS /tmp/h10-$target.ksb
    h_attack "the next restore removes it and restores: exit $H_RC, left: $(h10_leftovers), content $(h10_state) (want $target)" \
        eval '[ "$H_RC" -eq 0 ] && h10_none_left && [ "$(h10_state)" = $target ]'

    # unlock, feature enable, feature disable and lock, each signal at 30% and 70% of each:
    # the signal waits for the journal, the command finishes and exits 128+N (keepsake's
    # own exit: one the signal ended did not wait for anything), the volume or the feature
    # is whole one way or the other, and the next command works. Each command's time is
    # the one of its last whole run, not of a run minutes before: the host's load drifts
    # (a signal at 30% of a stale, short time lands before keepsake's handler is set; one
    # at 70% of a stale, long time lands after the command ended), and each step below
    # runs the command whole once anyway.
    h_run 120 keepsake lock
    local lock_ms=$H_MS unlock_ms enable_ms disable_ms whole pct
    h_unlock; unlock_ms=$H_MS
    h_run 120 keepsake feature enable gnupg; enable_ms=$H_MS
    h_run 120 keepsake feature disable gnupg; disable_ms=$H_MS
    h_setup "lock" keepsake lock
    local caught arming
    for sig in INT TERM HUP; do
        case $sig in INT) want=130 ;; TERM) want=143 ;; HUP) want=129 ;; esac
        H10_CAUGHT=0
        # First at a point found by what the command does, not by time: as unlock waits
        # for its watcher to say it is armed (the watcher's state file is there, its
        # "armed" line not yet). Unlock goes on, exits 128+N, and the volume is watched. A
        # wait that took the signal for a timeout would kill the watcher there and leave
        # the volume unwatched: pulling the stick would not wipe the key.
        h10_signal --arming 1 $sig keepsake unlock --key-file "$KS_PASS_FILE"
        h10_caught $want && arming=caught || arming=missed
        h_attack "SIG$sig as unlock's watcher arms (seen at ${H10_SEEN:-never} ms, sent: $H10_SENT, ended by it: $H10_DIED): exit $H_RC (want $want), $(h10_unlocked_whole && echo 'unlocked and watched' || echo 'not watched')" \
            eval '[ $arming = caught ] && h10_unlocked_whole'
        h_setup "lock after the signal at the arming" keepsake lock
        for pct in 30 70; do
            h10_signal $((unlock_ms * pct / 100)) $sig keepsake unlock --key-file "$KS_PASS_FILE"
            h10_unlocked_whole && whole="unlocked whole" || { h10_locked_whole && whole="locked whole" || whole="neither"; }
            h_attack "SIG$sig at $pct% of unlock (sent: $H10_SENT, ended by it: $H10_DIED): exit $H_RC (want $want from keepsake, or 0 unsent), $whole" \
                h10_whole_after $want "locked whole"
            if h10_unlocked_whole; then h10_took unlock_ms; else h_unlock; h10_took unlock_ms; fi
            h10_signal $((enable_ms * pct / 100)) $sig keepsake feature enable gnupg
            whole=$(h10_gnupg)
            h_attack "SIG$sig at $pct% of feature enable gnupg (sent: $H10_SENT, ended by it: $H10_DIED): exit $H_RC (want $want from keepsake, or 0 unsent), gnupg $whole" \
                h10_whole_after $want off
            h_run 120 keepsake feature enable gnupg
            h_check "[10] the next feature enable exits $H_RC, gnupg $(h10_gnupg)" eval '[ "$H_RC" -eq 0 ] && [ "$(h10_gnupg)" = on ]'
            h10_took enable_ms
            h10_signal $((disable_ms * pct / 100)) $sig keepsake feature disable gnupg
            whole=$(h10_gnupg)
            h_attack "SIG$sig at $pct% of feature disable gnupg (sent: $H10_SENT, ended by it: $H10_DIED): exit $H_RC (want $want from keepsake, or 0 unsent), gnupg $whole" \
                h10_whole_after $want on
            h_run 120 keepsake feature disable gnupg
            h_check "[10] the next feature disable exits $H_RC, gnupg $(h10_gnupg)" eval '[ "$H_RC" -eq 0 ] && [ "$(h10_gnupg)" = off ]'
            h10_took disable_ms
            h10_signal $((lock_ms * pct / 100)) $sig keepsake lock
            h10_locked_whole && whole="locked whole" || { h10_unlocked_whole && whole="unlocked whole" || whole="neither"; }
            h_attack "SIG$sig at $pct% of lock (sent: $H10_SENT, ended by it: $H10_DIED): exit $H_RC (want $want from keepsake, or 0 unsent), $whole" \
                h10_whole_after $want "unlocked whole"
            h_lock
            h10_took lock_ms
            h_attack "the next lock exits $H_RC, no mapping, no mount" eval '[ "$H_RC" -eq 0 ] && h10_locked_whole'
        done
        # The timed signals miss the handler when the host's speed swings between two runs
        # of a command (before the handler is set, or after the command ended; both are
        # checked above as whole): the count only asks that the timed ones reached it at
        # least twice besides the one at the arming, which always does.
        caught=$H10_CAUGHT
        h_attack "SIG$sig: keepsake itself caught $caught of the 9 signals sent to unlock (one as its watcher arms), feature enable, feature disable and lock (at least 3)" \
            test "$caught" -ge 3
    done
    h_unlock
    h_check "[10] unlocked again for what follows (exit $H_RC)" h_unlocked_with_persistent
    rm -f /tmp/h10-*.ksb
    h_class_end
}

# --- 8. persistence.conf refused for its size or encoding: unlock must not exit 0.

# h_plant_conf good|oversize|bad-utf8|system-paths: root writes persistence.conf (the
# stand-in for a damaged or restored one), with the owner and mode keepsake trusts.
h_plant_conf() {
    local c=$KS_ROOT_MNT/persistence.conf
    case $1 in
        good) cat /tmp/h-conf.good ;;
        oversize) cat /tmp/h-conf.good; head -c 70000 /dev/zero | tr '\0' '#'; echo ;;
        bad-utf8) cat /tmp/h-conf.good; printf '# caf\351: Latin-1, not UTF-8\n' ;;
        system-paths) cat /tmp/h-conf.good
            printf '/usr/local/sbin\tsource=Persistent/sbin\n/etc/profile.d\tsource=Persistent/profile.d\n' ;;
    esac > $c.h-new
    chown 0:0 $c.h-new && chmod 0600 $c.h-new && mv $c.h-new $c
}

h_persistent_state() { h_is_mount /home/amnesia/Persistent && echo "Persistent active" || echo "no feature active"; }

h_class8() {
    h_class_begin 8 "persistence.conf refused for its size or encoding: unlock must say so"
    local fault state size
    for fault in oversize bad-utf8; do
        h_plant_conf $fault
        size=$(stat -c %s $KS_ROOT_MNT/persistence.conf)
        h_setup "lock" keepsake lock
        h_unlock
        state=$(h_persistent_state)
        h_attack "unlock with a $fault persistence.conf ($size bytes) exits 9: exit $H_RC, $state" h_rc_is 9
    done
    # The same lines without the fault do activate: the faults alone made the difference.
    h_plant_conf good
    h_setup "lock" keepsake lock
    h_unlock
    h_check "[8] positive control: without the fault, unlock exits 0 with Persistent active (exit $H_RC)" h_unlocked_with_persistent
    # The naive reader: a config it cannot take is skipped without a word.
    h_plant_conf oversize
    h_naive_unlock $KS_ROOT_MNT/persistence.conf
    h_control "a naive unlock skips the oversized config and exits $H_RC" h_rc_is 9
    h_plant_conf good
    h_class_end
}

h_unlocked_with_persistent() { [ "$H_RC" -eq 0 ] && h_is_mount /home/amnesia/Persistent; }

h_naive_unlock() {
    H_RC=0
    [ "$(stat -c %s "$1")" -le 65536 ] || return 0
}

# --- 6. Config binding a source inside a user-writable feature over system paths.

h_untouched() {  # SYSTEM_FOLDER USER_FILE: the system's folder shows, not the user's
    ! h_is_mount "$1" && [ -e "$1/.hostile-system-file" ] && [ ! -e "$1/$2" ]
}
h_system_paths_untouched() {
    h_untouched /usr/local/sbin ks-hostile-probe && h_untouched /etc/profile.d hostile.sh
}
h_bound_where() {
    local p out=
    for p in /usr/local/sbin /etc/profile.d; do h_is_mount $p && out="$out $p"; done
    echo "${out:- nothing}"
}

h_class6() {
    h_class_begin 6 "a bind source inside a user-writable feature over /usr/local/sbin, /etc/profile.d"
    mkdir -p /usr/local/sbin /etc/profile.d
    echo "the system's" > /usr/local/sbin/.hostile-system-file
    echo "the system's" > /etc/profile.d/.hostile-system-file
    # The user's part: a program root would run from its PATH, a script every login shell sources.
    h_as_user sh -c 'cd ~/Persistent && mkdir -p sbin profile.d &&
        printf "#!/bin/sh\nid -u > /tmp/hostile-probe-ran\n" > sbin/ks-hostile-probe && chmod 0755 sbin/ks-hostile-probe &&
        echo "id -u > /tmp/hostile-profile-ran" > profile.d/hostile.sh' \
        || h_fail "[6] setup: the user could not write in Persistent"

    # a. A custom feature definition (keepsake-features.conf, planted by root) enabled by name.
    printf '/usr/local/sbin\tsource=Persistent/sbin\n' > $KS_ROOT_MNT/keepsake-features.conf
    chmod 0600 $KS_ROOT_MNT/keepsake-features.conf
    h_run 60 keepsake feature enable Persistent/sbin
    h_expect_rc 9 "feature enable of Persistent/sbin over /usr/local/sbin is refused"
    h_attack "after feature enable Persistent/sbin, bound over system paths:$(h_bound_where)" h_system_paths_untouched
    [ "$H_RC" -eq 0 ] && h_run 60 keepsake feature disable Persistent/sbin
    h_clear_system_binds
    rm -f $KS_ROOT_MNT/keepsake-features.conf

    # b. persistence.conf with the two lines.
    h_plant_conf system-paths
    h_setup "lock" keepsake lock
    h_unlock
    h_expect_rc 9 "unlock with Persistent/sbin and Persistent/profile.d lines is incomplete"
    h_attack "after unlock, bound over system paths:$(h_bound_where)" h_system_paths_untouched

    # c. An archive whose persistence.conf has those lines, restored over a clean config.
    h_setup "backup with the planted config" keepsake backup /tmp/h-system-paths.ksb \
        --key-file /run/ks-test/bpass --archive-kdf-memory 8192 --archive-kdf-iterations 1
    h_clear_system_binds
    h_plant_conf good
    h_run 120 keepsake --json restore --overwrite /tmp/h-system-paths.ksb --key-file /run/ks-test/bpass
    h_check "[6] restore of that archive: not an internal error (exit $H_RC)" h_not_internal
    # restore keeps only the lines activation trusts, and names those it dropped.
    h_check "[6] restore dropped both lines and said so: $(h_said)" \
        sh -c 'tr -d "\n" < /tmp/h-cmd.out | grep -q "\"config_dropped\": *\[.*Persistent/sbin.*Persistent/profile.d"'
    h_check "[6] the restored persistence.conf has neither line" \
        sh -c "! grep -q 'Persistent/sbin\|Persistent/profile.d' $KS_ROOT_MNT/persistence.conf"
    h_setup "lock" keepsake lock
    h_unlock
    h_attack "after restore and unlock, bound over system paths:$(h_bound_where)" h_system_paths_untouched
    h_clear_system_binds

    # Negative control: a naive activation binds whatever a line says.
    printf '/usr/local/sbin\tsource=Persistent/sbin\n/etc/profile.d\tsource=Persistent/profile.d\n' > /tmp/h-lines
    while read -r dest opts; do mount --bind "$KS_ROOT_MNT/${opts#source=}" "$dest"; done < /tmp/h-lines
    h_control "a naive activation bound:$(h_bound_where); root's PATH finds $(PATH=/usr/local/sbin command -v ks-hostile-probe)" h_system_paths_untouched
    h_clear_system_binds
    h_plant_conf good
    rm -f $KS_ROOT_MNT/persistence.conf.before-restore
    h_class_end
}


h_clear_system_binds() {
    local p
    for p in /usr/local/sbin /etc/profile.d; do while h_is_mount $p; do umount $p || break; done; done
}

# --- 4. restore --overwrite with a mount inside the feature folder.

h_class4() {
    h_class_begin 4 "restore --overwrite with a mount inside Persistent"
    local p=/home/amnesia/Persistent vp=$KS_ROOT_MNT/Persistent
    h_as_user sh -c 'cd ~/Persistent && rm -rf ./* && for i in $(seq -w 1 40); do echo "new $i" > new-$i; done' \
        || h_fail "[4] setup: the user could not write in Persistent"
    rm -rf /tmp/h-new-tree && cp -a $vp /tmp/h-new-tree
    h_setup "backup of Persistent" keepsake backup --feature persistent /tmp/h-new.ksb \
        --key-file /run/ks-test/bpass --archive-kdf-memory 8192 --archive-kdf-iterations 1
    h_persistent_old
    ks_manifest $vp > /tmp/h-old
    h_run 120 keepsake restore --feature persistent --overwrite /tmp/h-new.ksb --key-file /run/ks-test/bpass
    ks_manifest $vp > /tmp/h-after
    h_expect_rc 5 "restore --overwrite with a mount inside Persistent is refused"
    h_attack "the old Persistent is intact: $(wc -l < /tmp/h-old) entries before, $(grep -c . /tmp/h-after) after, $(grep -c '^./new-' /tmp/h-after) of them new" \
        cmp -s /tmp/h-old /tmp/h-after
    h_attack "the file on the user's mount is intact" grep -qx mine $p/mnt/on-the-mount
    h_clear_persistent_mount

    # Negative control: a naive restore, rm -rf then copy, stopped by its first error.
    h_persistent_old
    rm -rf $vp/* && cp -a /tmp/h-new-tree/. $vp/
    ks_manifest $vp > /tmp/h-after
    h_control "after a naive rm -rf + cp restore: $(grep -c . /tmp/h-after) entries left of $(wc -l < /tmp/h-old)" \
        cmp -s /tmp/h-old /tmp/h-after
    h_clear_persistent_mount
    h_class_end
}

# Persistent holds the user's "old" files and a folder with the user's mount on it.
h_persistent_old() {
    h_clear_persistent_mount
    rm -rf $KS_ROOT_MNT/Persistent/*
    h_as_user sh -c 'cd ~/Persistent && for i in $(seq -w 1 40); do echo "old $i" > old-$i; done && mkdir mnt' \
        || h_fail "[4] setup: the user could not write in Persistent"
    # Stand-in for the user's FUSE mount (no FUSE in the guest): root mounts a tmpfs there.
    mount -t tmpfs -o mode=0777 hostile-fuse /home/amnesia/Persistent/mnt
    h_as_user sh -c 'echo mine > ~/Persistent/mnt/on-the-mount'
}
h_clear_persistent_mount() {
    while h_is_mount /home/amnesia/Persistent/mnt; do umount /home/amnesia/Persistent/mnt || break; done
}

# --- 2. Root chmod of any file through a mkdir race.

# h_same FILE OWNER_MODE REFERENCE: FILE is a regular file with that owner and mode and
# the reference's bytes. (Few forks: it runs twice a round.)
h_same() { [ -f "$1" ] && [ ! -L "$1" ] && [ "$(stat -c '%u:%g %a' "$1")" = "$2" ] && cmp -s "$1" "$3"; }

# The victim is made once and put back only after a round changed it.
h_victim_reset() {
    h_victim_intact && return
    head -c 64 /dev/urandom > /tmp/h-victim.ref
    cp /tmp/h-victim.ref $H_VICTIM && chown 0:0 $H_VICTIM && chmod 0600 $H_VICTIM
}
h_victim_intact() { h_same $H_VICTIM "0:0 600" /tmp/h-victim.ref; }
h_victim_now() { h_file_id $H_VICTIM | cut -d' ' -f1-2; }

# h_mkdir_rounds FEATURE DEST: `feature enable FEATURE` makes DEST while the user swaps
# every new folder of the home for a symlink to the victim.
h_mkdir_rounds() {
    local feature=$1 dest=$2 rounds=$3 r swaps=0 won=0 rcs= t0 ms=0
    # A small H_ROUNDS scaled down must still run one round (the tally divides by it).
    [ "$rounds" -ge 1 ] || rounds=1
    h_now; t0=$H_NOW
    for r in $(seq 1 $rounds); do
        h_victim_reset
        h_clear "$dest" /home/amnesia/.hostile-aside-
        h_watch new-dir /home/amnesia '*' $H_VICTIM
        h_run 60 keepsake feature enable $feature
        ms=$((ms + H_MS))
        h_watch_end && swaps=$((swaps + 1))
        rcs="$rcs $H_RC"
        if ! h_victim_intact; then
            won=$((won + 1))
            h_round_fail $won "[2] ATTACK WON: enable $feature, round $r: root changed $H_VICTIM to $(h_victim_now) (was 0:0 600); keepsake exit $H_RC"
        fi
        h_not_internal || h_fail "[2] enable $feature, round $r: exit $H_RC (internal error or signal): $(h_said)"
        [ "$H_RC" -eq 0 ] && h_setup "disable $feature" keepsake feature disable $feature
        h_now; [ $((H_NOW - t0)) -gt 40000 ] && { ks_log "[2] $feature: time bound reached after $r rounds"; break; }
    done
    h_clear "$dest" /home/amnesia/.hostile-aside-
    H_AT=$((H_AT + 1))
    if [ $won -eq 0 ]; then
        h_ok "[2] enable $feature: $H_VICTIM unchanged over $r rounds (the user swapped a new folder in $swaps; $(h_tally "$rcs"); keepsake took $((ms / r)) ms a round)"
    else
        H_AW=$((H_AW + 1))
        h_fail "[2] ATTACK WON: enable $feature: root chmod-ed $H_VICTIM in $won of $r rounds (the user swapped a new folder in $swaps; $(h_tally "$rcs"); keepsake took $((ms / r)) ms a round)"
    fi
}

h_class2() {
    h_class_begin 2 "root chmod of a root file through a mkdir race (new folder swapped for a symlink)"
    h_victim_reset
    h_run 60 keepsake feature disable gnupg dotfiles
    h_mkdir_rounds gnupg /home/amnesia/.gnupg $H_ROUNDS
    # A dotfiles sub-folder gets the mode of its folder in the volume, which the user
    # chooses: 0777. (Root sets up the volume's dotfiles as the user would through the
    # Tails ACL; the folder is the user's.)
    rm -rf $H_DOT && mkdir -p $H_DOT/.hostile-cfg && echo "k=v" > $H_DOT/.hostile-cfg/rc
    chown -R 1000:1000 $H_DOT && chmod 0700 $H_DOT && chmod 0777 $H_DOT/.hostile-cfg
    h_mkdir_rounds dotfiles /home/amnesia/.hostile-cfg $((H_ROUNDS * 2 / 5))

    local r won=0 became=
    for r in $(seq 1 $H_CONTROL_ROUNDS); do
        h_victim_reset
        h_clear /home/amnesia/.gnupg /home/amnesia/.hostile-aside-
        h_watch new-dir /home/amnesia '*' $H_VICTIM
        /hostile/naive-mkdir-chmod /home/amnesia/.gnupg 1000 1000 700 >/dev/null 2>&1
        h_watch_end
        h_victim_intact || { won=$((won + 1)); became=$(h_victim_now); }
    done
    h_clear /home/amnesia/.gnupg /home/amnesia/.hostile-aside-
    h_control_rounds $r $won "mkdir, lchown, chmod by name; the victim became ${became:-nothing else}"
    h_victim_reset
    h_class_end
}

# --- 3. Root unlinks a file in a folder the user chooses (dotfiles rollback).

h_conf_reset() {
    h_conf_intact && return
    echo "root's own configuration $(ks_random)" > /tmp/h-conf.ref
    cp /tmp/h-conf.ref $H_CONF && chown 0:0 $H_CONF && chmod 0644 $H_CONF
}
h_conf_intact() { h_same $H_CONF "0:0 644" /tmp/h-conf.ref; }
h_conf_now() { [ -e $H_CONF ] && h_file_id $H_CONF || echo "deleted"; }

# The home's hostile-sub: the user's folder, with a folder where the volume has a file.
h_sub_reset() {
    h_clear /home/amnesia/hostile-sub /home/amnesia/hostile-sub.hostile-aside
    h_as_user mkdir -p /home/amnesia/hostile-sub/zz-blocker
}

h_class3() {
    h_class_begin 3 "root unlink through a parent folder swapped during the dotfiles rollback"
    h_run 60 keepsake feature disable dotfiles
    h_clear /home/amnesia/.hostile-cfg
    # The volume's dotfiles: hostile-sub/hostile-victim.conf is linked first, then
    # hostile-sub/zz-blocker fails (a folder stands there), and the rollback removes the link.
    rm -rf $H_DOT && mkdir -p $H_DOT/hostile-sub
    echo "the user's" > $H_DOT/hostile-sub/hostile-victim.conf
    echo "the user's" > $H_DOT/hostile-sub/zz-blocker
    chown -R 1000:1000 $H_DOT && chmod 0700 $H_DOT
    local r won=0 swaps=0 rcs= t0 ms=0
    h_now; t0=$H_NOW
    for r in $(seq 1 $H_ROUNDS); do
        h_conf_reset
        h_sub_reset
        h_watch parent /home/amnesia/hostile-sub hostile-victim.conf /etc
        h_run 60 keepsake feature enable dotfiles
        ms=$((ms + H_MS))
        h_watch_end && swaps=$((swaps + 1))
        rcs="$rcs $H_RC"
        if ! h_conf_intact; then
            won=$((won + 1))
            h_round_fail $won "[3] ATTACK WON: enable dotfiles, round $r: $H_CONF is now: $(h_conf_now); keepsake exit $H_RC"
        fi
        h_not_internal || h_fail "[3] enable dotfiles, round $r: exit $H_RC (internal error or signal): $(h_said)"
        [ "$H_RC" -eq 0 ] && h_setup "disable dotfiles" keepsake feature disable dotfiles
        h_now; [ $((H_NOW - t0)) -gt 40000 ] && { ks_log "[3] time bound reached after $r rounds"; break; }
    done
    H_AT=$((H_AT + 1))
    if [ $won -eq 0 ]; then
        h_ok "[3] $H_CONF kept over $r rounds of a failing enable dotfiles (the user swapped the parent in $swaps; $(h_tally "$rcs"); keepsake took $((ms / r)) ms a round)"
    else
        H_AW=$((H_AW + 1))
        h_fail "[3] ATTACK WON: the dotfiles rollback deleted $H_CONF in $won of $r rounds (the user swapped the parent in $swaps; $(h_tally "$rcs"); keepsake took $((ms / r)) ms a round)"
    fi

    won=0
    for r in $(seq 1 $H_CONTROL_ROUNDS); do
        h_conf_reset
        h_sub_reset
        h_watch parent /home/amnesia/hostile-sub hostile-victim.conf /etc
        /hostile/naive-link-rollback /home/amnesia/hostile-sub hostile-victim.conf $H_DOT/hostile-sub/hostile-victim.conf >/dev/null 2>&1
        h_watch_end
        h_conf_intact || won=$((won + 1))
    done
    h_control_rounds $r $won "symlink, then unlink by path: $H_CONF deleted"
    h_conf_reset
    h_clear /home/amnesia/hostile-sub /home/amnesia/hostile-sub.hostile-aside
    rm -rf $H_DOT/hostile-sub
    h_class_end
}

# --- 7. A deep tree blocks lock.

h_lock_bounded() { h_run 180 sh -c 'ulimit -n 1024 && exec keepsake lock'; }
h_locked_clean() { [ "$H_RC" -eq 0 ] && ks_no_mapping && ks_not_mounted "$KS_ROOT_MNT"; }
h_lock_state() { h_unlocked && echo "the volume stays unlocked" || echo "locked"; }

# h_deep_lock WHERE: lock with a 1100-deep folder at WHERE (made by the user); when lock
# worked, unlock and count the folder again.
h_deep_lock() {
    local where=$1 depth
    h_as_user sh -c "mkdir -p $where && /hostile/deep-tree make $where 1100 >/dev/null" \
        || h_fail "[7] setup: the user could not make the deep folder in $where"
    h_lock_bounded
    h_attack "lock with a folder 1100 deep in $where: exit $H_RC, $(h_lock_state): ...$(tail -c 100 /tmp/h-cmd.out | tr '\n' ' ')" h_locked_clean
    if h_unlocked; then
        /hostile/deep-tree remove $where >/dev/null
        h_setup "lock once the deep folder is gone" keepsake lock
        h_setup "unlock" keepsake unlock --key-file "$KS_PASS_FILE"
        return
    fi
    h_setup "unlock" keepsake unlock --key-file "$KS_PASS_FILE"
    depth=$(/hostile/deep-tree depth $where 2>/dev/null)
    h_check "[7] the folder in $where is whole after lock and unlock (depth ${depth:-none})" test "${depth:-0}" -eq 1100
}

h_class7() {
    h_class_begin 7 "a folder 1100 levels deep blocks lock (EMFILE)"
    rm -rf $H_DOT && mkdir -p $H_DOT && echo "set -o vi" > $H_DOT/.hostile-rc
    chown -R 1000:1000 $H_DOT && chmod 0700 $H_DOT
    h_setup "enable dotfiles" keepsake feature enable dotfiles
    h_deep_lock /home/amnesia/deep
    /hostile/deep-tree remove /home/amnesia/deep >/dev/null; rmdir /home/amnesia/deep
    h_deep_lock /home/amnesia/Persistent/deep
    /hostile/deep-tree remove /home/amnesia/Persistent/deep >/dev/null; rmdir /home/amnesia/Persistent/deep
    # Negative control: a walk that holds a descriptor per level, under the same limit.
    mkdir -p /tmp/h-deep && /hostile/deep-tree make /tmp/h-deep 1100 >/dev/null
    (ulimit -n 1024 && /hostile/naive-walk /tmp/h-deep) > /tmp/h-walk.out 2>&1
    H_RC=$?
    h_control "$(cat /tmp/h-walk.out) (exit $H_RC)" h_rc_is 0
    /hostile/deep-tree remove /tmp/h-deep >/dev/null; rmdir /tmp/h-deep
    h_run 60 keepsake feature disable dotfiles
    h_class_end
}

# --- 9. The live user hides the volume in namespaces of its own.

H_NS_READY=/tmp/h-ns-ready

# h_ns_hold VARIANT: the user's ns-holder (chroot, pivot, pidns, cover) in the background, in
# place; H_NS_PID is the host pid of the process that holds its namespace.
h_ns_hold() {
    local i
    rm -rf /home/amnesia/h-jail-$1 $H_NS_READY
    h_as_user mkdir /home/amnesia/h-jail-$1
    $H_AS_USER /hostile/ns-holder $1 $H_NS_READY /home/amnesia/h-jail-$1 /home/amnesia/Persistent \
        </dev/null >/tmp/h-ns.out 2>&1 &
    H_NS_PID=
    for i in $(seq 1 100); do
        read -r H_NS_PID < $H_NS_READY 2>/dev/null && [ -n "$H_NS_PID" ] && return 0
        sleep 0.05
    done
    h_fail "[9] setup: ns-holder $1 did not get in place: $(cat /tmp/h-ns.out)"
}
# The volume's device (major:minor) and mapping name.
h_vol_dev() { cat /sys/block/$(ls /sys/block | grep '^dm-' | head -n 1)/dev; }
h_vol_mapping() { cat /sys/block/$(ls /sys/block | grep '^dm-' | head -n 1)/dm/name; }
# The old look: the process's own mountinfo, relative to its root.
h_old_look_sees() { awk -v d="$2" '$3 == d {f = 1} END {exit !f}' /proc/$1/mountinfo 2>/dev/null; }
# Gone, or a zombie no one reaped yet (it holds nothing).
h_gone() { [ ! -e /proc/$1/stat ] || [ "$(sed 's/.*) //' /proc/$1/stat 2>/dev/null | cut -c1)" = Z ]; }
h_still_unlocked() { h_unlocked && h_is_mount "$KS_ROOT_MNT" && h_is_mount /home/amnesia/Persistent; }
h_forced_clean() { [ "$H_RC" -eq 0 ] && ks_no_mapping && ks_not_mounted "$KS_ROOT_MNT" && h_gone "$1"; }

# The naive lock: unmount the volume here, then close the mapping.
h_naive_lock() {
    local m
    for m in $(awk -v d="$1" '$3 == d {print $5}' /proc/self/mountinfo | sort -r); do umount "$m"; done
    cryptsetup close "$2" > /tmp/h-close.out 2>&1
}

h_class9() {
    h_class_begin 9 "the live user hides the volume in namespaces of its own"
    local v dev pid name i
    for v in chroot pivot pidns cover; do
        h_unlocked || h_setup "unlock" keepsake unlock --key-file "$KS_PASS_FILE"
        h_ns_hold $v
        pid=$H_NS_PID
        dev=$(h_vol_dev)
        if [ $v = pivot ]; then
            h_check "[9] $v: its own mountinfo shows the bind it keeps" h_old_look_sees $pid $dev
        else
            # The old look (/proc/PID/mountinfo) misses it: this is what hid the volume.
            h_control "$v: the old look, /proc/$pid/mountinfo, finds the volume in the user's namespace" \
                h_old_look_sees $pid $dev
        fi
        h_run 120 keepsake lock
        h_expect_rc 5 "$v: lock refuses while the user's namespace has the volume mounted"
        # cover: no look from inside sees the volume under its root; the mapping that will
        # not close makes lock name the user's namespaces as suspects, after putting back.
        h_check "[9] $v: the refusal names pid $pid: $(h_said)" \
            grep -q "(pid $pid: \(mounted \)\?in its own mount namespace" /tmp/h-cmd.out
        h_attack "$v: after lock, the volume is still unlocked, mounted and bound" h_still_unlocked
        h_run 120 keepsake lock --force
        echo "KS-TIME class9_force_$v $H_MS"
        h_attack "$v: lock --force exits 0 in $H_MS ms, no mapping, no mount, the user's process gone: exit $H_RC, $(h_lock_state), pid $pid $(h_gone $pid && echo gone || echo alive): ...$(tail -c 200 /tmp/h-cmd.out | tr '\n' ' ')" \
            h_forced_clean $pid
        kill -9 $pid 2>/dev/null
    done

    # Negative control: the namespace really holds the volume. A naive lock (unmount
    # here, close the mapping) cannot close it.
    h_setup "unlock" keepsake unlock --key-file "$KS_PASS_FILE"
    h_ns_hold chroot
    pid=$H_NS_PID; dev=$(h_vol_dev); name=$(h_vol_mapping)
    h_naive_lock $dev $name
    h_control "a naive lock with the user's chrooted namespace: $(h_lock_state), $(h_gone $pid || echo "the user's process runs, ")cryptsetup close said: $(head -c 120 /tmp/h-close.out | tr '\n' ' ')" \
        ks_no_mapping
    kill -9 $pid 2>/dev/null
    for i in $(seq 1 40); do h_gone $pid && break; sleep 0.05; done
    for i in $(seq 1 20); do ks_no_mapping || cryptsetup close $name 2>/dev/null; ks_no_mapping && break; sleep 0.1; done
    h_check "[9] the naive lock's mapping closes once the user's process is gone" ks_no_mapping
    rm -rf /home/amnesia/h-jail-*
    h_setup "unlock" keepsake unlock --key-file "$KS_PASS_FILE"
    h_class_end
}

# --- 11. A volume the live user could have written carries system features (issue 24).
# The same crafted container (root's files inside, persistence.conf binding a root folder
# of it over /usr/local/sbin) is unlocked from a place only root can write (the control:
# its system feature is bound, so the payload works) and from places the live user can
# replace the bytes of: a file of theirs, root's file in a folder of theirs, and root's
# file on a filesystem mounted where udisks mounts a user's stick. Root crafts it (the
# stand-in for the user's own machine, where they are root); the user knows the
# passphrase, as they type it in their session.
h_class11() {
    h_class_begin 11 "a container the live user could have written binds over system paths"
    local img=/root/h-vault.img sbin=/usr/local/sbin place p
    mkdir -p $sbin; mkdir -p -m 700 /root
    h_setup "create a container" keepsake create --image $img --size 40M --yes --key-file "$KS_PASS_FILE" $KS_KDF
    h_setup "unlock it to craft it" keepsake unlock --image $img --key-file "$KS_PASS_FILE"
    mkdir -m 755 $KS_ROOT_MNT/h-sbin
    printf '#!/bin/sh\nid > /tmp/h-pwned\n' > $KS_ROOT_MNT/h-sbin/ls
    chmod 755 $KS_ROOT_MNT/h-sbin/ls
    printf '/usr/local/sbin\tsource=h-sbin\n' >> $KS_ROOT_MNT/persistence.conf
    h_setup "lock the crafted container" keepsake lock
    h_run 120 keepsake unlock --image $img --key-file "$KS_PASS_FILE"
    h_control "only root can write $img: unlock exits $H_RC and its system feature is bound over $sbin" h_sbin_held_off
    h_run 60 keepsake --json status
    h_check "[11] status does not call a volume only root can write the live user's" sh -c "! grep -q not_only_root /tmp/h-cmd.out"
    h_lock
    mkdir -p /home/amnesia/h-stick /media/amnesia/STICK
    chown 1000:1000 /home/amnesia/h-stick
    mount -t tmpfs -o size=64m,mode=0755 stick /media/amnesia/STICK
    for place in file-of-theirs folder-of-theirs udisks-stick; do
        case $place in
            file-of-theirs) p=/root/h-theirs.img; cp $img $p; chown 1000:1000 $p ;;
            folder-of-theirs) p=/home/amnesia/h-stick/vault.img; cp $img $p ;;
            udisks-stick) p=/media/amnesia/STICK/vault.img; cp $img $p ;;
        esac
        h_run 120 keepsake unlock --image $p --key-file "$KS_PASS_FILE"
        h_attack "[$place] unlock exits 9 (got $H_RC), says why, and binds nothing over $sbin" h_sbin_held_off
        h_check "[11] [$place] the Persistent folder in the home is still active" h_is_mount $KS_PERSISTENT
        h_run 60 keepsake --json status
        h_check "[11] [$place] status says it is the live user's volume, and why" grep -q '"not_only_root": "' /tmp/h-cmd.out
        h_run 60 keepsake feature enable tor-state
        h_attack "[$place] feature enable tor-state is refused with exit 8 (got $H_RC) and nothing is bound" \
            sh -c "[ $H_RC -eq 8 ] && ! grep -q ' /var/lib/tor ' /proc/self/mountinfo"
        h_run 60 keepsake feature add h-opt --dest /opt/h-opt
        h_attack "[$place] feature add of a system path is refused with exit 8 (got $H_RC), and not defined" \
            sh -c "[ $H_RC -eq 8 ] && ! grep -q h-opt $KS_ROOT_MNT/keepsake-features.conf 2>/dev/null && ! grep -q ' /opt/h-opt ' /proc/self/mountinfo"
        h_run 60 keepsake feature add h-docs --dest /home/amnesia/h-docs
        h_check "[11] [$place] feature add into the home works (exit $H_RC)" h_rc_is 0
        h_lock
        h_check "[11] [$place] lock leaves no mapping" ks_no_mapping
        rm -f $p
    done
    umount /media/amnesia/STICK
    rm -f $img
    h_class_end
}
h_sbin_held_off() {
    [ "$H_RC" -eq 9 ] && grep -q "someone other than root could have written" /tmp/h-cmd.out \
        && ! h_is_mount /usr/local/sbin
}

# --- 12. A volume whose data segment does not encrypt (LUKS2 cipher_null, keyslot
# encrypted): unlock must refuse it (exit 7) and check must name it. Control: cryptsetup
# itself opens it, and a canary written through it lands on the image in clear.
h_class12() {
    h_class_begin 12 "a LUKS2 volume whose data segment is cipher_null"
    local img=/root/h-null.img canary
    canary="h-null-canary-$(ks_random)"
    truncate -s 24M $img
    h_setup "cryptsetup makes a cipher_null volume" cryptsetup luksFormat -q --type luks2 \
        --cipher cipher_null-ecb --keyslot-cipher aes-xts-plain64 --keyslot-key-size 512 \
        --pbkdf pbkdf2 --pbkdf-force-iterations 1000 $img "$KS_PASS_FILE"
    h_setup "cryptsetup opens it" cryptsetup open --key-file "$KS_PASS_FILE" $img h-null
    h_setup "an ext4 inside" mkfs.ext4 -q -L TailsData /dev/mapper/h-null
    mkdir -p /tmp/h-null && mount /dev/mapper/h-null /tmp/h-null
    echo "$canary" > /tmp/h-null/canary
    umount /tmp/h-null
    cryptsetup close h-null
    h_control "a canary written through cryptsetup's mapping is on the image in clear" \
        sh -c "! grep -q '$canary' $img"
    h_run 120 keepsake unlock --image $img --key-file "$KS_PASS_FILE"
    h_attack "unlock refuses it with exit 7 (got $H_RC), naming cipher_null, and opens nothing" \
        sh -c "[ $H_RC -eq 7 ] && grep -q cipher_null /tmp/h-cmd.out && [ -z \"\$(ls /sys/block | grep '^dm-')\" ]"
    h_run 120 keepsake check --image $img --key-file "$KS_PASS_FILE"
    h_attack "check names it (exit $H_RC, not 0)" sh -c "[ $H_RC -ne 0 ] && grep -q cipher_null /tmp/h-cmd.out"
    rm -f $img
    h_class_end
}

# --- 13. Tails' config ids (115:122) held by another account here: a persistence.conf
# owned by them is that account's file, and unlock does not activate its lines (exit 9).
# Control: the same volume with the ids free unlocks with exit 0.
h_class13() {
    h_class_begin 13 "persistence.conf owned by Tails' ids where another account holds them"
    local conf=$KS_ROOT_MNT/persistence.conf owner
    cp /etc/passwd /tmp/h-passwd
    # The stick as Tails leaves it: persistence.conf its tails-persistent-storage's, 0600.
    h_setup "unlock" keepsake unlock --key-file "$KS_PASS_FILE"
    owner=$(stat -c %u:%g $conf)
    chown 115:122 $conf
    h_lock
    h_run 120 keepsake unlock --key-file "$KS_PASS_FILE"
    h_control "with 115:122 nobody's, unlock exits $H_RC and the Persistent folder is bound" \
        sh -c "[ $H_RC -ne 0 ] || ! grep -q ' $KS_PERSISTENT ' /proc/self/mountinfo"
    h_lock
    echo "h-daemon:x:115:122::/nonexistent:/bin/false" >> /etc/passwd
    h_run 120 keepsake unlock --key-file "$KS_PASS_FILE"
    h_attack "with uid 115 a daemon's, unlock exits 9 (got $H_RC), says so, and binds nothing" \
        sh -c "[ $H_RC -eq 9 ] && grep -q 'belong to another account' /tmp/h-cmd.out && ! grep -q ' $KS_PERSISTENT ' /proc/self/mountinfo"
    h_lock
    cp /tmp/h-passwd /etc/passwd
    h_setup "unlock" keepsake unlock --key-file "$KS_PASS_FILE"
    chown $owner $conf
    h_lock
    h_class_end
}

# ---------------------------------------------------------------- guest: phase "tor"

H_MARKER=/run/hostile-tor-ran-as-root

# A real tor (Debian's /usr/bin/tor) of this namespace, if one runs.
h_real_tor_pid() {
    local p
    for p in $(pidof tor); do
        [ "$(readlink /proc/$p/exe)" = /usr/bin/tor ] && { echo $p; return; }
    done
}
# Starts a real tor unless one runs, and waits until it holds its DataDirectory's lock.
h_real_tor() {
    local i p
    [ -n "$(h_real_tor_pid)" ] || (cd / && setsid tor -f /etc/tor/torrc >/dev/null 2>&1 &)
    for i in $(seq 1 300); do
        p=$(h_real_tor_pid)
        [ -n "$p" ] && ls -l /proc/$p/fd 2>/dev/null | grep -q '/var/lib/tor/lock$' && return 0
        sleep 0.1
    done
    h_fail "[1] setup: the real tor did not start"
    return 1
}

# The user's baits start early, so that their pids are lower than any real tor's; each
# waits for its go file before it moves into a namespace of its own on /var/lib/tor.
h_spawn_bait() {
    $H_AS_USER env HOSTILE_GO=/tmp/h-go-$1 HOSTILE_READY=/tmp/h-bait-ready-$1 \
        /home/amnesia/bin/tor -f /etc/tor/torrc </dev/null >/tmp/h-bait-$1.out 2>&1 &
    echo $! > /tmp/h-bait-$1.pid
}
h_arm_bait() {
    local pid i real
    pid=$(cat /tmp/h-bait-$1.pid)
    touch /tmp/h-go-$1
    for i in $(seq 1 100); do [ -e /tmp/h-bait-ready-$1 ] && break; sleep 0.05; done
    real=$(h_real_tor_pid)
    h_check "[1] the user's fake tor $1 (pid $pid, uid $(awk '/^Uid:/ {print $2}' /proc/$pid/status 2>/dev/null)) reads to root as tor in $(readlink /proc/$pid/cwd 2>/dev/null), below the real tor's pid ${real:-(none runs)} $(cat /tmp/h-bait-$1.out)" \
        h_looks_like_tor $pid "$real"
}
# h_looks_like_tor PID [REAL_TOR_PID]: named tor, working in /var/lib/tor, the lowest pid.
h_looks_like_tor() {
    [ "$(readlink /proc/$1/cwd)" = /var/lib/tor ] && [ "$(basename "$(readlink /proc/$1/exe)")" = tor ] \
        && [ "$1" -lt "${2:-999999}" ]
}
# KS-TIME of one step of class 1 (since the previous one).
h_time1() { h_now; echo "KS-TIME class1_$1 $((H_NOW - H_T0))"; H_T0=$H_NOW; }
h_disarm_bait() { kill "$(cat /tmp/h-bait-$1.pid)" 2>/dev/null; }
h_no_marker() { [ ! -e $H_MARKER ]; }
h_marker() { [ -e $H_MARKER ] && head -n 1 $H_MARKER || echo "no marker"; }

# h_tor_trigger WHAT: after a keepsake command, did root run the user's program?
h_tor_trigger() {
    h_attack "$1 with the user's fake tor armed: $(h_marker); keepsake exit $H_RC" h_no_marker
    h_expect_rc 0 "$1 exits 0"
    rm -f $H_MARKER
}

# The naive restart: the process named tor with its folder in /var/lib/tor is stopped and
# its command line run again as root, in that folder.
h_naive_tor_restart() {
    local p argv
    for p in $(ls /proc | grep -E '^[0-9]+$' | sort -n); do
        [ "$(basename "$(readlink /proc/$p/exe)")" = tor ] || continue
        [ "$(readlink /proc/$p/cwd)" = /var/lib/tor ] || continue
        argv=$(tr '\0' ' ' < /proc/$p/cmdline)
        kill $p
        (cd /var/lib/tor && exec $argv) >/dev/null 2>&1
        return
    done
}

h_tor() {
    [ -x /hostile/fake-tor ] || { h_fail "the attack programs are not in the guest (gcc missing on the host?)"; return 1; }
    H_CLASS=1
    grep -q ' /run/live/medium ' /proc/self/mountinfo || ks_live_session
    ks_pass_file
    ks_tor_setup
    h_class_begin 1 "root runs the user's fake tor (the tor restart)"
    mkdir -p /home/amnesia/bin && cp /hostile/fake-tor /home/amnesia/bin/tor
    chown -R 1000:1000 /home/amnesia/bin
    local n p
    h_now; H_T0=$H_NOW; H_TSTART=$H_NOW
    for n in 1 2 3 4; do h_spawn_bait $n; done
    h_real_tor; h_time1 tor_started
    h_unlock
    if [ "$H_RC" -eq 4 ]; then  # a blank stick (H_PHASES=tor)
        h_setup "create" keepsake create --device /dev/vda --yes --key-file "$KS_PASS_FILE" $KS_KDF
        h_unlock
    fi
    [ "$H_RC" -eq 0 ] || h_fail "[1] setup: unlock (tor-state not enabled yet): exit $H_RC: $(h_said)"
    h_time1 unlocked

    h_arm_bait 1
    h_run 180 keepsake feature enable tor-state
    h_tor_trigger "feature enable tor-state, a real tor running"
    h_disarm_bait 1; h_time1 enable_trigger

    # lock stops tor only when tor-state is bound.
    h_real_tor; h_time1 tor_started
    h_setup "enable tor-state (no bait armed)" keepsake feature enable tor-state; h_time1 enabled
    # Bait 2 moves into its namespace after the unlock: its copy of the mount table still
    # has the volume mounted, which unmounting here cannot take away. lock must see that
    # before it changes anything, leave the volume whole, and end the bait only with --force.
    h_arm_bait 2
    h_run 180 keepsake lock
    h_attack "lock with tor-state bound and the user's fake tor armed: $(h_marker); keepsake exit $H_RC" h_no_marker
    h_expect_rc 5 "lock refuses while the user's own mount namespace still has the volume mounted"
    h_check "[1] the refusal names that process and its namespace: $(h_said)" grep -q "mount namespace of tor (pid $(cat /tmp/h-bait-2.pid)" /tmp/h-cmd.out
    h_check "[1] and the volume is left whole: tor-state still bound on /var/lib/tor" grep -q ' /var/lib/tor .* - ext4 ' /proc/self/mountinfo
    rm -f $H_MARKER
    h_run 180 keepsake lock --force
    h_tor_trigger "lock --force with tor-state bound"
    h_check "[1] lock --force ended the user's namespace holder" sh -c "! kill -0 $(cat /tmp/h-bait-2.pid) 2>/dev/null"
    h_disarm_bait 2; h_time1 lock_trigger

    h_real_tor; h_time1 tor_started
    h_arm_bait 3
    h_unlock
    h_tor_trigger "unlock with tor-state enabled"
    h_disarm_bait 3; h_time1 unlock_trigger

    h_arm_bait 4
    h_naive_tor_restart
    h_control "a naive restart of 'the tor in /var/lib/tor': $(h_marker)" h_no_marker
    rm -f $H_MARKER
    h_disarm_bait 4
    h_lock
    p=$(h_real_tor_pid); [ -n "$p" ] && kill $p
    h_time1 control_and_lock
    h_now; echo "KS-TIME class1 $((H_NOW - H_TSTART))"
    h_class_end
}
