#!/usr/bin/env python3
"""Makes the source tree of loopdev-tests/bench/sync, deterministically, as tar streams the
guest unpacks with GNU tar (owners, modes, times, hard links, symlinks, user xattrs and
POSIX ACLs in PAX headers, so that nothing here needs root or touches the host's files).

    sync-tree.py SEED_TAR SCALE ROUNDS

SEED_TAR is one tar holding, for each round R, mut-R.tar (new and changed files) and
mut-R.sh (deletions and metadata-only changes, run at the volume root), then facts (KEY=VALUE
lines) and last tree.tar (the volume's first contents). SCALE multiplies the number of
files and folders (1: about 160 MiB in about 3000 files; 0.6, the default of bench/sync,
about 85 MiB in 1800 files).
"""
import io, os, random, shlex, sys, tarfile

seed_tar, scale, rounds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
rng = random.Random(26)
BASE = 1767225600  # 2026-01-01 00:00:00 UTC: every time is a whole second
WORDS = ("persistent storage tor bridge keyring onion guard volume backup stick amnesic "
         "session folder journal letter invoice report draft notes photo recipe meeting "
         "the of and to in is that for it with as was on be at by this had not are but").split()


def n(count):
    return max(1, round(count * scale))


def text(size):
    out, length = [], 0
    while length < size:
        w = rng.choice(WORDS)
        out.append(w)
        length += len(w) + 1
    return (" ".join(out) + "\n").encode()[:size]


def data(size, kind):
    return rng.randbytes(size) if kind == "bin" else text(size)


# The tree as a list of entries, in the order tar writes them (folders before their files).
# A file: dict(path, kind, size, uid, gid, mode, mtime, xattrs, acl, default_acl, link, hard).
entries, files = [], {}


def folder(path, uid=1000, gid=1000, mode=0o700, acl=None, default_acl=None):
    entries.append(dict(type="dir", path=path, uid=uid, gid=gid, mode=mode, mtime=BASE - rng.randrange(1 << 24),
                        acl=acl, default_acl=default_acl, xattrs={}))


def file(path, size, kind="bin", uid=1000, gid=1000, mode=0o600, xattrs=None, acl=None):
    e = dict(type="file", path=path, size=size, kind=kind, uid=uid, gid=gid, mode=mode,
             mtime=BASE - rng.randrange(1 << 24), xattrs=xattrs or {}, acl=acl, hardlinked=False)
    entries.append(e)
    files[path] = e


def symlink(path, target, uid=1000, gid=1000):
    entries.append(dict(type="link", path=path, target=target, uid=uid, gid=gid, mode=0o777,
                        mtime=BASE - rng.randrange(1 << 24), xattrs={}, acl=None))


def hardlink(path, target):
    files[target]["hardlinked"] = True
    entries.append(dict(type="hard", path=path, target=target))


MiB, KiB = 1 << 20, 1 << 10
SHARED_ACL = "user::rwx,user:0:r-x,group::r-x,mask::r-x,other::---"
FILE_ACL = "user::rw-,user:0:r--,group::r--,mask::r--,other::---"

# The Persistent folder: the live user's, with a few root-owned files, as on a real stick.
folder("Persistent")
folder("Persistent/Videos")
for i in range(n(2)):
    file(f"Persistent/Videos/video-{i:02}.mkv", 24 * MiB, xattrs={"user.xdg.origin.url": f"https://example.org/v/{i}"})
folder("Persistent/Photos")
for i in range(n(40)):
    file(f"Persistent/Photos/IMG_{1000 + i}.jpg", rng.randrange(512 * KiB, 1536 * KiB),
         xattrs={"user.xdg.origin.url": f"https://example.org/p/{i}"} if i % 3 == 0 else None)
folder("Persistent/Documents")
folder("Persistent/Documents/Année 2025")
file("Persistent/Documents/Année 2025/relevé de compte.pdf", 180 * KiB)
for p in range(n(40)):
    d = f"Persistent/Documents/project-{p:02}"
    folder(d)
    for i in range(50):
        kind = "text" if i % 2 else "bin"
        file(f"{d}/{'notes' if kind == 'text' else 'scan'}-{i:02}.{'txt' if kind == 'text' else 'png'}",
             rng.randrange(KiB, 24 * KiB), kind, mode=0o644 if i % 5 else 0o600,
             xattrs={"user.comment": f"project {p} item {i}"} if i % 17 == 0 else None)
    file(f"{d}/root-owned.log", 2 * KiB, "text", uid=0, gid=0, mode=0o644)
    symlink(f"{d}/latest", f"notes-{rng.randrange(25) * 2 + 1:02}.txt")
