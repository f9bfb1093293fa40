# Host-side helpers for scenarios: disks, phases (one VM boot each), values passed between
# phases, and scans of disk images. Sourced by loopdev-tests/run.

# ks_disk NAME SIZE: a sparse disk image in the scenario's folder; prints its path.
ks_disk() {
    local path="$KS_SCEN_DIR/$1.img"
    [ -e "$path" ] || truncate -s "$2" "$path"
    echo "$path"
}

# ks_set KEY VALUE: a value the guest reads with ks_in KEY in later phases.
ks_set() { echo "$1=$2" >> "$KS_SCEN_DIR/in"; }

# ks_get KEY: the last value a guest reported with ks_out KEY VALUE.
ks_get() { sed -n "s/^$1=//p" "$KS_SCEN_DIR/out" 2>/dev/null | tail -n 1; }

# ks_get_in KEY: the last value set with ks_set KEY.
ks_get_in() { sed -n "s/^$1=//p" "$KS_SCEN_DIR/in" 2>/dev/null | tail -n 1; }

ks_host_ok() { echo "    ok    $*"; }
ks_host_fail() { echo "    FAIL  $*"; KS_SCEN_FAILED=1; }

# ks_phase NAME [SERIAL=FILE...]: boots the guest once to run guest_NAME. The disks
# "usb" and "hostdisk" of the scenario are attached unless given otherwise; the values set
# with ks_set travel on a "share" disk. KS_BOOT_ARGS adds to the kernel command line
# (ks.nomod=dm-crypt: see lib/init). Prints the guest's checks; returns its status.
ks_phase() {
    local phase=$1; shift
    local disks=("$@") log="$KS_SCEN_DIR/$phase.log" rc t0 t1
    if [ ${#disks[@]} -eq 0 ]; then
        disks=("usb=$(ks_disk usb 256M)" "hostdisk=$(ks_disk hostdisk 64M)")
    fi
    touch "$KS_SCEN_DIR/in"
    local share="$KS_SCEN_DIR/share.tar"
    tar -C "$KS_SCEN_DIR" -cf "$share" in
    truncate -s 1M "$share"
    t0=$(date +%s%N)
    ks_boot "$log" "ks.scenario=$KS_SCENARIO ks.phase=$phase ks.verbose=${KS_VERBOSE:-0} ${KS_BOOT_ARGS:-}" "${disks[@]}" "share=$share"
    rc=$?
    t1=$(date +%s%N)
    tr -d '\r' < "$log" | sed -n 's/^KS-OUT //p' >> "$KS_SCEN_DIR/out"
    [ "${KS_VERBOSE:-0}" = 1 ] && echo "  -- boot $phase: $(( (t1 - t0) / 1000000 )) ms in the VM"
    tr -d '\r' < "$log" | sed -n 's/^KS-OK /    ok    /p; s/^KS-FAIL /    FAIL  /p; s/^KS-LOG /    ..    /p; s/^    | /    |     /p; s/^KS-STEP /  # /p; s/^KS-SAY /    /p'
    tr -d '\r' < "$log" | sed -n 's/^KS-TIME \([^ ]*\) \([0-9]*\)/\1 \2/p' | while read -r name ms; do
        echo "$KS_SCENARIO $phase $name $ms" >> "$KS_WORK/timings"
        echo "    time  $name: ${ms} ms"
    done
    echo "$KS_SCENARIO $phase vm-total $(( (t1 - t0) / 1000000 ))" >> "$KS_WORK/timings"
    case $rc in
        0) ;;
        124) ks_host_fail "phase $phase: the guest timed out (log: $log)" ;;
        125) ks_host_fail "phase $phase: the guest reported no result (log: $log)"; tail -n 20 "$log" | sed 's/^/    |     /' ;;
        *) ks_host_fail "phase $phase: guest checks failed (log: $log)" ;;
    esac
    return $rc
}

# ks_count FILE STRING: how many times STRING occurs in FILE's raw bytes.
ks_count() {
    LC_ALL=C grep -a -o -F -e "$2" "$1" 2>/dev/null | wc -l
}

# ks_expect_count WHAT FILE STRING N: the raw image holds STRING exactly N times.
ks_expect_count() {
    local n
    n=$(ks_count "$2" "$3")
    if [ "$n" -eq "$4" ]; then
        ks_host_ok "$1: $n hit(s) in $(basename "$2")"
    else
        ks_host_fail "$1: $n hit(s) in $(basename "$2"), expected $4"
    fi
}

ks_random() { head -c 18 /dev/urandom | base64 | tr '+/' 'xy'; }

