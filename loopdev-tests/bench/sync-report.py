#!/usr/bin/env python3
"""Turns the measurements of loopdev-tests/bench/sync into docs/sync-benchmarks.md.

    sync-report.py OUT_FILE FACTS_FILE MARKDOWN KEY=VALUE...

OUT_FILE holds the guest's KS-OUT lines: sample=CONTENDER KIND ROUND MS WRITTEN READ (KIND:
first, inc after the random change, clus after the clustered one), part=NAME KIND ROUND MS
[WRITTEN], did=KIND ROUND TEXT (what keepsake's sync did besides copying),
verify=CONTENDER ROUND KIND DIFFERING XATTR LINKS FACTS, failed=CONTENDER KIND ROUND RC, and
single facts (machine, versions, restic_kdf).
FACTS_FILE is what sync-tree.py printed; the KEY=VALUE arguments describe the run.
"""
import os, statistics, subprocess, sys
from collections import defaultdict

out_path, facts_path, md_path = sys.argv[1:4]
run = dict(a.split("=", 1) for a in sys.argv[4:])
facts = dict(l.strip().split("=", 1) for l in open(facts_path) if "=" in l)
rounds = int(run["rounds"])
# The commit the measured keepsake was built from, if the tree is a git checkout.
commit = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(md_path)), "log", "-1", "--format=%h"],
                        capture_output=True, text=True).stdout.strip()

samples = defaultdict(list)    # (contender, kind) -> [(round, ms, written, read)]
parts = defaultdict(list)      # (name, kind) -> [(ms, bytes or None)]
verify = defaultdict(list)     # contender -> [(round, kind, differing, xattr, links, facts)]
did = defaultdict(list)        # kind -> [(round, text)]
blocks = defaultdict(dict)     # (contender, kind) -> {class: 4 KiB blocks written}
failed, single = [], {}
for line in open(out_path):
    key, _, value = line.strip().partition("=")
    f = value.split()
    if key == "sample":
        samples[(f[0], f[1])].append((int(f[2]), int(f[3]), int(f[4]), int(f[5])))
    elif key == "part" and len(f) >= 4 and all(x.isdigit() for x in f[2:]):
        parts[(f[0], f[1])].append((int(f[3]), int(f[4]) if len(f) > 4 else None))
    elif key == "verify":
        verify[f[0]].append((int(f[1]), f[2], *(int(x) for x in f[3:7])))
    elif key == "blocks" and len(f) >= 4:
        blocks[(f[0], f[1])][value.split(None, 3)[3]] = int(f[2])
    elif key == "did":
        did[f[0]].append((int(f[1]), value.split(None, 2)[2] if len(f) > 2 else "nothing"))
    elif key == "failed":
        failed.append(value)
    else:
        single[key] = value

MiB = 1 << 20
stick = run.get("stick", "1G")
stick_text = {"G": f"{stick[:-1]} GiB", "M": f"{stick[:-1]} MiB"}.get(stick[-1:], stick)
NAMES = {
    "keepsake-sync": "`keepsake backup --to-device`",
    "rsync": "`rsync -aHAX --delete`",
    "rsync-staged": "`rsync -aHAX --delete --delay-updates`",
    "keepsake-archive": "`keepsake backup FILE`" + (" / `--since`" if run["ksarch_mode"] == "since" else " (full, twice)"),
    "restic": "`restic backup`",
    "tar-age": "`tar \\| age -r`",
}
BASELINE = {"keepsake-sync": "rsync", "rsync": "rsync", "rsync-staged": "rsync", "keepsake-archive": "tar-age", "restic": "tar-age", "tar-age": "tar-age"}
ORDER = ["keepsake-sync", "rsync", "rsync-staged", "keepsake-archive", "restic", "tar-age"]
contenders = [c for c in ORDER if (c, "first") in samples or (c, "inc") in samples]


def med(c, kind, field):
    values = [s[field] for s in samples.get((c, kind), [])]
    return statistics.median(values) if values else None


def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "–"


PATTERNS = (("inc", "", "incremental, random"), ("clus", "clus_", "incremental, clustered"))
new_bytes = {kind: statistics.median(int(facts[f"{prefix}new_bytes.{r}"]) for r in range(1, rounds + 1))
             for kind, prefix, _ in PATTERNS}