folder("Persistent/src")
for p in range(n(20)):
    d = f"Persistent/src/crate-{p:02}"
    folder(d, mode=0o755)
    for i in range(40):
        file(f"{d}/mod_{i:02}.rs", rng.randrange(200, 8 * KiB), "text", mode=0o644)
    file(f"{d}/build.sh", 600, "text", mode=0o755)
# Shared with root through ACLs (a default ACL on the folder, access ACLs on its files).
folder("Persistent/shared", mode=0o750, acl=SHARED_ACL, default_acl=SHARED_ACL)
for i in range(n(50)):
    file(f"Persistent/shared/share-{i:02}.txt", rng.randrange(KiB, 16 * KiB), "text", mode=0o640, acl=FILE_ACL)
folder("Persistent/empty")
file("Persistent/empty-file", 0)
symlink("Persistent/hostname", "/etc/hostname")
# Hard links: each in another folder than its first name.
for p in range(min(5, n(40))):
    hardlink(f"Persistent/src/same-as-project-{p:02}.txt", f"Persistent/Documents/project-{p:02}/notes-01.txt")

folder("gnupg")
file("gnupg/pubring.kbx", 64 * KiB)
file("gnupg/trustdb.gpg", 1200)
folder("gnupg/private-keys-v1.d")
for i in range(5):
    file(f"gnupg/private-keys-v1.d/{i:040X}.key", 900 + i)
folder("dotfiles")
file("dotfiles/.bashrc", 3 * KiB, "text", mode=0o644)
file("dotfiles/.vimrc", 900, "text", mode=0o644)
# System features: root's.
folder("nm-system-connections", uid=0, gid=0)
for i in range(10):
    file(f"nm-system-connections/wifi-{i}.nmconnection", 400 + 10 * i, "text", uid=0, gid=0)
folder("apt", uid=0, gid=0, mode=0o755)
folder("apt/cache", uid=0, gid=0, mode=0o755)
for i in range(n(4)):
    file(f"apt/cache/package-{i}_1.0_amd64.deb", 8 * MiB, uid=0, gid=0, mode=0o644)
folder("apt/lists", uid=0, gid=0, mode=0o755)
for i in range(n(20)):
    file(f"apt/lists/deb.debian.org_dists_{i}_Packages", 256 * KiB, "text", uid=0, gid=0, mode=0o644)


def add(tar, e, content=None):
    if e["type"] == "hard":
        t = tarfile.TarInfo(e["path"])
        t.type, t.linkname = tarfile.LNKTYPE, e["target"]
        tar.addfile(t)
        return
    t = tarfile.TarInfo(e["path"])
    t.uid, t.gid, t.mode, t.mtime = e["uid"], e["gid"], e["mode"], e["mtime"]
    t.uname = t.gname = ""
    pax = {f"SCHILY.xattr.{k}": v for k, v in e["xattrs"].items()}
    if e.get("acl"):
        pax["SCHILY.acl.access"] = e["acl"]
    if e.get("default_acl"):
        pax["SCHILY.acl.default"] = e["default_acl"]
    t.pax_headers = pax
    if e["type"] == "dir":
        t.type = tarfile.DIRTYPE
        tar.addfile(t)
    elif e["type"] == "link":
        t.type, t.linkname = tarfile.SYMTYPE, e["target"]
        tar.addfile(t)
    else:
        if content is None:
            content = data(e["size"], e["kind"])
        t.size = len(content)
        tar.addfile(t, io.BytesIO(content))


work = os.path.dirname(os.path.abspath(seed_tar))
def count(prefix, suffix=""):
    return sum(1 for p in files if p.startswith(prefix) and p.endswith(suffix))


shape = (f"videos of 24 MiB: {count('Persistent/Videos/')}; photos of 0.5 to 1.5 MiB: {count('Persistent/Photos/')}; "
         f"root's packages of 8 MiB and package lists of 256 KiB (in apt/): {count('apt/cache/')} and {count('apt/lists/')}; "
         f"documents of 1 to 24 KiB, half random bytes, half text, with a root-owned log in each folder: "
         f"{count('Persistent/Documents/project-')} in {n(40)} folders; source files of 0.2 to 8 KiB: "
         f"{count('Persistent/src/', '.rs')} in {n(20)} folders; files with ACLs in a folder with a default ACL: "
         f"{count('Persistent/shared/')}; GnuPG, dotfiles and root's network connections")
facts = [f"shape={shape}", f"files={len(files)}", f"bytes={sum(e['size'] for e in files.values())}",
         f"hardlinks={sum(1 for e in entries if e['type'] == 'hard')}",
         f"symlinks={sum(1 for e in entries if e['type'] == 'link')}",
         f"folders={sum(1 for e in entries if e['type'] == 'dir')}",
         f"xattrs={sum(len(e['xattrs']) for e in entries if e['type'] != 'hard')}",
         f"acls={sum(1 for e in entries if e.get('acl'))}"]
