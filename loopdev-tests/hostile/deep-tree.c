/* deep-tree: makes, measures or removes a chain of folders DIR/d/d/d/..., iteratively (one
 * descriptor open at a time), so that the test itself never trips on its depth.
 *
 *   deep-tree make DIR DEPTH | deep-tree depth DIR | deep-tree remove DIR */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int down(int fd)
{
    int next = openat(fd, "d", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (next >= 0)
        close(fd);
    return next;
}

int main(int argc, char **argv)
{
    int fd, next, depth = 0;
    if (argc < 3) {
        fprintf(stderr, "usage: deep-tree make DIR DEPTH | depth DIR | remove DIR\n");
        return 2;
    }
    fd = open(argv[2], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        perror(argv[2]);
        return 2;
    }
    if (strcmp(argv[1], "make") == 0 && argc == 4) {
        for (int want = atoi(argv[3]); depth < want; depth++) {
            if (mkdirat(fd, "d", 0755) != 0 || (fd = down(fd)) < 0) {
                perror("mkdir");
                return 2;
            }
        }
    } else if (strcmp(argv[1], "depth") == 0) {
        while ((next = down(fd)) >= 0)
            fd = next, depth++;
    } else if (strcmp(argv[1], "remove") == 0) {
        while ((next = down(fd)) >= 0)
            fd = next, depth++;
        for (; depth > 0; depth--) {
            int up = openat(fd, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (up < 0 || unlinkat(up, "d", AT_REMOVEDIR) != 0) {
                perror("remove");
                return 2;
            }
            close(fd);
            fd = up;
        }
    } else {
        fprintf(stderr, "deep-tree: unknown command %s\n", argv[1]);
        return 2;
    }
    printf("%d\n", depth);
    return 0;
}