rows = ["| contender | backup | time (median) | ÷ baseline | written to the stick | ÷ baseline | ÷ changed bytes | read from the source | each round: s, MiB written |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|"]
for c in contenders:
    base = BASELINE[c]
    for kind, label in (("first", "first"),) + tuple((k, label) for k, _, label in PATTERNS):
        if (c, kind) not in samples:
            rows.append(f"| {NAMES[c]} | {label} | failed | | | | | | |")
            continue
        t, w, rd = med(c, kind, 1), med(c, kind, 2), med(c, kind, 3)
        each = ", ".join(f"{s[1] / 1000:.1f} s {s[2] / MiB:.1f}" for s in sorted(samples[(c, kind)]))
        changed = ratio(w, new_bytes[kind]) if kind in new_bytes else ""
        rows.append(f"| {NAMES[c] if kind == 'first' else ''} | {label} | {t / 1000:.1f} s | {ratio(t, med(base, kind, 1))} "
                    f"| {w / MiB:.1f} MiB | {ratio(w, med(base, kind, 2))} | {changed} | {rd / MiB:.1f} MiB | {each} |")


def goal(text, value, ok):
    if value is None:
        return f"| {text} | not measured | – |"
    return f"| {text} | {value} | {'**met**' if ok else '**not met**'} |"


tar_first = med("tar-age", "first", 1)
goals = ["| goal (issue 26) | measured (medians) | |", "|---|---|---|"]
for kind, _, label in PATTERNS:
    ks_inc_t, rs_inc_t = med("keepsake-sync", kind, 1), med("rsync", kind, 1)
    ks_inc_w, rs_inc_w = med("keepsake-sync", kind, 2), med("rsync", kind, 2)
    goals += [goal(f"incremental sync at or below rsync's time ({label.split(', ')[1]} change)",
                   f"keepsake {ks_inc_t / 1000:.1f} s, rsync {rs_inc_t / 1000:.1f} s: {ks_inc_t / rs_inc_t:.2f}×" if ks_inc_t and rs_inc_t else None,
                   ks_inc_t is not None and rs_inc_t is not None and ks_inc_t <= rs_inc_t),
              goal(f"incremental sync within 1.1× of the changed bytes, as a file-level copy writes them: rsync's ({label.split(', ')[1]} change)",
                   f"keepsake {ks_inc_w / MiB:.2f} MiB, rsync {rs_inc_w / MiB:.2f} MiB: {ks_inc_w / rs_inc_w:.2f}×"
                   if ks_inc_w is not None and rs_inc_w else None,
                   ks_inc_w is not None and rs_inc_w is not None and ks_inc_w <= 1.1 * rs_inc_w),
              f"| the same against the new contents alone ({label.split(', ')[1]} change) | "
              + (f"{ks_inc_w / MiB:.2f} MiB written for {new_bytes[kind] / MiB:.2f} MiB of new contents: {ks_inc_w / new_bytes[kind]:.2f}× (rsync: {rs_inc_w / new_bytes[kind]:.2f}×) |"
                 if ks_inc_w is not None and rs_inc_w is not None else "not measured |")
              + " no file-level copy reaches 1.1× here: every file costs whole blocks, an inode and a folder entry, journaled |"]
    st_w = med("rsync-staged", kind, 2)
    if ks_inc_w is not None and st_w:
        goals.append(f"| the same against rsync staging as keepsake does, every update beside its target first and all renamed at the end (`--delay-updates`; {label.split(', ')[1]} change) | "
                     f"keepsake {ks_inc_w / MiB:.2f} MiB, rsync --delay-updates {st_w / MiB:.2f} MiB: {ks_inc_w / st_w:.2f}× | – |")
t = med("keepsake-archive", "first", 1)
goals.append(goal("first backup (`keepsake backup FILE`) still ≥ 2× as fast as tar \\| age",
                  f"{tar_first / t:.2f}× ({t / 1000:.1f} s against {tar_first / 1000:.1f} s)" if t and tar_first else None,
                  t is not None and tar_first is not None and tar_first / t >= 2))
