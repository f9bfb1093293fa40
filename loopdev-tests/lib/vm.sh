# Host-side helpers for the loop-device suite: build the guest initramfs and boot it.
# Sourced by loopdev-tests/run and loopdev-tests/demo; needs bash.
#
# The guest is Debian's cloud kernel under qemu TCG (KVM hangs on these machines), with a
# tmpfs root, as on an amnesic live system. Disks are virtio, backed by files on the host,
# and identified inside the guest by their serial number (see lib/init).

KS_TESTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KS_ROOT=$(cd "$KS_TESTS_DIR/.." && pwd)
KS_WORK=${KS_WORK:-$KS_ROOT/target/loopdev}
KS_VM_MEM=${KS_VM_MEM:-768}
KS_VM_TIMEOUT=${KS_VM_TIMEOUT:-300}

# Programs copied into the guest with their shared libraries. tor is optional here: the
# Tor-state scenarios check for it themselves.
KS_GUEST_PROGRAMS="/sbin/cryptsetup /sbin/mke2fs /sbin/e2fsck /usr/bin/tor /usr/bin/setpriv /sbin/sfdisk /usr/bin/partx /sbin/debugfs /sbin/dumpe2fs /usr/bin/date /usr/bin/strace /usr/bin/findmnt /usr/bin/setfacl /usr/bin/getfacl /usr/bin/setfattr /usr/bin/getfattr"
KS_GUEST_MODULES="loop dm-mod dm-crypt ecb xts virtio_pci virtio_blk af_alg algif_skcipher lzo-rle zram overlay"

ks_kernel_version() {
    local k
    k=$(ls /lib/modules 2>/dev/null | grep -- '-cloud-amd64$' | sort -V | tail -n 1)
    [ -n "$k" ] || { echo "no linux-image-cloud-amd64 kernel in /lib/modules (apt-get install linux-image-cloud-amd64)" >&2; return 1; }
    [ -r "/boot/vmlinuz-$k" ] || { echo "/boot/vmlinuz-$k is missing" >&2; return 1; }
    echo "$k"
}

# Prints the module files (relative to /lib/modules/$1) needed for the given module names,
# dependencies first, each once.
ks_module_order() {
    local kver=$1; shift
    local dep=/lib/modules/$kver/modules.dep
    local seen=" " name file deps d
    for name in "$@"; do
        name=${name//-/[-_]}
        file=$(grep -E "/${name}\.ko(\.[a-z]+)?:" "$dep" | head -n 1 | cut -d: -f1)
        [ -n "$file" ] || { echo "module $name not found in $dep" >&2; return 1; }
        deps=$(grep -E "^${file}:" "$dep" | cut -d: -f2-)
        # modules.dep lists the deepest dependency last.
        for d in $(echo $deps | tr ' ' '\n' | tac) "$file"; do
            case "$seen" in *" $d "*) continue ;; esac
            seen="$seen$d "
            echo "$d"
        done
    done
}

ks_copy_with_libs() {
    local root=$1 prog=$2 lib
    [ -x "$prog" ] || return 0
    mkdir -p "$root$(dirname "$prog")"
    cp -L "$prog" "$root$prog"
    for lib in $(ldd "$prog" | awk '/=>/ && $3 ~ /^\// {print $3} /^[[:space:]]*\/.*ld-linux/ {print $1}'); do
        [ -e "$root$lib" ] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}

