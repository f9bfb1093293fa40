# Guest side: runs Debian live-boot's own persistence code (/lib/live/boot from the live-boot
# package, copied in by lib/vm.sh) under busybox sh, as its 9990-overlay.sh calls it at boot.
# Only what the initramfs around it would provide is stubbed: messages, panic, udevadm,
# modprobe and the passphrase prompt. rootmnt is empty, so destinations are the live paths.

LB_DIR=/lib/live/boot
LB_WARNINGS=/tmp/lb-warnings
LB_PANICS=/tmp/lb-panics
# The live image's root file system, as live-boot mounts it: the lower layer of each union.
LB_ROOTFS=/run/live/rootfs/filesystem.squashfs

lb_setup() {
    [ -r "$LB_DIR/9990-misc-helpers.sh" ] || ks_fail "live-boot's scripts are not in the guest (run scripts/install-deps)"
    blkid --help 2>&1 | grep -q -- '--probe' || ks_fail "util-linux blkid is not in the guest"
    mkdir -p /lib/cryptsetup "$LB_ROOTFS"
    # What cryptsetup's askpass would read from the console: the test passphrase.
    printf '#!/bin/sh\ncat %s\n' "$KS_PASS_FILE" > /lib/cryptsetup/askpass
    chmod 0755 /lib/cryptsetup/askpass
}

# lb_image_dir PATH [FILE CONTENT]: PATH exists in the live image (and so in the session).
lb_image_dir() {
    mkdir -p "$LB_ROOTFS$1" "$1"
    if [ -n "${2:-}" ]; then
        echo "$3" > "$LB_ROOTFS$1/$2"
        echo "$3" > "$1/$2"
    fi
}

# lb_boot ENCRYPTION STORAGE [ROOTMNT]: what live-boot does at boot with
# "persistence persistence-encryption=ENCRYPTION persistence-storage=STORAGE": find the
# volumes (opening LUKS ones with the passphrase), read their persistence.conf and activate
# it. Prints what it found; its warnings and panics go to $LB_WARNINGS and $LB_PANICS.
lb_boot() {
    : > "$LB_WARNINGS"; : > "$LB_PANICS"
    (
        log_warning_msg() { echo "$*" >> "$LB_WARNINGS"; echo "KS-LOG live-boot warning: $*" >&2; }
        log_begin_msg() { :; }
        log_end_msg() { :; }
        log_success_msg() { :; }
        log_failure_msg() { log_warning_msg "$@"; }
        # The real panic drops to a shell and never returns: end this (sub)shell.
        panic() { echo "PANIC: $*" >> "$LB_PANICS"; echo "KS-LOG live-boot PANIC: $*" >&2; exit 1; }
        udevadm() { [ "$1" = settle ]; }
        modprobe() { :; }
        PERSISTENCE=true PERSISTENCE_METHOD=overlay UNIONTYPE=overlay
        PERSISTENCE_ENCRYPTION=$1 PERSISTENCE_STORAGE=$2 rootmnt=${3:-}
        PERSISTENCE_PATH="" PERSISTENCE_READONLY="" LIVE_BOOT_DEBUG=""
        . "$LB_DIR/0001-init-vars.sh"
        . "$LB_DIR/9990-misc-helpers.sh"
        # From 9990-overlay.sh (setup_unionfs), the persistence part.
        overlays="${custom_overlay_label}"
        overlay_devices=""
        for media in $(find_persistence_media "${overlays}" ""); do
            media="$(echo ${media} | tr ":" " ")"
            for overlay_label in ${custom_overlay_label}; do
                case ${media} in
                    ${overlay_label}=*) overlay_devices="${overlay_devices} ${media#*=}" ;;
                esac
            done
        done
        echo "${overlay_devices# }" > /tmp/lb-devices
        echo "KS-LOG live-boot found:${overlay_devices:- nothing}"
        custom_mounts="/tmp/custom_mounts.list"
        rm -f ${custom_mounts}
        get_custom_mounts ${custom_mounts} ${overlay_devices}
        [ -s "$LB_PANICS" ] && exit 1
        sed 's/^/KS-LOG live-boot mount: /' ${custom_mounts} 2>/dev/null
        used_overlays=$(activate_custom_mounts ${custom_mounts})
        rm -f ${custom_mounts}
        for overlay in ${overlay_devices}; do
            if echo ${used_overlays} | grep -qve "^\(.* \)\?${overlay}\( .*\)\?$"; then
                close_persistence_media ${overlay}
            fi
        done
        [ ! -s "$LB_PANICS" ]
    )
}

# lb_custom_mounts DEVICE...: only live-boot's reading of persistence.conf (get_custom_mounts)
# on volumes already mounted where live-boot mounts them; fails on a panic.
lb_custom_mounts() {
    : > "$LB_WARNINGS"; : > "$LB_PANICS"
    (
        log_warning_msg() { echo "$*" >> "$LB_WARNINGS"; echo "KS-LOG live-boot warning: $*" >&2; }
        panic() { echo "PANIC: $*" >> "$LB_PANICS"; echo "KS-LOG live-boot PANIC: $*" >&2; exit 1; }
        udevadm() { [ "$1" = settle ]; }
        rootmnt="" PERSISTENCE_READONLY=""
        . "$LB_DIR/0001-init-vars.sh"
        . "$LB_DIR/9990-misc-helpers.sh"
        rm -f /tmp/lb-custom-mounts
        get_custom_mounts /tmp/lb-custom-mounts "$@"
        [ ! -s "$LB_PANICS" ]
    )
}

lb_no_panic() { [ ! -s "$LB_PANICS" ]; }
lb_no_warning() { [ ! -s "$LB_WARNINGS" ]; }
lb_found() { cat /tmp/lb-devices 2>/dev/null; }