t, r = med("keepsake-sync", "first", 1), med("rsync", "first", 1)
if t and r:
    goals.append(f"| first sync to a second stick, against rsync (making the volume included in both) | "
                 f"{t / 1000:.1f} s against {r / 1000:.1f} s: {t / r:.2f}× | – |")

checks = ["| contender | backups checked | facts compared | differing facts: all, of xattrs and ACLs, of hard links (each round, random and clustered) |", "|---|---:|---:|---|"]
for c in contenders:
    v = verify.get(c, [])
    if not v:
        checks.append(f"| {NAMES[c]} | 0 | | not checked |")
        continue
    diffs = "; ".join(f"round {r} {kind}: " + ("none" if d == 0 else f"{d}, {x}, {l}") for r, kind, d, x, l, _ in v)
    checks.append(f"| {NAMES[c]} | {len(v)} | {v[0][5]} | {diffs} |")

def part(name, kind, field):
    values = [p[field] for p in parts.get((name, kind), []) if p[field] is not None]
    return statistics.median(values) if values else 0


rsync_alone = [part("rsync-alone", k, 0) / 1000 for k in ("first", "inc", "clus")]
staged_alone = [part("rsync-staged-alone", k, 0) / 1000 for k in ("first", "inc", "clus")]
rsync_create = (part("rsync-create", "first", 0) / 1000, part("rsync-create", "first", 1) / MiB)
restic_open = med("restic", "open", 1)
kdf = single.get("restic_kdf", "").split()
restic_cost = ", ".join(kdf) if kdf else "not read"
if kdf:
    n = dict(x.split(":") for x in kdf)
    restic_cost = f"N = {n['N']}, r = {n['r']}, p = {n['p']} ({int(n['N']) * int(n['r']) * 128 / MiB:.0f} MiB)"


def changes_text(prefix):
    keys = ("changed", "added", "deleted", "meta")
    if len({tuple(facts[f"{prefix}{k}.{r}"] for k in keys) for r in range(1, rounds + 1)}) == 1:
        return (f"{facts[f'{prefix}changed.1']} files changed, {facts[f'{prefix}added.1']} added, {facts[f'{prefix}deleted.1']} deleted and "
                f"{facts[f'{prefix}meta.1']} changed in metadata only, in each round; "
                + ", ".join(f"{int(facts[f'{prefix}new_bytes.{r}']) / 1024:.0f}" for r in range(1, rounds + 1)) + " KiB of new contents")
    return "; ".join(f"{facts[f'{prefix}changed.{r}']} changed, {facts[f'{prefix}added.{r}']} added, {facts[f'{prefix}deleted.{r}']} deleted, "
                     f"{facts[f'{prefix}meta.{r}']} metadata only; {int(facts[f'{prefix}new_bytes.{r}']) / 1024:.0f} KiB of new contents"
                     for r in range(1, rounds + 1))
failures = "\n".join(f"- failed: {f}" for f in failed) or "- none"
versions = single.get("versions", "").split()
tools = (f"rsync {versions[0]}, restic {versions[1]}, age {versions[2]}, GNU tar {versions[3]}, cryptsetup {versions[4]}"
         if len(versions) >= 5 else single.get("versions", "?"))

copied = "; ".join(
    f"{label}: {part('keepsake-sync-copied', k, 0):.0f} files, "
    f"{part('keepsake-sync-copied', k, 1) / MiB:.2f} MiB (medians)" for k, label in (("first", "first"), ("inc", "after the random change"), ("clus", "after the clustered one")))
besides = "; ".join(f"after the {label.split(', ')[1]} change, " + "; ".join(f"round {r}: {t}" for r, t in sorted(did[k]))
                    for k, _, label in PATTERNS if did.get(k))
