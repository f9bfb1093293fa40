#!/usr/bin/env python3
"""A day on the Debian live system with a Tails-layout keepsake stick.

Session 1: the live user, in a terminal (a pty, as a desktop terminal gives), makes and
unlocks a Tails-layout partition with `sudo keepsake`; udev's /dev/disk/by-* links appear;
the binds reach a service's own mount namespace; tor-state is enabled with Debian's tor unit
(and its AppArmor profile), tor stopped and started by systemd only; Ctrl-C in the middle of a
restore and of an unlock loses nothing; lock leaves no mapping, mount or loop device, in
systemd's view too. Then a container file on a stick udisks mounted for the live user is
treated as a volume the live user could have written.
Session 2 (an amnesic reboot): tor has a new onion address until the volume is unlocked;
then the old one is back.
Afterwards, on the host: the passphrase, the canaries, the volume key and the onion
service's secret key are in no disk image.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import livevm  # noqa: E402
from livevm import Guest, converse, json_of  # noqa: E402

KS = "sudo keepsake"
KDF = "--pbkdf-memory 8192 --pbkdf-force-iterations 4"  # small costs: TCG
ARCHIVE_KDF = "--archive-kdf-memory 8192 --archive-kdf-iterations 1"
PASS_PROMPT = r"[Pp]assphrase[^\n]*: $"
HOME = "/home/user"
ONION = "/var/lib/tor/ks_onion"
MAPPING = "TailsData_unlocked"


def load_tor_profile(r, g):
    """Debian's apparmor.service loads no profile on a live system (it is skipped when
    /run/live/overlay/work exists), so tor runs unconfined there; Tails loads them. The
    kernel enables AppArmor: tor's own profile is loaded as Tails would, so that tor-state
    runs under it."""
    skipped = g.out("systemctl show -p ConditionResult --value apparmor")
    r.say(f"Debian's apparmor.service ran on this live system: {skipped}")
    g.out("sudo apparmor_parser -r /etc/apparmor.d/system_tor", timeout=600)


def start_onion_service(g):
    """The same onion service in each session (torrc is on the amnesic system); returns
    its address once tor has made it."""
    g.out(f"printf 'HiddenServiceDir {ONION}/\\nHiddenServicePort 80 127.0.0.1:8080\\n' | sudo tee -a /etc/tor/torrc >/dev/null")
    g.out("sudo systemctl restart tor@default")
    return onion_address(g)


def onion_address(g):
    return g.out(f"for i in $(seq 120); do sudo test -s {ONION}/hostname && break; sleep 1; done; sudo cat {ONION}/hostname")


def tor_pid(g):
    return g.out("systemctl show -p MainPID --value tor@default")


def teardown_is_complete(r, g, what, service_pid=None):
    r.equal(f"{what}: no device-mapper device", g.out("sudo dmsetup ls"), "No devices found")
    mounts = g.out("findmnt -rn -o TARGET,SOURCE | grep -E 'persistence|mapper|Persistent|/var/lib/tor|apt' || true")
    r.equal(f"{what}: nothing of the volume is mounted", mounts, "")
    if service_pid:
        mounts = g.out(f"sudo nsenter -t {service_pid} -m findmnt -rn -o TARGET,SOURCE | grep -E 'persistence|mapper|Persistent|/var/lib/tor' || true")
        r.equal(f"{what}: nor in the service's mount namespace", mounts, "")
    r.equal(f"{what}: no loop device", g.out("sudo losetup -a | grep -v filesystem.squashfs || true"), "")
    units = g.out("systemctl list-units --all --type=mount --plain --no-legend | grep -E 'persistence|Persistent|tor|apt' || true")
    r.equal(f"{what}: systemd knows no mount of it", units, "")
    r.equal(f"{what}: udev's links are gone", g.out(f"ls /dev/disk/by-id | grep -c dm-name-{MAPPING} || true"), "0")


def size_of(number, unit):
    """Bytes of an indicatif binary size ("12.50 MiB")."""
    return float(number) * {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}.get(unit, 1)


def file_hashes(g, folder):
    text = g.out(f"(cd {folder} && sha256sum * | sort)")
    return dict(line.split()[::-1] for line in text.splitlines())


def scenario(r, work, image):
    passphrase = "live session " + livevm.random_word()
    archive_pass = "archive " + livevm.random_word()
    canary = "canary-" + livevm.random_word()
    stick = livevm.live_stick(f"{work}/stick.img", image, 512)
    data = livevm.blank_disk(f"{work}/data.img", 160, "label: dos\nstart=2048, type=c\n")
    host = livevm.blank_disk(f"{work}/hostdisk.img", 64)
    disks = [("stick", stick), ("data", data), ("hostdisk", host)]

    # -- 1 ----------------------------------------------------------------------------
    r.say("session 1")
    g = Guest(image, work, "1-session", disks)
    r.say(f"logged in {g.login():.0f} s after power-on")
    # A desktop terminal: the shell on a pty (script), sudo on another (Debian's use_pty).
    g.type("script -q /dev/null\r")
    g.expect(r"live\$ ")
    r.equal("the shell runs on a pty", g.out("tty | grep -c /dev/pts/"), "1")
    # A service with its own mount namespace, started before the volume is unlocked.
    g.out("sudo systemd-run --unit ks-private -p PrivateTmp=yes sleep 100000 >/dev/null 2>&1")
    service = g.out("systemctl show -p MainPID --value ks-private")
    load_tor_profile(r, g)
    amnesic = start_onion_service(g)
    r.check("tor makes an onion service on the amnesic system", amnesic.endswith(".onion"), amnesic)
    tor_before = tor_pid(g)

    rc, _ = converse(g, f"{KS} create --device /dev/vda {KDF}",
                     [(r"Type yes to go on: $", "yes"), (PASS_PROMPT, passphrase), (PASS_PROMPT, passphrase)])
    r.equal("create --device /dev/vda (Tails layout)", rc, 0)
    rc, text = converse(g, f"{KS} unlock", [(PASS_PROMPT, passphrase)])
    r.equal("unlock finds TailsData", rc, 0)
    # The watcher unlock armed through sudo, in a pty: sudo has exited, the watcher stays,
    # in a session of its own, and the live user can neither signal nor trace it.
    rc, text = g.run(f"{KS} status")
    r.check("status: pulling the stick wipes the key",
            "watched: pulling /dev/vda2 or /dev/vda wipes the key" in text, text)
    watcher = text.split("watcher pid ", 1)[-1].split(",", 1)[0]
    r.equal("the watcher outlived sudo: its parent is systemd", g.out(f"ps -o ppid= -p {watcher}").strip(), "1")
    r.equal("it leads its own session, not the terminal's", g.out(f"ps -o sid= -p {watcher}").strip(), watcher)
    r.check("the live user cannot signal it", g.run(f"kill -TERM {watcher}")[0] != 0)
    r.check("the kernel lets the live user read nothing of it",
            g.run(f"cat /proc/{watcher}/environ")[0] != 0)
    links = g.out("ls -l /dev/disk/by-id /dev/disk/by-label /dev/disk/by-partlabel")
    r.check(f"udev made /dev/disk/by-id/dm-name-{MAPPING}", f"dm-name-{MAPPING}" in links, links)
    r.equal("by-label/TailsData is the mapping", g.out("readlink -f /dev/disk/by-label/TailsData"),
            g.out(f"readlink -f /dev/mapper/{MAPPING}"))
    r.equal("by-partlabel/TailsData is the partition", g.out("readlink -f /dev/disk/by-partlabel/TailsData"), "/dev/vda2")
    g.out(f"echo {canary} > {HOME}/Persistent/note.txt")
    r.equal("the bind reached the service's mount namespace",
            g.out(f"sudo nsenter -t {service} -m cat {HOME}/Persistent/note.txt"), canary)
    r.check("systemd sees the mount", "Persistent" in g.out("systemctl list-units --type=mount --plain --no-legend"))

    rc, text = g.run(f"{KS} feature enable tor-state")
    r.equal("feature enable tor-state", rc, 0)
    r.check("tor runs again, restarted by systemd", g.run("systemctl is-active -q tor@default")[0] == 0
            and tor_pid(g) not in ("0", tor_before), g.out("systemctl status tor@default --no-pager | head -12"))
    r.equal("the session's onion service was carried into the volume", onion_address(g), amnesic)
    journal = g.out("sudo journalctl -b -u tor@default --no-pager -o cat | grep -cE '^(Stopped|Started)' || true")
    r.check(f"systemd's journal shows tor stopped and started ({journal} lines)", int(journal) >= 2)
    confined = g.out("sudo cat /proc/$(systemctl show -p MainPID --value tor@default)/attr/current")
    if not r.equal("tor is confined by Debian's AppArmor profile", confined, "system_tor (enforce)"):
        r.say(g.out("sudo aa-status 2>&1 | head -5; systemctl status apparmor --no-pager 2>&1 | head -8"))
    secret = g.out(f"sudo tail -c 64 {ONION}/hs_ed25519_secret_key | od -An -tx1 -v | tr -d ' \\n'")

    # Ctrl-C in the middle of a restore.
    g.out(f"mkdir -p {HOME}/Persistent/big && for i in $(seq 1 48); do head -c 1M /dev/urandom > {HOME}/Persistent/big/f$i; done")
    backed = file_hashes(g, f"{HOME}/Persistent/big")
    rc, _ = converse(g, f"{KS} backup {ARCHIVE_KDF} {HOME}/volume.ks", [(PASS_PROMPT, archive_pass), (PASS_PROMPT, archive_pass)])
    r.equal("backup", rc, 0)
    g.out(f"for i in $(seq 1 48); do head -c 1M /dev/urandom > {HOME}/Persistent/big/f$i; done")
    changed = file_hashes(g, f"{HOME}/Persistent/big")
    g.marker += 1
    n = g.marker
    g.type(f"printf 'KS-%s-B\\n' {n}; {KS} restore --overwrite {HOME}/volume.ks; printf 'KS-%s-E %s\\n' {n} $?\r")
    g.expect(rf"KS-{n}-B\n", 30)
    g.expect(PASS_PROMPT, 120)
    g.type(archive_pass + "\r")
    # Ctrl-C once the progress bar shows more than half of the archive written.
    progress = r"restore: ([0-9.]+) ([KMG]?i?B) of ([0-9.]+) ([KMG]?i?B)"
    while True:
        m = g.expect(rf"{progress}|(?=KS-{n}-E)", 300)
        if m.group(1) is None or size_of(m.group(1), m.group(2)) * 2 > size_of(m.group(3), m.group(4)):
            break
    r.say(f"Ctrl-C at {m.group(0)!r}")
    g.type("\x03")
    rc = int(g.expect(rf"KS-{n}-E (\d+)\n", 300).group(1))
    r.check(f"Ctrl-C in the middle of restore: exit {rc} (130: stopped and rolled back; 0: it had finished)",
            rc in (0, 130))
    now = file_hashes(g, f"{HOME}/Persistent/big")
    torn = [f for f, h in now.items() if h not in (backed.get(f), changed.get(f))]
    r.check("every file is whole, the old or the backed-up one", not torn and set(now) == set(backed), str(torn))
    r.say(f"after Ctrl-C: {sum(now[f] == backed[f] for f in now)} of {len(now)} files restored")
    rc, _ = converse(g, f"{KS} restore --overwrite {HOME}/volume.ks", [(PASS_PROMPT, archive_pass)])
    r.equal("the next restore works", rc, 0)
    r.equal("and brings back every file", file_hashes(g, f"{HOME}/Persistent/big"), backed)

    # Ctrl-C in the middle of an unlock.
    rc, _ = g.run(f"{KS} lock")
    r.equal("lock", rc, 0)
    if not r.equal("tor runs on the amnesic state again", g.run("systemctl is-active -q tor@default")[0], 0):
        r.say(g.out("sudo journalctl -b -u tor@default --no-pager -o short-monotonic | tail -25"))
    g.marker += 1
    n = g.marker
    g.type(f"printf 'KS-%s-B\\n' {n}; {KS} unlock; printf 'KS-%s-E %s\\n' {n} $?\r")
    g.expect(rf"KS-{n}-B\n", 30)
    g.expect(PASS_PROMPT, 120)
    g.type(passphrase + "\r")
    time.sleep(float(os.environ.get("KS_LIVE_UNLOCK_CTRL_C", "2")))
    g.type("\x03")
    rc = int(g.expect(rf"KS-{n}-E (\d+)\n", 300).group(1))
    r.check(f"Ctrl-C in the middle of unlock: exit {rc}", rc in (0, 130))
    rc, text = g.run(f"{KS} --json status")
    unlocked = rc == 0 and json_of(text).get("unlocked") is True
    r.say(f"after Ctrl-C, status says unlocked: {unlocked}")
    if not unlocked:
        r.equal("no mapping is left", g.out("sudo dmsetup ls"), "No devices found")
        rc, text = converse(g, f"{KS} unlock", [(PASS_PROMPT, passphrase)])
        r.equal("the next unlock works", rc, 0)
    r.equal("the note is there", g.out(f"cat {HOME}/Persistent/note.txt"), canary)
    r.equal("tor-state is active again: the same onion address", onion_address(g), amnesic)

    rc, text = g.run(f"{KS} lock")
    r.equal("lock", rc, 0)
    teardown_is_complete(r, g, "after lock", service)
    # After an interrupted unlock, tor is not always started again on the amnesic state
    # (open: see the closing note of issue 25); what lock says of it must be true.
    running = g.run("systemctl is-active -q tor@default")[0] == 0
    said_restarted = "tor restarted on the amnesic state" in text
    r.check(f"lock says what became of tor (running: {running}, said restarted: {said_restarted})",
            running == said_restarted and (running or "tor left stopped" in text), text.strip()[-300:])
    if not running:
        r.say(g.out("sudo journalctl -b -u tor@default --no-pager -o short-monotonic | tail -8"))

    # A stick udisks mounted for the live user.
    g.out("sudo mkfs.vfat -n KSDATA /dev/vdb1 >/dev/null")
    # polkit asks for an administrator's password unless the session may mount by itself.
    rc, text = g.run("udisksctl mount -b /dev/vdb1 --no-user-interaction")
    if rc != 0:
        rc, text = converse(g, "udisksctl mount -b /dev/vdb1", [(r"Password: $", livevm.LIVE_PASSWORD)], 120)
    r.equal("udisks mounts the data stick for the live user", rc, 0)
    media = g.out("findmnt -n -o TARGET /dev/vdb1")
    r.say(f"mounted at {media}: {g.out('findmnt -n -o OPTIONS /dev/vdb1')}")
    container = f"{media}/keepsake.img"
    rc, _ = converse(g, f"{KS} create --image {container} --size 64M {KDF}",
                     [(PASS_PROMPT, passphrase), (PASS_PROMPT, passphrase)])
    r.equal("create a container on it", rc, 0)
    rc, text = converse(g, f"{KS} unlock --image {container}", [(PASS_PROMPT, passphrase)])
    r.equal("unlock: exit 9, features outside the home skipped", rc, 9)
    rc, text = g.run(f"{KS} feature enable tor-state")
    r.equal("feature enable tor-state is refused (exit 8)", rc, 8)
    rc, text = g.run(f"{KS} --json status")
    why = livevm.json_of(text)["volumes"][0].get("not_only_root") if rc == 0 else None
    r.check(f"status says who else could write it: {why}", bool(why) and "uid 1000" in why, text[-300:])
    rc, _ = g.run(f"{KS} lock")
    r.equal("lock the container", rc, 0)
    teardown_is_complete(r, g, "after locking the container")
    r.equal("the stick stays mounted for the live user, as udisks left it",
            g.out("findmnt -n -o TARGET /dev/vdb1"), media)
    g.type("exit\r")
    g.expect(r"live\$ ")
    g.poweroff()

    # -- 2. An amnesic reboot ---------------------------------------------------------
    r.say("session 2: an amnesic reboot")
    g = Guest(image, work, "2-session", disks)
    g.login()
    load_tor_profile(r, g)
    fresh = start_onion_service(g)
    r.check("without the volume, tor makes a new onion address", fresh != amnesic, fresh)
    rc, _ = converse(g, f"{KS} unlock", [(PASS_PROMPT, passphrase)])
    r.equal("unlock", rc, 0)
    r.equal("the onion address survived the amnesic reboot", onion_address(g), amnesic)
    r.equal("tor runs confined on the persistent state",
            g.out("sudo cat /proc/$(systemctl show -p MainPID --value tor@default)/attr/current"),
            "system_tor (enforce)")
    # Denials of the confined tor (at boot, systemd's change_onexec to system_tor, not loaded
    # yet, is logged too: it is not one).
    denials = g.out("sudo journalctl -b -k --no-pager -o cat | grep 'apparmor=\"DENIED\"' | grep 'profile=\"system_tor\"' || true")
    r.check("no AppArmor denial of the confined tor in this boot", denials == "", denials)
    rc, _ = g.run(f"{KS} lock")
    r.equal("lock", rc, 0)
    r.equal("tor is back on the amnesic state", onion_address(g), fresh)
    teardown_is_complete(r, g, "after lock")
    g.poweroff()

    # -- The disks ----------------------------------------------------------------------
    key = livevm.volume_key(stick, 2, passphrase, work)
    r.check("the volume key was read from the header on the host", len(key) == 128, key)
    needles = [("the passphrase", passphrase.encode()), ("the archive passphrase", archive_pass.encode()),
               ("the canary", canary.encode()), ("the volume key", bytes.fromhex(key)),
               ("the onion secret key", bytes.fromhex(secret))]
    for name, disk in disks:
        for what, needle in needles:
            n = livevm.count_hits(disk, needle)
            r.check(f"{what}: {n} hit(s) in {name}", n == 0)


if __name__ == "__main__":
    livevm.main(scenario)