# The hostile-user scenario's attack programs (hostile/*.c), built static so that they need
# nothing from the guest. Without gcc they are left out, and that scenario says so.
ks_build_hostile() {
    local out=$1 src
    mkdir -p "$out"
    if ! command -v gcc >/dev/null; then
        echo "gcc not found: the hostile-user programs are not built (scripts/install-deps)" >&2
        return 0
    fi
    for src in "$KS_TESTS_DIR"/hostile/*.c; do
        gcc -static -O2 -Wall -Wextra -o "$out/$(basename "$src" .c)" "$src" \
            || { echo "could not build $src" >&2; return 1; }
    done
}

# ks_build_initramfs KEEPSAKE_BINARY OUTPUT
ks_build_initramfs() {
    local bin=$1 out=$2 kver root m
    kver=$(ks_kernel_version) || return 1
    root=$(mktemp -d "$KS_WORK/initramfs.XXXXXX")
    chmod 0755 "$root"
    mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,run,tmp,lib/modules,usr/bin,usr/sbin,var/lib,home,root}
    cp /bin/busybox "$root/bin/busybox"
    for m in $(ks_module_order "$kver" $KS_GUEST_MODULES); do
        mkdir -p "$root/lib/modules/$(dirname "$m")"
        cp "/lib/modules/$kver/$m" "$root/lib/modules/$m"
        echo "$m" >> "$root/etc/modules.order"
    done
    for p in $KS_GUEST_PROGRAMS; do ks_copy_with_libs "$root" "$p"; done
    ks_build_hostile "$root/hostile" || return 1
    ks_copy_with_libs "$root" "$bin"
    [ "$bin" = /usr/sbin/keepsake ] || mv "$root$bin" "$root/usr/sbin/keepsake"
    ln -s e2fsck "$root/sbin/fsck.ext4"
    ln -s mke2fs "$root/sbin/mkfs.ext4"
    [ -r /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$root/etc/"
    cat > "$root/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
debian-tor:x:101:101:Tor:/var/lib/tor:/bin/false
amnesia:x:1000:1000:amnesia:/home/amnesia:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PW
    cat > "$root/etc/group" <<'GR'
root:x:0:
debian-tor:x:101:
amnesia:x:1000:
lp:x:7:
nogroup:x:65534:
GR
    mkdir -p "$root/home/amnesia"
    chown 1000:1000 "$root/home/amnesia"
    chmod 0700 "$root/home/amnesia"
    printf 'passwd: files\ngroup: files\nhosts: files\n' > "$root/etc/nsswitch.conf"
    echo "127.0.0.1 localhost" > "$root/etc/hosts"
    cp "$KS_TESTS_DIR/lib/init" "$root/init"
    mkdir -p "$root/tests"
    cp "$KS_TESTS_DIR/lib/guest.sh" "$root/tests/"
    cp "$KS_TESTS_DIR"/scenarios/*.sh "$KS_TESTS_DIR"/bench/*.sh "$root/tests/"
    ks_guest_extras "$root" || return 1
    chmod 0755 "$root/init"
    (cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 > "$out.tmp"
    mv "$out.tmp" "$out"
    rm -rf "$root"
}

# ks_boot OUTPUT_LOG CMDLINE_EXTRA DISK...
# Each DISK is serial=path; boots the guest, which runs /tests/<scenario> <phase> and powers
# off. Returns the exit status the guest reported, or 124 on timeout, 125 if it reported none.
#
# While the guest runs, the host follows its console and serves these requests, each line
# once, as it arrives (tail -f: within milliseconds, and idle in between):
#   KS-DUMP-NOW            dump the guest's physical memory to $KS_RAM_DUMP (qemu pmemsave),
#                          then quit
#   KS-WRITING             if KS_KILL_AFTER_MS is set, kill qemu that many ms later (a power cut)
#   KS-HOST unplug SERIAL  hot-unplug the disk SERIAL (device_del: an ACPI eject, the guest's
#                          kernel removes the disk as when a stick is pulled)
#   KS-HOST replug SERIAL  plug the same file back in as disk SERIAL (drive_add + device_add)
#   KS-HOST mark TEXT      nothing but the record below: the host's time of a guest event
# The guest learns the outcome from /sys/block (the disk vanishes; it comes back, as a new
# vdX with that serial), never from the host. Each request's arrival and outcome are recorded
# with the host's clock in OUTPUT_LOG.host (only made by a boot with requests):
# "UNIX-TIME VERB ARGS: received|done|failed: MESSAGE".
ks_boot() {
    local log=$1 extra=$2; shift 2
    local kver drives=() d serial file rc qpid sock killed=0 dumped=0 timed_out=0
    local con tailpid line buf= deadline hostlog=$log.host request
    local -A disk_file=()
    kver=$(ks_kernel_version) || return 1
    for d in "$@"; do
        serial=${d%%=*}; file=${d#*=}
        disk_file[$serial]=$file
        drives+=(-drive "file=$file,format=raw,if=none,id=d$serial,cache=unsafe"
                 -device "virtio-blk-pci,drive=d$serial,serial=$serial,id=dev$serial")
    done
    sock="$(dirname "$log")/monitor.sock"
    rm -f "$sock" "$sock.hotplug"
    # Emptied here and appended to by qemu, so that the reader below never sees an older log.
    : > "$log"; rm -f "$hostlog"
    # Two monitors: the first for the one-off commands (pmemsave), the second held open for
    # the whole boot by one monitor.py, which serves hot-plug requests without a start-up.
    qemu-system-x86_64 \
        -accel tcg -cpu max -m "$KS_VM_MEM" -smp 1 \
        -nographic -no-reboot -nodefaults -serial stdio \
        -monitor "unix:$sock,server,nowait" -monitor "unix:$sock.hotplug,server,nowait" \
        -kernel "/boot/vmlinuz-$kver" -initrd "$KS_INITRAMFS" \
        -append "console=ttyS0 panic=-1 init_on_free=1 quiet loglevel=3 $extra" \
        ${KS_QEMU_EXTRA:-} "${drives[@]}" </dev/null >>"$log" 2>&1 &
    qpid=$!
    coproc KS_MONITOR { exec python3 "$KS_TESTS_DIR/lib/monitor.py" --serve "$sock.hotplug"; }
    exec {con}< <(exec tail -n +1 -s 0.1 -f --pid="$qpid" "$log" 2>/dev/null)
    tailpid=$!
    deadline=$((SECONDS + KS_VM_TIMEOUT))
    while :; do
        # A line may arrive in pieces (the serial port is written a byte at a time): read's
        # timeout keeps what came so far.
        if IFS= read -r -t 1 -u "$con" line; then
            line=$buf${line%$'\r'}; buf=
        elif [ $? -gt 128 ]; then
            buf=$buf$line; line=
        else
            break # tail ended: qemu is gone
        fi
        case $line in
            KS-DUMP-NOW*)
                if [ "$dumped" = 0 ] && [ -n "${KS_RAM_DUMP:-}" ]; then
                    dumped=1
                    python3 "$KS_TESTS_DIR/lib/monitor.py" "$sock" \
                        "pmemsave 0 $((KS_VM_MEM * 1024 * 1024)) \"$KS_RAM_DUMP\"" quit >>"$log" 2>&1 \
                        || { echo "KS-FAIL the host could not dump the guest's RAM" >>"$log"; kill -9 "$qpid"; }
                fi ;;
            KS-WRITING*)
                if [ "$killed" = 0 ] && [ -n "${KS_KILL_AFTER_MS:-}" ]; then
                    killed=1
                    sleep "$(printf '%d.%03d' $((KS_KILL_AFTER_MS / 1000)) $((KS_KILL_AFTER_MS % 1000)))"
                    kill -9 "$qpid" 2>/dev/null
                    # On a line of its own: the guest may have been cut in the middle of one.
                    printf '\nKS-POWER-CUT after %s ms\n' "$KS_KILL_AFTER_MS" >>"$log"
                fi ;;
            "KS-HOST "*)
                read -r -a request <<<"${line#KS-HOST }"
                ks_host_request "$hostlog" "${request[@]}" ;;
        esac
        if [ "$SECONDS" -ge "$deadline" ]; then
            timed_out=1
            kill -9 "$qpid" 2>/dev/null
            echo "guest timed out after ${KS_VM_TIMEOUT}s" >>"$log"
            break
        fi
    done
    wait "$qpid" 2>/dev/null
    exec {con}<&-
    kill "$tailpid" 2>/dev/null
    # monitor.py ends when its input does (bash forgets a coprocess that has ended).
    d=${KS_MONITOR[1]:-}; [ -n "$d" ] && exec {d}>&-
    [ -n "${KS_MONITOR_PID:-}" ] && wait "$KS_MONITOR_PID" 2>/dev/null
    [ "$timed_out" = 1 ] && return 124
    [ "$killed" = 1 ] && return 0
    rc=$(sed -n 's/^KS-PHASE-RC \([0-9]*\).*/\1/p' "$log" | tr -d '\r' | tail -n 1)
    [ -n "$rc" ] || return 125
    return "$rc"
}