DESCRIBE = {
    "keepsake-sync": f"""- **keepsake sync**: `keepsake --json backup --to-device DISK --create --yes --key-file F
  $KS_KDF` first, onto a second stick laid out as a live stick (GPT, a 64 MiB system
  partition, free space), where it adds the persistence partition and makes the volume,
  then `keepsake --json backup --to-device DISK --key-file F`; the source volume stays
  unlocked by keepsake. Its report said it copied {copied}. Besides copying (into its work
  folder, renamed into place once its plan was committed), it did this: {besides or 'nothing else'}.""",
    "rsync": f"""- **rsync**: `rsync -aHAX --delete SRC/ DST/` from the unlocked volume to a bare LUKS2 volume
  opened and mounted by hand, on the same kind of stick: the first time `sfdisk --append` (a
  TailsData partition) + `cryptsetup luksFormat` + `open` + `mkfs.ext4` + `mount` + rsync +
  `umount` + `close`, then `open` +
  `mount` + rsync + `umount` + `close` (the volume kind keepsake makes: LUKS2,
  aes-xts-plain64, ext4 labelled TailsData; mkfs.ext4's defaults, as keepsake's).
  Medians: rsync alone took
  {rsync_alone[0]:.1f} s of the first and {rsync_alone[1]:.1f} s and {rsync_alone[2]:.1f} s of the incremental ones (random, clustered); making the volume (sfdisk +
  luksFormat + open + mkfs.ext4) took {rsync_create[0]:.1f} s and wrote {rsync_create[1]:.1f} MiB of the first.""",
    "rsync-staged": f"""- **rsync staged**: the same as rsync, onto a stick of its own, with `--delay-updates`: rsync
  writes each update into a `.~tmp~` folder beside its target and renames them all into
  place at the end, the order of keepsake's staging and commit (a plain rsync writes and
  renames one file after the other, so that it can reuse, for the next file, the inode the
  last one freed). rsync alone took {staged_alone[0]:.1f} s of the first and {staged_alone[1]:.1f} s and {staged_alone[2]:.1f} s of the incremental ones.""",
    "keepsake-archive": f"""- **keepsake archive**: `keepsake backup FILE --key-file F --archive-kdf-memory 8192
  --archive-kdf-iterations 1`, then {'`keepsake backup FILE2 --since FILE --key-file F` and `keepsake backup FILE3 --since FILE2 --key-file F`' if run['ksarch_mode'] == 'since' else 'the same again into other files (this keepsake has no `--since` yet: its "incremental" ones are full archives)'},
  onto a plain ext4 stick. The guest has one CPU, so keepsake seals the archive on one thread.""",
    "restic": """- **restic**: `restic --no-cache backup SRC` into a repository on a plain ext4 stick, made
  by `restic init` (not timed) at the start of each round; restic finds the parent snapshot
  itself. No cache: a live system's would be in RAM and gone at the next boot.""",
    "tar-age": """- **tar | age**: `tar --xattrs --acls -C SRC -cf - . | age -r RECIPIENT > FILE` onto a plain
  ext4 stick, a full archive each time (the incremental ones beside the first).""",
}
described = [DESCRIBE[c] for c in contenders]
left_out = [c for c in ORDER if c not in contenders]
if left_out:
    why = {c: "left out by --only" for c in left_out}
    if "keepsake-sync" in why and run.get("has_sync") == "0":
        why["keepsake-sync"] = "this keepsake has no `backup --to-device` yet"
    described.append("- Not in this run: " + "; ".join(f"{c} ({why[c]})" for c in left_out) + ".")
restic_text = (f" restic's key is scrypt with the cost `restic init` calibrates on the machine it runs on "
               f"(restic has no option for it): here {restic_cost}; opening the repository alone (`restic cat "
               f"config`) took {(restic_open or 0) / 1000:.1f} s (median), paid by each restic backup."
               if "restic" in contenders else "")
CLASSES = ["files", "folders", "journal", "inode tables", "inode bitmaps", "block bitmaps",
           "superblock, group descriptors", "free now"]
block_rows = []
if blocks:
    block_rows = ["| contender | backup | " + " | ".join(CLASSES) + " | all |", "|---|---|" + "---:|" * (len(CLASSES) + 1)]
    for c in contenders:
        for kind, _, label in PATTERNS:
            b = blocks.get((c, kind))
            if b:
                block_rows.append(f"| {NAMES[c]} | {label} | " + " | ".join(str(b.get(k, 0)) for k in CLASSES) + f" | {b.get('all', 0)} |")
