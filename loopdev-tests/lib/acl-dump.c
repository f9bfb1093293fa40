/* acl-dump: prints a path's POSIX access ACL (the system.posix_acl_access xattr) one entry a
 * line, as getfacl -n does without comments ("user:1000:--x"), for guests without getfattr.
 * Prints nothing when the path has no ACL. Exit 1 on any other error.
 * acl-dump -x PATH removes the ACL (the deliberate-break checks of the scenarios);
 * acl-dump -t PATH sets the ACL Tails gives its mount root (a control of scenario 18):
 * user::rwx user:1000:--x group::rwx mask::rwx other::---. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/xattr.h>

static const char *perm(unsigned p, char *buf)
{
    buf[0] = (p & 4) ? 'r' : '-';
    buf[1] = (p & 2) ? 'w' : '-';
    buf[2] = (p & 1) ? 'x' : '-';
    buf[3] = '\0';
    return buf;
}

int main(int argc, char **argv)
{
    unsigned char x[4096];
    char b[4];
    ssize_t n, i;
    if (argc == 3 && strcmp(argv[1], "-x") == 0) {
        if (lremovexattr(argv[2], "system.posix_acl_access") < 0 && errno != ENODATA) {
            perror(argv[2]);
            return 1;
        }
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "-t") == 0) {
        static const uint16_t e[5][2] = {{0x01, 7}, {0x02, 1}, {0x04, 7}, {0x10, 7}, {0x20, 0}};
        unsigned char a[4 + 5 * 8] = {2, 0, 0, 0};
        for (int k = 0; k < 5; k++) {
            unsigned char *q = a + 4 + 8 * k;
            uint32_t id = e[k][0] == 0x02 ? 1000 : 0xffffffffu;
            q[0] = e[k][0]; q[1] = 0; q[2] = e[k][1]; q[3] = 0;
            q[4] = id & 0xff; q[5] = id >> 8 & 0xff; q[6] = id >> 16 & 0xff; q[7] = id >> 24;
        }
        if (lsetxattr(argv[2], "system.posix_acl_access", a, sizeof a, 0) < 0) {
            perror(argv[2]);
            return 1;
        }
        return 0;
    }
    if (argc != 2) {
        fprintf(stderr, "usage: acl-dump [-x] PATH\n");
        return 2;
    }
    n = lgetxattr(argv[1], "system.posix_acl_access", x, sizeof x);
    if (n < 0) {
        if (errno == ENODATA)
            return 0;
        perror(argv[1]);
        return 1;
    }
    if (n < 4 || (n - 4) % 8 != 0 || x[0] != 2) {
        fprintf(stderr, "%s: unexpected ACL xattr (%zd bytes)\n", argv[1], n);
        return 1;
    }
    for (i = 4; i < n; i += 8) {
        unsigned tag = x[i] | x[i + 1] << 8, p = x[i + 2] | x[i + 3] << 8;
        uint32_t id = (uint32_t)x[i + 4] | (uint32_t)x[i + 5] << 8 | (uint32_t)x[i + 6] << 16
                      | (uint32_t)x[i + 7] << 24;
        switch (tag) {
        case 0x01: printf("user::%s\n", perm(p, b)); break;
        case 0x02: printf("user:%u:%s\n", id, perm(p, b)); break;
        case 0x04: printf("group::%s\n", perm(p, b)); break;
        case 0x08: printf("group:%u:%s\n", id, perm(p, b)); break;
        case 0x10: printf("mask::%s\n", perm(p, b)); break;
        case 0x20: printf("other::%s\n", perm(p, b)); break;
        default: printf("tag-%#x:%u:%s\n", tag, id, perm(p, b));
        }
    }
    return 0;
}
