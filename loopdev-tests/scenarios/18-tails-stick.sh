# Tails, with Tails' own rules (from its tps source; lib/tails_rules.py runs its line parser,
# shlex.split, on the host): a stick built as Tails builds it (GPT, TailsData after the system
# partition with Tails' type GUID, LUKS2 argon2id, ext4 TailsData, persistence.conf 115:122
# 0600 in Tails' sorted tab-and-shlex format, with a quoted custom line and a `file` line;
# the accounts as Tails has them) unlocks with every feature bound as Tails binds it, the
# mount root is root:root 0770 with exactly user:amnesia:x at every unlock, and the live user
# reads dotfiles through their links; what keepsake leaves behind after feature enable and
# disable, and a new volume from `keepsake create`, pass Tails' acceptance rules; a calibrated
# keyslot is one Tails does not re-upgrade (argon2id memory >= min(RAM/2, 1 GiB)).

host_main() {
    ks_set passphrase "tails $(ks_random)"
    local usb other
    usb=$(ks_live_stick usb 320M) || return 1
    other=$(ks_live_stick other 320M) || return 1
    ks_phase tails_stick "usb=$usb" "other=$other"
    tails_check_conf "after feature enable and disable" after_features ""
    tails_check_conf "a new volume from keepsake create" created "PersistentDirectory,AdditionalSoftware"
    # A guest that can afford Tails' floor: Debian's libcryptsetup gives argon2id at most
    # half of the available memory on a machine without swap (Debian bug 1028250), so the
    # floor, min(RAM/2, 1 GiB), is reachable only with more than 2 GiB: 1 GiB it is.
    KS_VM_MEM=2560 ks_phase keyslot "usb=$(ks_live_stick keyslot 320M)"
}

# The accounts as Tails has them (tails-persistent-storage 115:122, debian-tor 106:112).
tails_accounts() {
    cat > /etc/passwd <<'PW'
root:x:0:0:root:/root:/bin/sh
debian-tor:x:106:112::/var/lib/tor:/bin/false
tails-persistent-storage:x:115:122::/nonexistent:/usr/sbin/nologin
amnesia:x:1000:1000:amnesia:/home/amnesia:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PW
    cat > /etc/group <<'GR'
root:x:0:
lp:x:7:
debian-tor:x:112:
tails-persistent-storage:x:122:
amnesia:x:1000:
nogroup:x:65534:
GR
}

# Exactly Tails' mount root: root:root 0770, and one ACL entry, user:amnesia:--x.
TAILS_ROOT_ACL="user::rwx,user:1000:--x,group::rwx,mask::rwx,other::---"
tails_root_is_tails() {
    local root=${2:-$KS_ROOT_MNT}
    ks_check_eq "$1: mount root owner and mode" "$(ks_mode $root)" "0:0 770"
    ks_check_eq "$1: mount root ACL" "$(acl-dump $root | tr '\n' ',' | sed 's/,$//')" "$TAILS_ROOT_ACL"
}

