/* read-floor: reads every regular file below a folder once and writes its bytes to one
 * output file, one file after the other, and nothing else: no format, no names, no
 * attributes, no cipher. Per file: openat, fstat (for the size), as many reads as the size
 * needs and close; the output goes out in writes of 1 MiB. What any archiver of the tree
 * does at least, on one thread: loopdev-tests/bench/backup times it as the floor against
 * which keepsake's archive and tar | age are set.
 *
 *   read-floor DIR OUT
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char buf[1 << 20];
static size_t used;
static int out;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void flush(void) {
    size_t done = 0;
    while (done < used) {
        ssize_t n = write(out, buf + done, used - done);
        if (n <= 0)
            die("write");
        done += (size_t)n;
    }
    used = 0;
}

static void copy(int dir, const char *name) {
    int f = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (f < 0 || fstat(f, &st) != 0)
        die(name);
    size_t left = (size_t)st.st_size;
    while (left > 0) {
        if (used == sizeof buf)
            flush();
        size_t want = sizeof buf - used < left ? sizeof buf - used : left;
        ssize_t n = read(f, buf + used, want);
        if (n < 0)
            die(name);
        if (n == 0)
            break;
        used += (size_t)n;
        left -= (size_t)n;
    }
    close(f);
}

static void walk(int dir) {
    DIR *d = fdopendir(dir);
    if (!d)
        die("fdopendir");
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        if (n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0)))
            continue;
        if (e->d_type == DT_DIR) {
            int sub = openat(dirfd(d), n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub < 0)
                die(n);
            walk(sub);
        } else if (e->d_type == DT_REG) {
            copy(dirfd(d), n);
        }
    }
    closedir(d);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: read-floor DIR OUT\n");
        return 2;
    }
    int root = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root < 0)
        die(argv[1]);
    out = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0)
        die(argv[2]);
    walk(root);
    flush();
    return close(out) == 0 ? 0 : 1;
}
