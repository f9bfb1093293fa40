#!/usr/bin/env python3
"""live-boot's own boot-time unlock of a keepsake volume, on the Debian live system.

Session 1 (no persistence): the live user makes a live-boot volume on the stick the system
booted from, with `sudo keepsake`, as the README says, enables features (binds, a nested
bind, a union, dotfile links) and writes into them, and a container file named
`persistence` on a second stick; a union live-boot would stop the boot on is refused.
Session 2 (`persistence persistence-encryption=none,luks`, as the README says for container
files): live-boot's initramfs asks for each passphrase on the console and activates the
features before login; keepsake adopts both volumes, changes their features, and `lock`
takes them away completely.
Session 3 (no persistence): nothing of session 2 remains.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import livevm  # noqa: E402
from livevm import Guest, converse  # noqa: E402

KS = "sudo keepsake --layout live-boot"
KDF = "--pbkdf-memory 8192 --pbkdf-force-iterations 4"  # small costs: TCG
PASS_PROMPT = r"[Pp]assphrase[^\n]*: $"
HOME = "/home/user"


def teardown_is_complete(r, g, what):
    """After lock: no mapping, no mount of the volume, no loop device, and systemd's view
    agrees."""
    r.equal(f"{what}: no device-mapper device", g.out("sudo dmsetup ls"), "No devices found")
    mounts = g.out("findmnt -rn -o TARGET,SOURCE | grep -E 'persistence|mapper|/srv/|/opt|Persistent' || true")
    r.equal(f"{what}: nothing of the volume is mounted", mounts, "")
    r.equal(f"{what}: no loop device", g.out("sudo losetup -a | grep -v filesystem.squashfs || true"), "")
    units = g.out("systemctl list-units --all --type=mount --plain --no-legend | grep -E 'persistence|srv|opt|Persistent' || true")
    r.equal(f"{what}: systemd knows no mount of it", units, "")


def scenario(r, work, image):
    passphrase = "live boot " + livevm.random_word()
    canary = "canary-" + livevm.random_word()
    www = "www-" + livevm.random_word()
    stick = livevm.live_stick(f"{work}/stick.img", image, 320)
    data = livevm.blank_disk(f"{work}/data.img", 96, "label: dos\nstart=2048, type=83\n")
    host = livevm.blank_disk(f"{work}/hostdisk.img", 64)
    disks = [("stick", stick), ("data", data), ("hostdisk", host)]

    # -- 1. An amnesic session makes the volume --------------------------------------
    r.say("session 1: the live user makes a live-boot volume with sudo keepsake")
    g = Guest(image, work, "1-make", disks)
    r.say(f"logged in {g.login():.0f} s after power-on")
    rc, text = converse(g, f"{KS} create --device /dev/vda {KDF}",
                        [(r"Type yes to go on: $", "yes"), (PASS_PROMPT, passphrase),
                         (PASS_PROMPT, passphrase)])
    r.equal("create --device /dev/vda (asks to confirm, then the passphrase twice)", rc, 0)
    rc, text = converse(g, f"{KS} unlock", [(PASS_PROMPT, passphrase)])
    r.equal("unlock without --device finds it", rc, 0)
    vol = "/run/live/persistence/vda2"
    for cmd in ("feature enable persistent", "feature enable dotfiles", "feature add www --dest /srv/www",
                "feature add uploads --dest /srv/www/uploads", "feature add optional --dest /opt --union"):
        rc, text = g.run(f"{KS} {cmd}")
        r.check(cmd, rc == 0, text.strip())
    conf_before = g.out(f"sudo sha256sum {vol}/persistence.conf")
    rc, text = g.run(f"{KS} feature add srvdata --dest /srv/data --union")
    r.check("a union on a folder the image lacks is refused (live-boot would stop the boot): exit 9",
            rc == 9 and "live-boot stops the boot" in text, f"exit {rc}: {text.strip()}")
    r.equal("and persistence.conf is unchanged", g.out(f"sudo sha256sum {vol}/persistence.conf"), conf_before)
    g.out(f"echo {canary} > {HOME}/Persistent/note.txt")
    g.out(f"echo {www} | sudo tee /srv/www/index.html >/dev/null")
    g.out("echo an upload | sudo tee /srv/www/uploads/u.txt >/dev/null")
    g.out("echo kept | sudo tee /opt/from-session >/dev/null")
    g.out(f"echo \"alias ll='ls -l'\" | sudo tee {vol}/dotfiles/.bash_aliases >/dev/null && sudo chown 1000:1000 {vol}/dotfiles/.bash_aliases")
    conf = g.out(f"sudo cat {vol}/persistence.conf")
    r.say("persistence.conf: " + " | ".join(conf.splitlines()))
    rc, text = g.run(f"{KS} lock")
    r.equal("lock", rc, 0)
    teardown_is_complete(r, g, "after lock in session 1")
    # A container file named persistence, on a second stick's ext4 partition root mounted.
    g.out("sudo mkfs.ext4 -q -L data /dev/vdb1 && sudo mount /dev/vdb1 /mnt")
    rc, _ = converse(g, f"{KS} create --image /mnt/persistence --size 48M {KDF}",
                     [(PASS_PROMPT, passphrase), (PASS_PROMPT, passphrase)])
    r.equal("create a container file named persistence", rc, 0)
    rc, _ = converse(g, f"{KS} unlock --image /mnt/persistence", [(PASS_PROMPT, passphrase)])
    r.equal("unlock it", rc, 0)
    rc, text = g.run(f"{KS} feature add notes --dest /srv/notes")
    r.equal("feature add notes", rc, 0)
    g.out("echo a note in a file | sudo tee /srv/notes/n.txt >/dev/null")
    rc, text = g.run(f"{KS} lock")
    r.equal("lock it", rc, 0)
    g.out("sudo umount /mnt")
    teardown_is_complete(r, g, "after locking the container")
    g.poweroff()

    # -- 2. live-boot unlocks them at boot --------------------------------------------
    r.say("session 2: boot with persistence persistence-encryption=none,luks")
    g = Guest(image, work, "2-boot-unlock", disks, args="persistence persistence-encryption=none,luks")
    asked = []
    for _ in range(2):
        asked.append(g.expect(r"Please unlock disk (/dev/[a-z0-9]+): $", 600).group(1))
        g.type(passphrase + "\r")
    r.check(f"live-boot asks on the console for the partition and the container file ({', '.join(asked)})",
            "/dev/vda2" in asked and any(a.startswith("/dev/loop") for a in asked))
    r.say(f"logged in {g.login():.0f} s after power-on")
    # Before any keepsake command: what live-boot activated.
    r.equal("the Persistent folder is there at login (read as the live user)",
            g.out(f"cat {HOME}/Persistent/note.txt"), canary)
    r.equal("bind: /srv/www", g.out("cat /srv/www/index.html"), www)
    r.equal("nested bind: /srv/www/uploads", g.out("cat /srv/www/uploads/u.txt"), "an upload")
    r.equal("union: /opt is an overlay", g.out("findmnt -n -o FSTYPE /opt"), "overlay")
    r.equal("union: what the session wrote was kept", g.out("cat /opt/from-session"), "kept")
    r.equal("link: the dotfile", g.out(f"readlink {HOME}/.bash_aliases"), f"{vol}/dotfiles/.bash_aliases")
    r.equal("the container file's bind: /srv/notes", g.out("cat /srv/notes/n.txt"), "a note in a file")
    rc, text = g.run(f"{KS} --json status")
    r.equal("status", rc, 0)
    r.check("status shows the volumes live-boot opened at boot", '"opened_at_boot": true' in text
            and '"unlocked": true' in text, text[-400:])
    rc, text = g.run(f"{KS} lock --device /dev/vdb")
    r.equal("lock --device the second stick: the container file only", rc, 0)
    r.equal("/srv/notes is no longer mounted", g.run("findmnt /srv/notes")[0], 1)
    r.equal("nor the partition live-boot mounted to reach the container file",
            g.out("findmnt -rn -o TARGET /dev/vdb1 || true"), "")
    r.equal("and its loop device is detached", g.out("sudo losetup -a | grep -c /persistence || true"), "0")
    r.equal("the partition's features are still there", g.out("cat /srv/www/index.html"), www)
    rc, text = g.run(f"{KS} --json status")
    active = [f["name"] for f in livevm.json_of(text).get("features", []) if f.get("active")] if rc == 0 else []
    r.check("status: its features active", {"persistent", "www", "uploads", "optional"} <= set(active), str(active))
    rc, text = g.run(f"{KS} feature disable www")
    r.check("feature disable www, with uploads mounted inside it, is refused naming it (exit 5)",
            rc == 5 and "/srv/www/uploads mounted inside" in text, f"exit {rc}: {text.strip()}")
    rc, text = g.run(f"{KS} feature disable uploads www")
    r.equal("feature disable uploads www", rc, 0)
    r.equal("/srv/www is no longer mounted", g.run("findmnt /srv/www")[0], 1)
    rc, text = g.run(f"{KS} feature enable www uploads")
    r.equal("feature enable www uploads", rc, 0)
    r.equal("/srv/www is back", g.out("cat /srv/www/index.html"), www)
    r.equal("/srv/www/uploads is back", g.out("cat /srv/www/uploads/u.txt"), "an upload")
    r.equal("and not mounted inside the volume's own folder",
            g.run("findmnt /run/live/persistence/vda2/www/uploads")[0], 1)
    g.out(f"echo amnesic > {HOME}/amnesic.txt")
    rc, text = g.run(f"{KS} lock")
    r.equal("lock the volume live-boot opened", rc, 0)
    teardown_is_complete(r, g, "after lock in session 2")
    r.equal("the Persistent folder no longer shows the note", g.run(f"test -e {HOME}/Persistent/note.txt")[0], 1)
    r.equal("no dotfile link is left", g.run(f"test -L {HOME}/.bash_aliases")[0], 1)
    g.poweroff()

    # -- 3. Without persistence, nothing of session 2 remains -------------------------
    r.say("session 3: boot without persistence")
    g = Guest(image, work, "3-amnesic", disks)
    g.login()
    for path in (f"{HOME}/amnesic.txt", f"{HOME}/Persistent/note.txt", "/srv/www/index.html",
                 "/opt/from-session", "/srv/notes/n.txt", f"{HOME}/.bash_aliases"):
        r.equal(f"{path} is gone", g.run(f"sudo test -e {path}")[0], 1)
    r.equal("no mapping", g.out("sudo dmsetup ls"), "No devices found")
    g.poweroff()

    # -- The disks: only ciphertext on the stick, nothing on the host disk --------------
    for name, disk in disks:
        for what, needle in (("the passphrase", passphrase), ("the note's canary", canary),
                             ("/srv/www's canary", www)):
            n = livevm.count_hits(disk, needle.encode())
            r.check(f"{what}: {n} hit(s) in {name}", n == 0)


if __name__ == "__main__":
    livevm.main(scenario)