# ks_scan FILE NEEDLE: occurrences of NEEDLE (hex:... or text:...) in FILE's raw bytes.
ks_scan() { python3 "$KS_TESTS_DIR/lib/scan.py" "$1" "$2"; }

# ks_expect_hits WHAT FILE NEEDLE OP N: e.g. ks_expect_hits "passphrase" usb.img text:x -eq 0
ks_expect_hits() {
    local n
    n=$(ks_scan "$2" "$3")
    if [ "$n" "$4" "$5" ]; then
        ks_host_ok "$1: $n hit(s) in $(basename "$2")"
    else
        ks_host_fail "$1: $n hit(s) in $(basename "$2"), expected $4 $5"
    fi
    echo "$KS_SCENARIO $1 $(basename "$2") $n" >> "$KS_WORK/hits"
}

# ks_live_stick NAME SIZE: a disk image laid out as a live USB stick: GPT, a 64 MiB "Tails"
# system partition (EFI type), the rest free. Prints its path.
ks_live_stick() {
    local path
    path=$(ks_disk "$1" "$2")
    printf 'label: gpt\nstart=2048, size=64MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="Tails"\n' \
        | sfdisk -q "$path" >/dev/null || { echo "sfdisk failed on $path" >&2; return 1; }
    echo "$path"
}

# ks_gpt_disk NAME SIZE: a disk image with GPT and one Linux partition filling it.
ks_gpt_disk() {
    local path
    path=$(ks_disk "$1" "$2")
    printf 'label: gpt\nstart=2048, type=L, name="data"\n' | sfdisk -q "$path" >/dev/null || return 1
    echo "$path"
}

# ks_swap_disk NAME SIZE: GPT, a 32 MiB data partition, then a swap partition.
ks_swap_disk() {
    local path
    path=$(ks_disk "$1" "$2")
    printf 'label: gpt\nstart=2048, size=32MiB, type=L, name="data"\ntype=S, name="swap"\n' \
        | sfdisk -q "$path" >/dev/null || return 1
    echo "$path"
}

# ks_volume_key IMAGE PARTITION: the volume key (hex) of the LUKS volume in partition
# number PARTITION of the disk image, read on the host from a copy of its header area with
# the cryptsetup CLI, so that the guest never holds it outside keepsake. The passphrase is
# the scenario's (ks_set passphrase).
ks_volume_key() {
    local start hdr="$KS_SCEN_DIR/header.$$" pass="$KS_SCEN_DIR/pass.$$"
    start=$(sfdisk -d "$1" | sed -n "s|^$1$2 : start= *\([0-9]*\),.*|\1|p")
    [ -n "$start" ] || { echo "no partition $2 on $1" >&2; return 1; }
    dd if="$1" of="$hdr" bs=512 skip="$start" count=32768 status=none || return 1
    sed -n 's/^passphrase=//p' "$KS_SCEN_DIR/in" | tail -n 1 | tr -d '\n' > "$pass"
    cryptsetup luksDump --dump-volume-key -q --key-file "$pass" "$hdr" 2>/dev/null \
        | sed -n '/MK dump:/,$p' | sed 's/MK dump://' | tr -d ' \t\n:'
    rm -f "$hdr" "$pass"
}

# ks_live_run NAME: a scenario on the Debian live system (loopdev-tests/live/NAME.py), which
# boots the image run built (KS_LIVE_IMAGE) and drives it through its serial console.
ks_live_run() {
    [ -n "${KS_LIVE_IMAGE:-}" ] || { ks_host_fail "no live image was built (see above)"; return 1; }
    python3 "$KS_TESTS_DIR/live/$1.py" "$KS_SCEN_DIR" "$KS_LIVE_IMAGE"
}

# tails_check_conf WHAT NAME FEATURES: Tails' acceptance rules, on the host with Tails' parser,
# on the config the guest handed back as NAME (text, stat, ACL).
tails_check_conf() {
    local file="$KS_SCEN_DIR/$2.conf" line
    if [ -z "$(ks_get "conf_$2")" ]; then
        ks_host_fail "$1: the guest handed back no persistence.conf"
        return
    fi
    ks_get "conf_$2" | base64 -d > "$file"
    echo "  Tails' rules, $1:"
    python3 "$KS_TESTS_DIR/lib/tails_rules.py" "$file" --stat "$(ks_get "stat_$2")" \
        --acl "$(ks_get "acl_$2")" ${3:+--features} ${3:+"$3"} > "$file.rules"
    local rc=$?
    while IFS= read -r line; do
        case "$line" in ok*) ks_host_ok "${line#ok    }" ;; *) ks_host_fail "${line#FAIL  }" ;; esac
    done < "$file.rules"
    [ $rc -eq 0 ] || ks_host_fail "$1: Tails would not accept this persistence.conf as it is"
}
