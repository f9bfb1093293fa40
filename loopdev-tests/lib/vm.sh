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
KS_GUEST_PROGRAMS="/sbin/cryptsetup /sbin/mke2fs /sbin/e2fsck /usr/bin/tor /usr/bin/setpriv /sbin/sfdisk /usr/bin/partx /sbin/debugfs /usr/bin/date /usr/bin/strace /usr/bin/findmnt /usr/bin/setfacl /usr/bin/getfacl /usr/bin/setfattr /usr/bin/getfattr"
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
# While the guest runs, the host watches its console for two requests:
#   KS-DUMP-NOW   dump the guest's physical memory to $KS_RAM_DUMP (qemu pmemsave), then quit
#   KS-WRITING    if KS_KILL_AFTER_MS is set, kill qemu that many ms later (a power cut)
ks_boot() {
    local log=$1 extra=$2; shift 2
    local kver drives=() d serial file rc qpid sock killed=0 dumped=0 waited=0
    kver=$(ks_kernel_version) || return 1
    for d in "$@"; do
        serial=${d%%=*}; file=${d#*=}
        drives+=(-drive "file=$file,format=raw,if=none,id=d$serial,cache=unsafe"
                 -device "virtio-blk-pci,drive=d$serial,serial=$serial")
    done
    sock="$(dirname "$log")/monitor.sock"
    rm -f "$sock"
    qemu-system-x86_64 \
        -accel tcg -cpu max -m "$KS_VM_MEM" -smp 1 \
        -nographic -no-reboot -nodefaults -serial stdio \
        -monitor "unix:$sock,server,nowait" \
        -kernel "/boot/vmlinuz-$kver" -initrd "$KS_INITRAMFS" \
        -append "console=ttyS0 panic=-1 init_on_free=1 quiet loglevel=3 $extra" \
        ${KS_QEMU_EXTRA:-} "${drives[@]}" </dev/null >"$log" 2>&1 &
    qpid=$!
    while kill -0 "$qpid" 2>/dev/null; do
        if [ "$dumped" = 0 ] && [ -n "${KS_RAM_DUMP:-}" ] && grep -q '^KS-DUMP-NOW' "$log"; then
            dumped=1
            python3 "$KS_TESTS_DIR/lib/monitor.py" "$sock" \
                "pmemsave 0 $((KS_VM_MEM * 1024 * 1024)) \"$KS_RAM_DUMP\"" quit >>"$log" 2>&1 \
                || { echo "KS-FAIL the host could not dump the guest's RAM" >>"$log"; kill -9 "$qpid"; }
        fi
        if [ "$killed" = 0 ] && [ -n "${KS_KILL_AFTER_MS:-}" ] && grep -q '^KS-WRITING' "$log"; then
            killed=1
            sleep "$(printf '%d.%03d' $((KS_KILL_AFTER_MS / 1000)) $((KS_KILL_AFTER_MS % 1000)))"
            kill -9 "$qpid" 2>/dev/null
            # On a line of its own: the guest may have been cut in the middle of one.
            printf '\nKS-POWER-CUT after %s ms\n' "$KS_KILL_AFTER_MS" >>"$log"
        fi
        sleep 0.2
        waited=$((waited + 1))
        if [ $((waited / 5)) -ge "$KS_VM_TIMEOUT" ]; then
            kill -9 "$qpid" 2>/dev/null
            echo "guest timed out after ${KS_VM_TIMEOUT}s" >>"$log"
            wait "$qpid" 2>/dev/null
            return 124
        fi
    done
    wait "$qpid" 2>/dev/null
    [ "$killed" = 1 ] && return 0
    rc=$(sed -n 's/^KS-PHASE-RC \([0-9]*\).*/\1/p' "$log" | tr -d '\r' | tail -n 1)
    [ -n "$rc" ] || return 125
    return "$rc"
}

# The real clients' code and the tools to check against it (scenarios 17 and 18):
# util-linux blkid (live-boot asks it for LABEL and PART_ENTRY_NAME, which busybox's cannot
# give), the overlay module (live-boot's union), live-boot's /lib/live/boot scripts from the
# package scripts/install-deps unpacks under target/ (never installed on the host), the
# guest-side live-boot shim, and a static reader of POSIX ACLs (no getfattr in the guest).
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
    fi
}
