/* naive-walk: a deliberately naive recursive walk for the negative control: it keeps every
 * level's directory handle open on the way down, as a recursive read_dir does. Exits 3 when
 * it runs out of descriptors (EMFILE), 0 when it saw the whole tree. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int deepest;

static int walk(DIR *dir, int depth)
{
    struct dirent *e;
    if (depth > deepest)
        deepest = depth;
    while ((e = readdir(dir))) {
        int fd;
        DIR *sub;
        if (e->d_type != DT_DIR || !strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        fd = openat(dirfd(dir), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 || !(sub = fdopendir(fd))) {
            printf("naive-walk: %s at depth %d\n", strerror(errno), depth + 1);
            return errno == EMFILE ? 3 : 2;
        }
        int rc = walk(sub, depth + 1);
        closedir(sub);
        if (rc)
            return rc;
    }
    return 0;
}

int main(int argc, char **argv)
{
    DIR *top = argc == 2 ? opendir(argv[1]) : NULL;
    int rc;
    if (!top) {
        fprintf(stderr, "usage: naive-walk DIR\n");
        return 2;
    }
    rc = walk(top, 0);
    if (!rc)
        printf("naive-walk: the whole tree, %d levels\n", deepest);
    return rc;
}