# The first contents, written before the rounds change the entries.
tree_path = os.path.join(work, "tree.tar")
with tarfile.open(tree_path, "w", format=tarfile.PAX_FORMAT) as tree:
    for e in entries:
        add(tree, e)
def change(seed, r, tag, names, mtime, added_in, new_folder, meta_anywhere):
    """One change of 1 % of the files, picked among `names` (never a hard-linked one): new
    contents (tar replaces them: a new inode, as an editor's save does), 3 files added in
    `added_in` and a new folder `new_folder` with 2, 4 deleted, and three changed in
    metadata only (picked among every file with `meta_anywhere`, else among `names`).
    Written to the seed as TAG-R.tar (new and changed files) and TAG-R.sh (deletions and
    metadata, run at the volume root); returns its facts."""
    changed = rng.sample(names, max(1, round(len(files) / 100)))
    deleted = rng.sample(sorted(set(names) - set(changed)), 4)
    buf, script, new_bytes = io.BytesIO(), ["set -e"], 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as mut:
        for p in changed:
            e = files[p]
            e["mtime"], e["size"] = mtime, max(1, e["size"] + rng.randrange(-256, 257))
            add(mut, e)
            new_bytes += e["size"]
        added = [f"{added_in}/new-{r}-{i}.txt" for i in range(3)]
        folder(new_folder)
        add(mut, entries[-1])
        added += [f"{new_folder}/a.txt", f"{new_folder}/b.bin"]
        for p in added:
            file(p, rng.randrange(2 * KiB, 64 * KiB), "bin" if p.endswith(".bin") else "text")
            files[p]["mtime"] = mtime
            add(mut, files[p])
            new_bytes += files[p]["size"]
    for p in deleted:
        script.append(f"rm -- {shlex.quote(p)}")
        del files[p]
    pool = set(files) - set(added) if meta_anywhere else set(names) - set(deleted)
    meta = rng.sample(sorted(pool - set(changed)), 3)
    script.append(f"chmod 0604 {shlex.quote(meta[0])}")
    script.append(f"chown 0:0 {shlex.quote(meta[1])}")
    script.append(f"setfattr -n user.bench.round -v {r} {shlex.quote(meta[2])}")
    for name, content in ((f"{tag}-{r}.tar", buf.getvalue()), (f"{tag}-{r}.sh", ("\n".join(script) + "\n").encode())):
        t = tarfile.TarInfo(name)
        t.size, t.mtime = len(content), BASE
        seed.addfile(t, io.BytesIO(content))
    return {"changed": len(changed), "added": len(added), "deleted": len(deleted), "meta": len(meta),
            "new_bytes": new_bytes}


CLUSTER = "Persistent/src"
with tarfile.open(seed_tar, "w", format=tarfile.PAX_FORMAT) as seed:
    # Each round, two changes of 1 % of the files. "mut": anywhere in the tree, at random.
    # "clus", half a day later: all within three sibling folders of one sub-folder of
    # Persistent (CLUSTER), chosen at random, as a week's work on a few projects.
    for r in range(1, rounds + 1):
        mtime = BASE + r * 86400
        names = sorted(p for p, e in files.items() if not e["hardlinked"])
        for k, v in change(seed, r, "mut", names, mtime, "Persistent/Documents/project-00",
                           f"Persistent/Documents/new-folder-{r}", True).items():
            facts.append(f"{k}.{r}={v}")
        # Its folders, not those that earlier rounds added inside them.
        crates = sorted({p.rsplit("/", 1)[0] for p in files
                         if p.startswith(CLUSTER + "/crate-") and p.count("/") == CLUSTER.count("/") + 2})
        chosen = sorted(rng.sample(crates, 3))
        names = sorted(p for p, e in files.items() if not e["hardlinked"] and p.rsplit("/", 1)[0] in chosen)
        for k, v in change(seed, r, "clus", names, mtime + 43200, chosen[0], f"{chosen[1]}/new-module-{r}", False).items():
            facts.append(f"clus_{k}.{r}={v}")
        facts.append(f"clus_folders.{r}={','.join(c.rsplit('/', 1)[1] for c in chosen)}")
        facts.append(f"clus_files.{r}={sum(1 for p in files if p.startswith(CLUSTER + '/'))}")
        facts.append(f"clus_files_elsewhere.{r}={sum(1 for p in files if not p.startswith(CLUSTER + '/'))}")
    facts.append(f"clus_parent={CLUSTER}")
    content = ("\n".join(facts) + "\n").encode()
    t = tarfile.TarInfo("facts")
    t.size, t.mtime = len(content), BASE
    seed.addfile(t, io.BytesIO(content))
    seed.add(tree_path, "tree.tar")
os.unlink(tree_path)
print("\n".join(facts))
