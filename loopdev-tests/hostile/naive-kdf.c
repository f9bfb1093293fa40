/* naive-kdf: a deliberately naive archive reader for the negative control: it trusts the
 * header's argon2 cost and allocates and sweeps that memory before anything is checked. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    unsigned char h[64];
    FILE *f = argc == 2 ? fopen(argv[1], "rb") : NULL;
    if (!f || fread(h, 1, 64, f) != 64) {
        fprintf(stderr, "usage: naive-kdf ARCHIVE (64-byte header at least)\n");
        return 2;
    }
    uint32_t kib = h[12] | h[13] << 8 | h[14] << 16 | (uint32_t)h[15] << 24;
    uint32_t passes = h[16] | h[17] << 8 | h[18] << 16 | (uint32_t)h[19] << 24;
    size_t bytes = (size_t)kib * 1024;
    printf("naive-kdf: %u KiB x %u passes\n", kib, passes);
    fflush(stdout);
    char *memory = malloc(bytes);
    if (!memory)
        abort(); /* as an allocation failure in Rust does */
    for (uint32_t p = 0; p < passes; p++)
        memset(memory, (int)p, bytes);
    return 0;
}