# ks_host_request HOSTLOG VERB ARGS...: one KS-HOST request of the guest (see ks_boot), with
# ks_boot's disk_file map of serial to file. Records its arrival and outcome in HOSTLOG.
ks_host_request() {
    local hostlog=$1 verb=${2:-} serial=${3:-} tries=0
    echo "${EPOCHREALTIME/[^0-9]/.} ${*:2}: received" >> "$hostlog"
    case $verb in
        mark) return 0 ;;
        unplug)
            ks_monitor "device_del dev$serial" ;;
        replug)
            if [ -z "$serial" ] || [ -z "${disk_file[$serial]:-}" ]; then
                ks_monitor_reply="error no disk $serial in this boot"
                false
            else
                # Until the guest has ejected the old device, qemu still holds it and its
                # drive (then deleted with it): retry while their ids are taken.
                while ! ks_monitor "drive_add 0 file=${disk_file[$serial]},format=raw,if=none,id=d$serial,cache=unsafe" \
                    && [[ $ks_monitor_reply == *"Duplicate ID"* ]] && [ $((tries += 1)) -lt 500 ]; do
                    sleep 0.02
                done
                [ "$ks_monitor_reply" = ok ] && \
                    while ! ks_monitor "device_add virtio-blk-pci,drive=d$serial,serial=$serial,id=dev$serial" \
                        && [[ $ks_monitor_reply == *"Duplicate device ID"* ]] && [ $((tries += 1)) -lt 500 ]; do
                        sleep 0.02
                    done
                [ "$ks_monitor_reply" = ok ]
            fi ;;
        *) ks_monitor_reply="error unknown request"; false ;;
    esac
    if [ $? -eq 0 ]; then
        echo "${EPOCHREALTIME/[^0-9]/.} ${*:2}: done" >> "$hostlog"
    else
        echo "${EPOCHREALTIME/[^0-9]/.} ${*:2}: failed: ${ks_monitor_reply#error }" >> "$hostlog"
        echo "host: KS-HOST ${*:2} failed: ${ks_monitor_reply#error }" >&2
    fi
}