guest_tails_stick() {
    tails_accounts
    mkfs.ext4 -q /dev/vda1 && mkfs.ext4 -q /dev/vdb1 || ks_fail "system partitions"
    ks_live_session
    ks_pass_file
    command -v acl-dump >/dev/null || ks_fail "acl-dump is not in the guest (gcc missing on the host?)"
    # Tails' steps: the partition after the system one, LUKS2 argon2id, ext4 TailsData.
    printf 'type=8DA63339-0007-60C0-C436-083AC8230908, name="TailsData"\n' | sfdisk -q --append --no-reread /dev/vda \
        || ks_fail "partition as Tails does"
    [ -b /dev/vda2 ] || partx --add --nr 2 /dev/vda || ks_fail "tell the kernel"
    cryptsetup luksFormat -q --type luks2 --pbkdf argon2id --pbkdf-memory 8192 --pbkdf-force-iterations 4 \
        --key-file "$KS_PASS_FILE" /dev/vda2 || ks_fail "luksFormat as Tails does"
    cryptsetup open --key-file "$KS_PASS_FILE" /dev/vda2 TailsData_unlocked && mkfs.ext4 -q -F -L TailsData /dev/mapper/TailsData_unlocked || ks_fail "mkfs"
    local t=/mnt/t
    mkdir -p $t && mount -o acl /dev/mapper/TailsData_unlocked $t || ks_fail "mount"
    # Control: the mount root as Tails leaves it (chmod 0770, setfacl -m user:amnesia:x) passes.
    chmod 0770 $t && acl-dump -t $t || ks_fail "set Tails' ACL"
    tails_root_is_tails "control, as Tails sets it" $t
    acl-dump -x $t && chmod 0755 $t
    # Tails writes sorted(set(lines)), each "shlex.quote(dest)<TAB>options".
    {
        printf '/home/amnesia/Persistent\tsource=Persistent\n'
        printf '/var/cache/apt/archives\tsource=apt/cache\n/var/lib/apt/lists\tsource=apt/lists\n'
        printf '/home/amnesia/.gnupg\tsource=gnupg\n/home/amnesia/.ssh\tsource=openssh-client\n'
        printf '/home/amnesia\tsource=dotfiles,link\n'
        printf "'/home/amnesia/My Documents'\tsource=my-documents\n"
        printf '/home/amnesia/.config/note.txt\tsource=note.txt,file\n'
    } | LC_ALL=C sort -u > $t/persistence.conf
    chown 115:122 $t/persistence.conf && chmod 0600 $t/persistence.conf
    mkdir -m 0700 $t/Persistent $t/dotfiles $t/dotfiles/.ssh $t/gnupg $t/openssh-client $t/my-documents
    mkdir -p $t/apt/cache $t/apt/lists
    echo "tails data" > $t/Persistent/note
    echo "alias tails=yes" > $t/dotfiles/.bashrc
    echo "Host onion" > $t/dotfiles/.ssh/config
    echo "pubring" > $t/gnupg/pubring.kbx
    echo "known" > $t/openssh-client/known_hosts
    echo "a document" > "$t/my-documents/doc.txt"
    echo "one file" > $t/note.txt && chmod 0600 $t/note.txt
    chown -R 1000:1000 $t/Persistent $t/dotfiles $t/gnupg $t/openssh-client $t/my-documents $t/note.txt
    sed 's/^/KS-LOG Tails-made persistence.conf: /' $t/persistence.conf
    umount $t && cryptsetup close TailsData_unlocked
    mkdir -p /home/amnesia/.config && chown 1000:1000 /home/amnesia/.config

    local v=$KS_ROOT_MNT
    ks_check_rc 0 "keepsake unlocks the Tails-made stick" -- keepsake unlock --key-file "$KS_PASS_FILE"
    ks_assert "as TailsData_unlocked" test -b /dev/mapper/TailsData_unlocked
    ks_check_eq "bind: Persistent" "$(ks_inode $KS_PERSISTENT/note)" "$(ks_inode $v/Persistent/note)"
    ks_check_eq "bind: GnuPG" "$(ks_inode /home/amnesia/.gnupg/pubring.kbx)" "$(ks_inode $v/gnupg/pubring.kbx)"
    ks_check_eq "bind: SSH client" "$(ks_inode /home/amnesia/.ssh/known_hosts)" "$(ks_inode $v/openssh-client/known_hosts)"
    ks_check_eq "bind: the quoted custom line with a space" "$(ks_inode "/home/amnesia/My Documents/doc.txt")" "$(ks_inode "$v/my-documents/doc.txt")"
    ks_check_eq "file: a single file bound" "$(ks_inode /home/amnesia/.config/note.txt)" "$(ks_inode $v/note.txt)"
    ks_check_eq "link: a dotfile" "$(readlink /home/amnesia/.bashrc)" "$v/dotfiles/.bashrc"
    ks_check_eq "Dotfiles last: its link inside the bound .ssh" "$(readlink /home/amnesia/.ssh/config)" "$v/dotfiles/.ssh/config"
    tails_root_is_tails "at unlock"
    ks_check_eq "the live user reads a dotfile through its link" \
        "$(/usr/bin/setpriv --reuid 1000 --regid 1000 --clear-groups cat /home/amnesia/.bashrc 2>&1)" "alias tails=yes"
    ks_check_eq "persistence.conf keeps Tails' owner and mode" "$(ks_mode $v/persistence.conf)" "115:122 600"

    # The ACL is set at every unlock, whatever was there before.
    acl-dump -x $v && chmod 0755 $v
    ks_check_rc 0 "lock" -- keepsake lock
    ks_check_rc 0 "unlock again" -- keepsake unlock --key-file "$KS_PASS_FILE"
    tails_root_is_tails "at the next unlock"

    # Features changed with keepsake, then Tails' rules on the result (host side).
    mkdir -p /var/lib/tor && chown 106:112 /var/lib/tor && chmod 2700 /var/lib/tor
    ks_check_rc 0 "feature enable electrum" -- keepsake feature enable electrum
    ks_check_rc 0 "feature disable gnupg" -- keepsake feature disable gnupg
    keepsake feature enable tor-state >/tmp/ks-cmd.out 2>&1
    ks_log "feature enable tor-state: exit $? ($(tr '\n' ' ' < /tmp/ks-cmd.out))"
    tails_hand_back after_features $v/persistence.conf
    ks_check "persistence.conf is not a symlink" test ! -L $v/persistence.conf
    keepsake feature disable tor-state >/dev/null 2>&1
    ks_check_rc 0 "lock" -- keepsake lock

    # A new Tails-layout volume.
    ks_check_rc 0 "create a Tails-layout volume" -- keepsake create --device /dev/vdb --yes --key-file "$KS_PASS_FILE" $KS_KDF
    ks_check_rc 0 "unlock it" -- keepsake unlock --device /dev/vdb --key-file "$KS_PASS_FILE"
    [ -r $v/persistence.conf ] && tails_hand_back created $v/persistence.conf
    tails_root_is_tails "a new volume"
    ks_check_rc 0 "lock" -- keepsake lock
    ks_checks_done
}

# Tails re-upgrades every keyslot whose argon2id memory is below min(RAM/2, 1 GiB)
# (tps device.py is_upgraded, from SC_PHYS_PAGES). One calibrated create, read with luksDump.
guest_keyslot() {
    tails_accounts
    mkfs.ext4 -q /dev/vda1 || ks_fail "system partition"
    ks_live_session
    ks_pass_file
    local total floor memory avail
    total=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    avail=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
    floor=$((total / 2)); [ $floor -gt 1048576 ] && floor=1048576
    ks_expect_rc 0 "create with the calibrated cost" -- ks_timed create_calibrated keepsake create --device /dev/vda --yes --key-file "$KS_PASS_FILE"
    memory=$(cryptsetup luksDump --dump-json-metadata /dev/vda2 | tr -d ' \n' | grep -o '"memory":[0-9]*' | head -n 1 | cut -d: -f2)
    ks_log "RAM $total KiB, $avail KiB available; keyslot argon2id memory $memory KiB; Tails' floor $floor KiB"
    ks_check "the keyslot is one Tails counts as upgraded (memory $memory >= $floor KiB)" test "${memory:-0}" -ge "$floor"
    ks_check "and create did not warn that Tails would convert it" sh -c "! grep -q 'Tails will convert' /tmp/ks-cmd.out"
    ks_checks_done
}
