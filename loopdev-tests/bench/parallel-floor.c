/* parallel-floor: read-floor.c on several threads, and optionally with the cipher: every
 * regular file below a folder read once and its bytes written to one output file, with no
 * format, no names, no attributes and no order. The tree is listed first (the folders'
 * entries, on one thread); then THREADS threads take the files one at a time, each
 * filling its own 1 MiB buffer (openat, fstat, reads, close a file) and writing the buffer
 * out whole, one thread at a time. With SEAL 1, each 64 KiB of a buffer is sealed before
 * it goes out, in place, by OpenSSL's ChaCha20-Poly1305 (a nonce of its own per piece, the
 * 16-byte tag written after it): the cipher of keepsake's archives and of age, in the
 * build `openssl speed` times (faster here than the build keepsake links). What an
 * encrypted archive of the tree costs at least, done with plain system calls and spread
 * over THREADS CPUs: loopdev-tests/bench/backup sets keepsake's archive and tar | age
 * against it.
 *
 *   parallel-floor DIR OUT THREADS SEAL
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define BUF (1 << 20)
#define PIECE (64 << 10)
#define TAG 16

struct file {
    int dir;
    char *name;
};

static struct file *files;
static size_t nfiles, cap;
static atomic_size_t next_file;
static int out, seal;
static pthread_mutex_t writing = PTHREAD_MUTEX_INITIALIZER;

static void die(const char *what) {
    perror(what);
    exit(1);
}

/* The type of entry `e` of the folder `dir`, asking the file system where readdir cannot
 * tell (DT_UNKNOWN). */
static unsigned char type_of(int dir, const struct dirent *e) {
    struct stat st;
    if (e->d_type != DT_UNKNOWN)
        return e->d_type;
    if (fstatat(dir, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        die(e->d_name);
    return S_ISDIR(st.st_mode) ? DT_DIR : S_ISREG(st.st_mode) ? DT_REG : DT_UNKNOWN;
}

/* Every regular file below `dir`, into `files`; the folders stay open for the readers. */
static void list(int dir) {
    DIR *d = fdopendir(dup(dir));
    if (!d)
        die("fdopendir");
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        if (n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0)))
            continue;
        unsigned char type = type_of(dir, e);
        if (type == DT_DIR) {
            int sub = openat(dir, n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub < 0)
                die(n);
            list(sub);
        } else if (type == DT_REG) {
            if (nfiles == cap) {
                cap = cap ? 2 * cap : 1024;
                files = realloc(files, cap * sizeof *files);
                if (!files)
                    die("realloc");
            }
            files[nfiles].dir = dir;
            files[nfiles++].name = strdup(n);
        }
    }
    closedir(d);
}

struct reader {
    unsigned char buf[BUF];
    size_t used;
    unsigned char tags[BUF / PIECE * TAG];
    EVP_CIPHER_CTX *cipher;
    uint64_t pieces;
};

/* Seals the buffer's pieces (when asked) and writes it out, its tags after it. */
static void flush(struct reader *r) {
    if (r->used == 0)
        return;
    size_t tags = 0;
    for (size_t off = 0; seal && off < r->used; off += PIECE) {
        int n, piece = (int)(r->used - off < PIECE ? r->used - off : PIECE);
        unsigned char nonce[12] = {0};
        memcpy(nonce, &r->pieces, sizeof r->pieces);
        r->pieces++;
        if (!EVP_EncryptInit_ex(r->cipher, NULL, NULL, NULL, nonce) ||
            !EVP_EncryptUpdate(r->cipher, r->buf + off, &n, r->buf + off, piece) ||
            !EVP_EncryptFinal_ex(r->cipher, NULL, &n) ||
            !EVP_CIPHER_CTX_ctrl(r->cipher, EVP_CTRL_AEAD_GET_TAG, TAG, r->tags + tags))
            die("sealing");
        tags += TAG;
    }
    struct iovec iov[2] = {{r->buf, r->used}, {r->tags, tags}};
    pthread_mutex_lock(&writing);
    for (;;) {
        ssize_t n = writev(out, iov, iov[1].iov_len ? 2 : 1);
        if (n <= 0)
            die("write");
        if ((size_t)n >= iov[0].iov_len + iov[1].iov_len)
            break;
        /* A short write: what is left of each part. */
        size_t first = (size_t)n < iov[0].iov_len ? (size_t)n : iov[0].iov_len;
        iov[0].iov_base = (char *)iov[0].iov_base + first;
        iov[0].iov_len -= first;
        iov[1].iov_base = (char *)iov[1].iov_base + ((size_t)n - first);
        iov[1].iov_len -= (size_t)n - first;
    }
    pthread_mutex_unlock(&writing);
    r->used = 0;
}

static void copy(struct reader *r, const struct file *f) {
    int fd = openat(f->dir, f->name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        die(f->name);
    size_t left = (size_t)st.st_size;
    while (left > 0) {
        if (r->used == BUF)
            flush(r);
        size_t want = BUF - r->used < left ? BUF - r->used : left;
        ssize_t n = read(fd, r->buf + r->used, want);
        if (n < 0)
            die(f->name);
        if (n == 0)
            break;
        r->used += (size_t)n;
        left -= (size_t)n;
    }
    close(fd);
}

static void *read_files(void *arg) {
    struct reader *r = calloc(1, sizeof *r);
    if (!r || !(r->cipher = EVP_CIPHER_CTX_new()))
        die("calloc");
    static const unsigned char key[32] = {1};
    if (!EVP_EncryptInit_ex(r->cipher, EVP_chacha20_poly1305(), NULL, key, NULL))
        die("cipher");
    /* Each thread's nonces apart from the others'. */
    r->pieces = (uint64_t)(uintptr_t)arg << 40;
    for (size_t i; (i = atomic_fetch_add(&next_file, 1)) < nfiles;)
        copy(r, &files[i]);
    flush(r);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: parallel-floor DIR OUT THREADS SEAL\n");
        return 2;
    }
    int threads = atoi(argv[3]);
    seal = atoi(argv[4]);
    if (threads < 1) {
        fprintf(stderr, "parallel-floor: THREADS must be 1 or more\n");
        return 2;
    }
    int root = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root < 0)
        die(argv[1]);
    out = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0)
        die(argv[2]);
    list(root);
    pthread_t *t = calloc((size_t)threads, sizeof *t);
    if (!t)
        die("calloc");
    for (int i = 0; i < threads; i++)
        if (pthread_create(&t[i], NULL, read_files, (void *)(uintptr_t)i) != 0)
            die("pthread_create");
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    return close(out) == 0 ? 0 : 1;
}
