/* naive-link-rollback: a deliberately naive root operation for the negative control: make a
 * link DIR/NAME, then "roll it back" by unlinking the path (which resolves DIR again). */
#include <limits.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char path[PATH_MAX];
    if (argc != 4) {
        fprintf(stderr, "usage: naive-link-rollback DIR NAME TARGET\n");
        return 2;
    }
    snprintf(path, sizeof path, "%s/%s", argv[1], argv[2]);
    if (symlink(argv[3], path) != 0) {
        perror(path);
        return 2;
    }
    if (unlink(path) != 0)
        perror("unlink");
    return 0;
}
