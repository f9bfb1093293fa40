#!/usr/bin/env python3
"""Tails' acceptance rules for a persistence.conf, as Tails' tps applies them (Tails 6.x,
tps/configuration/config_file.py and features.py; see /work/notes/tails-rules.md): the file's
owner, mode, ACL and type, each line through Tails' own parser (shlex.split with comments),
built-in lines byte-compatible with Tails' catalogue, no keepsake-only feature, and the order
Tails writes (sorted) or its catalogue order (Dotfiles last among the built-ins).

    tails_rules.py CONF --stat "UID:GID HEXMODE TYPE" --acl "ENTRY,..." [--features A,B]

CONF is the file's text as the guest printed it; --stat is `stat -c '%u:%g %f %F'` of it;
--acl is what lib/acl-dump.c printed (named entries make Tails refuse the file); --features
lists exactly the Tails features the file must enable. Prints one line per rule; exit 1 when
any is broken."""
import argparse
import shlex
import sys

# Tails' catalogue, in definition order (= activation order): id, [(dest, option set)].
CATALOGUE = [
    ("PersistentDirectory", [("/home/amnesia/Persistent", {"source=Persistent"})]),
    ("BrowserBookmarks", [("/home/amnesia/.mozilla/firefox/bookmarks", {"source=bookmarks"})]),
    ("WelcomeScreen", [("/var/lib/gdm3/settings/persistent", {"source=greeter-settings"})]),
    ("NetworkConnections", [("/etc/NetworkManager/system-connections", {"source=nm-system-connections"})]),
    ("TorConfiguration", [("/var/lib/tca", {"source=tca"})]),
    ("AdditionalSoftware", [("/var/cache/apt/archives", {"source=apt/cache"}),
                            ("/var/lib/apt/lists", {"source=apt/lists"})]),
    ("Printers", [("/etc/cups", {"source=cups-configuration"})]),
    ("Thunderbird", [("/home/amnesia/.thunderbird", {"source=thunderbird"})]),
    ("GnuPG", [("/home/amnesia/.gnupg", {"source=gnupg"})]),
    ("Electrum", [("/home/amnesia/.electrum", {"source=electrum"})]),
    ("Pidgin", [("/home/amnesia/.purple", {"source=pidgin"})]),
    ("SSHClient", [("/home/amnesia/.ssh", {"source=openssh-client"})]),
    ("Dotfiles", [("/home/amnesia", {"source=dotfiles", "link"})]),
]
# Features only keepsake has: to Tails they are custom lines, activated at boot.
KEEPSAKE_ONLY = {"/var/lib/tor": "tor-state"}

failed = False


def rule(ok, what):
    global failed
    print(("ok    " if ok else "FAIL  ") + what)
    failed |= not ok


def parse(text):
    """Tails' _parse_line: the lines it keeps, as (line, dest, options)."""
    kept = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            elements = shlex.split(line, comments=True)
        except ValueError as e:
            rule(False, f"line {n} {line!r}: shlex cannot split it ({e}); Tails ignores it")
            continue
        if not elements:
            continue
        if len(elements) != 2:
            rule(False, f"line {n} {line!r}: {len(elements)} fields, Tails needs 2 and ignores it")
            continue
        dest, options = elements[0], elements[1].split(",")
        bad = [o for o in options if not (o.startswith("source=") or o in ("link", "file"))]
        if bad:
            rule(False, f"line {n} {line!r}: option(s) {bad} make Tails ignore the line")
            continue
        if not any(o.startswith("source=") for o in options):
            rule(False, f"line {n} {line!r}: no source=, Tails ignores it")
            continue
        rule(True, f"line {n} parses as Tails parses it: {dest!r} {options}")
        kept.append((line, dest, set(options)))
    return kept


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("conf")
    ap.add_argument("--stat", required=True)
    ap.add_argument("--acl", default="")
    ap.add_argument("--features")
    a = ap.parse_args()

    owner, hexmode, ftype = a.stat.split(" ", 2)
    rule(owner == "115:122", f"owner {owner} is tails-persistent-storage (115:122)")
    rule(int(hexmode, 16) == 0o100600, f"mode {int(hexmode, 16):o} is exactly 100600")
    rule(ftype == "regular file", f"a {ftype}, not a symlink")
    named = [e for e in a.acl.split(",") if e and not e.startswith(("user::", "group::", "other::", "mask::"))]
    rule(not named and "mask::" not in a.acl, f"no extended ACL ({a.acl or 'none'})")

    with open(a.conf, encoding="utf-8") as f:
        text = f.read()
    lines = parse(text)

    builtin = {}
    for i, (fid, bindings) in enumerate(CATALOGUE):
        for dest, opts in bindings:
            builtin[dest] = (i, fid, opts)
    order = []
    enabled = set()
    for line, dest, opts in lines:
        if dest in KEEPSAKE_ONLY:
            rule(False, f"{line!r}: keepsake's {KEEPSAKE_ONLY[dest]} is a custom feature to Tails, bound at boot")
        if dest in builtin:
            i, fid, want = builtin[dest]
            rule(opts == want, f"{line!r} matches Tails' {fid} (options {sorted(want)})")
            order.append(i)
            enabled.add(fid)
        else:
            order.append(len(CATALOGUE))  # a custom feature: after the built-ins
    raw = [line for line, _, _ in lines]
    in_sorted = raw == sorted(set(raw))
    in_catalogue = order == sorted(order)
    rule(in_sorted or in_catalogue,
         "lines in the order Tails writes them (sorted)" if in_sorted
         else "lines in Tails' catalogue order, Dotfiles last" if in_catalogue
         else f"lines neither sorted as Tails writes them nor in its catalogue order: {raw}")
    if a.features is not None:
        want = set(f for f in a.features.split(",") if f)
        for fid, bindings in CATALOGUE:
            present = [d for d, _ in bindings if any(d == dest for _, dest, _ in lines)]
            if 0 < len(present) < len(bindings):
                rule(False, f"{fid}: only {present} of its lines; Tails counts it as disabled")
        rule(enabled == want, f"enabled Tails features {sorted(enabled)}, expected {sorted(want)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