block_text = ("" if not block_rows else f"""
## Which blocks the syncs wrote (round 1)

The kernel's block layer traced while each sync's incremental backups of round 1 ran
(`block_bio_queue` on the device-mapper devices, the backup's plaintext), and each 4 KiB
block written then named from the volume itself, opened read-only (`debugfs icheck` and
the group layout): a file's data, a folder's, the journal's (each changed metadata block
is written twice under ext4's ordered journal: into the journal, then in place), an inode
table's, a bitmap's, the superblock's and group descriptors'; "free now" is a block
written and freed before the end (a work file's, a plan's). The tracing runs during these
backups, so their times in round 1 include its cost; the other rounds are not traced.

{chr(10).join(block_rows)}
""")
cluster = facts.get("clus_parent", "?")
clus_folders = "; ".join(f"round {r}: {facts[f'clus_folders.{r}'].replace(',', ', ')}" for r in range(1, rounds + 1))
clus_share = (f"{statistics.median(int(facts[f'clus_files.{r}']) for r in range(1, rounds + 1)):.0f} of the "
              f"{statistics.median(int(facts[f'clus_files.{r}']) + int(facts[f'clus_files_elsewhere.{r}']) for r in range(1, rounds + 1)):.0f} files")
notes = []
if "keepsake-sync" in contenders:
    notes.append(f"""Why the size of the backup stick matters to the sync's bytes. ext4 groups its block groups
16 at a time (flex_bg): on a volume under 2 GiB they are all one flex group, and every new
inode takes the lowest free number in it. keepsake stages each changed file as a new inode
in `.keepsake-sync` before its commit frees the old one, so on such a volume the staged
inodes fill the holes the last backup's commit left, wherever in the inode table those
were, and each one dirties a 4 KiB inode-table block of its own (then journaled, so twice).
On a larger volume ext4 gives a new top-level folder such as `.keepsake-sync` the flex
group with the fewest folders, away from the tree, where the staged inodes sit side by side
in a few blocks. Measured on 2026-12-07 (`--blocks`, one round): with 1 GiB sticks the
clustered change cost keepsake 31 inode-table blocks against rsync's 16 (and the journal 44
against 27), 0.65 MiB against 0.52 MiB (1.26×); with 8 GiB sticks 11 against 16, 0.51 MiB
against 0.52 MiB (0.98×). The files' own blocks were the same (75) each time. rsync with
`--delay-updates`, which stages like keepsake, wrote 0.72 MiB on the 1 GiB stick (42
inode-table blocks). This run's sticks: {stick_text}.""")
if "keepsake-archive" in contenders and run["ksarch_mode"] == "full":
    notes.append("This keepsake's archive (format 1) keeps no extended attributes, no ACLs and no hard "
                 "links (each becomes a file of its own): `keepsake backup --help` says so, and the "
                 "differing facts above are those.")