# ks_monitor COMMAND: an HMP command through the boot's held monitor connection (ks_boot's
# KS_MONITOR coprocess). Returns 0 if qemu accepted it; its answer is in ks_monitor_reply.
ks_monitor() {
    ks_monitor_reply="error no monitor connection"
    [ -n "${KS_MONITOR_PID:-}" ] || return 1
    printf '%s\n' "$1" >&"${KS_MONITOR[1]}" || return 1
    IFS= read -r -t 60 -u "${KS_MONITOR[0]}" ks_monitor_reply || ks_monitor_reply="error no answer from monitor.py"
    [ "$ks_monitor_reply" = ok ]
}

# The real clients' code and the tools to check against it (scenarios 17 and 18):
# util-linux blkid (live-boot asks it for LABEL and PART_ENTRY_NAME, which busybox's cannot
# give), the overlay module (live-boot's union), live-boot's /lib/live/boot scripts from the
# package scripts/install-deps unpacks under target/ (never installed on the host), the
# guest-side live-boot shim, and a static reader of POSIX ACLs (no getfattr in the guest).
# Also static: unplug-clock, the guest's timer of a key wipe after a hot-unplug (issue 27).
KS_GUEST_PROGRAMS="$KS_GUEST_PROGRAMS /sbin/blkid"
KS_LIVE_BOOT=${KS_LIVE_BOOT:-$KS_ROOT/target/live-boot/extract}

ks_guest_extras() {
    local root=$1
    cp "$KS_TESTS_DIR/lib/liveboot.sh" "$root/tests/"
    if [ -r "$KS_LIVE_BOOT/lib/live/boot/9990-misc-helpers.sh" ]; then
        mkdir -p "$root/lib/live"
        cp -a "$KS_LIVE_BOOT/lib/live/boot" "$root/lib/live/"
    else
        echo "live-boot is not unpacked at $KS_LIVE_BOOT: scenario 17 will fail (scripts/install-deps)" >&2
    fi
    if command -v gcc >/dev/null; then
        gcc -static -O2 -Wall -Wextra -o "$root/usr/bin/acl-dump" "$KS_TESTS_DIR/lib/acl-dump.c" \
            || { echo "could not build lib/acl-dump.c" >&2; return 1; }
        gcc -static -O2 -Wall -Wextra -o "$root/usr/bin/unplug-clock" "$KS_TESTS_DIR/lib/unplug-clock.c" \
            || { echo "could not build lib/unplug-clock.c" >&2; return 1; }
    fi
}
