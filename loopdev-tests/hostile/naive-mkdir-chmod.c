/* naive-mkdir-chmod: a deliberately naive root operation for the negative control: make a
 * folder, then set its owner and mode by name (the mode follows a symlink swapped in). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: naive-mkdir-chmod PATH UID GID MODE(octal)\n");
        return 2;
    }
    if (mkdir(argv[1], 0700) != 0) {
        perror(argv[1]);
        return 2;
    }
    if (lchown(argv[1], atoi(argv[2]), atoi(argv[3])) != 0)
        perror("lchown");
    if (chmod(argv[1], strtol(argv[4], NULL, 8)) != 0)
        perror("chmod");
    return 0;
}