text = f"""# Backup to a second stick: side by side

Generated by loopdev-tests/bench/sync; do not edit by hand (`loopdev-tests/bench/sync {rounds}{' --blocks' if blocks else ''}`,
scale {run['scale']}, verify: {run['verify']}; {run['keepsake']}{f', built at commit {commit}' if commit else ''}; the whole run took {int(run['elapsed']) // 60} min {int(run['elapsed']) % 60} s).
The backups of issue 26, measured on the commands themselves in one boot of the test VM: real
dm-crypt and ext4 on virtual sticks, the source being a volume keepsake made and unlocked.
Medians of {rounds} rounds; in each round every contender makes a first backup of the same
tree; then 1 % of the files change at random, and every contender makes an incremental
backup; then 1 % of the files change within one sub-folder of Persistent, and every
contender makes another. The contenders' order rotates from round to round, and the host
is shared with other work: single rounds vary, the ratios of medians less.

- Host: {run['host']}
- VM: qemu TCG (no KVM), -m {run['mem']}; the guest sees {single.get('machine', '?')}.
  Each stick is a virtio disk backed by a sparse file on the host: the syncs' backup sticks
  of {stick_text} (Tails asks for 8 GB at least), the source's and the archives' of 1 GiB.
  Tools: {tools}, copied from the host (Debian 12 packages) into the guest.
- **Time** is wall time from cold caches (`sync` and `drop_caches` first) to the end of the
  command and a `sync` after it, so that what the command wrote is on the stick.
- **Written** is the difference in sectors written (× 512 bytes) in `/sys/block/<disk>/stat`
  of the backup stick's whole disk, before and after (after the `sync`): data, metadata,
  journal and LUKS headers alike. **Read** is the same for the source stick's sectors read.
- **Between the first backups and the incremental ones**, untimed, each sync's volume is
  left to finish ext4's lazy zeroing of its inode tables: mkfs.ext4 leaves that to the
  kernel by default, for keepsake's volumes and rsync's alike, and the kernel does it in the
  background whenever the volume is mounted, after a random delay of up to 5 s, 2 MiB a
  block group. Left to itself, it landed inside some incremental backups and not others
  (a first run on 8 GiB sticks: rsync's random change "wrote" 2.9 MiB, 541 inode-table
  blocks, for keepsake's 0.9 MiB). The first backups include whatever of it ran meanwhile.
- The source tree ({int(facts['files'])} files, {int(facts['bytes']) / MiB:.0f} MiB, {facts['folders']} folders, generated
  deterministically by bench/sync-tree.py at scale {run['scale']}): {facts['shape']}. Owners 1000 and 0; {facts['hardlinks']} hard links, {facts['symlinks']} symlinks (one absolute,
  some dangling after deletions), {facts['xattrs']} user xattrs, {facts['acls']} access ACLs, names with
  spaces and accents, an empty folder and an empty file. All times are whole seconds.
- The random change, between the first and the first incremental backup: {changes_text("")}.
  "Changed" files (1 % of them, at random, never a hard-linked one) get new contents of
  about the same size (± 256 bytes) and a new mtime, written by GNU tar (a new inode, as
  an editor's save); the added ones are 3 files in an existing folder and a new folder with
  2; the metadata-only changes are one chmod, one chown and one new xattr.
- The clustered change, between the first and the second incremental backup: the same
  kinds of change, {changes_text("clus_")}, all within `{cluster}` ({clus_share} of the
  tree): changed, deleted and metadata-only files among those of three of its sibling folders
  chosen at random ({clus_folders}), the 3 added files in the first of them, the new folder
  with 2 in the second. Replacing, adding or removing a file changes the mtime of its
  folder, so the lowest folder holding every change is `{cluster}` itself.
- **Changed bytes** are the sizes of the new contents ({new_bytes['inc'] / MiB:.2f} MiB random,
  {new_bytes['clus'] / MiB:.2f} MiB clustered, medians): what a file-level copy must write at
  least, before metadata.

## The contenders

{chr(10).join(described)}

Key derivation is kept small wherever it can be set, so that what is compared is the
backup: keepsake's volumes (the source and the sync's backup) and rsync's bare volume use
argon2id with 8 MiB, 4 iterations, 1 thread; keepsake's archive argon2id with 8 MiB and 1
iteration.{restic_text} age encrypts to an X25519 recipient: no key derivation at all.

## Results

Ratios are against the baseline of the contender's kind: rsync for the syncs to a second
volume, `tar | age` for the archives and restic. "÷ changed bytes" divides the bytes an
incremental backup wrote by the changed bytes above.

{chr(10).join(rows)}

## The goals of issue 26

{chr(10).join(goals)}

The issue's third goal, the small-file tree at 2× `tar | age`, is about the archive engine
alone on tmpfs: docs/backup-benchmarks.md measures it.

{block_text}
## Are the backups right?

After each incremental backup (in the rounds "verify" names), the backup is read back and
compared with the source, fact by fact: every name with its type, owner, mode, size, mtime
(seconds), link target and hard-link group, every file's content (BLAKE2b), and every
extended attribute, the POSIX ACLs included (`getfattr -d -m -`). rsync's and keepsake's
sync volumes are opened read-only and mounted; restic's snapshot is restored with `restic
restore latest`, the tar archive extracted with `age -d | tar --xattrs --xattrs-include='*'
--acls -x`, both onto a scratch disk; keepsake's archive is restored by `keepsake restore`
into a fresh keepsake volume (the source is locked meanwhile and unlocked again after).
A differing fact is one line of the manifest that only one side has.

{chr(10).join(checks)}

{chr(10).join(notes)}

Failures during the run:
{failures}
"""
open(md_path, "w").write(text)
print(text)
