/* dm-key.h: what lib/unplug-clock.c and bench/key-clock.c both ask device-mapper, by
 * ioctl (no dmsetup, no udev): a monotonic clock in ms, one dm ioctl by mapping name, and
 * whether a mapping's live table still holds a dm-crypt key. Static functions, included by
 * each program (both are built static, one file each), which names itself in DM_KEY_PROG
 * for the error messages. */
#ifndef KS_DM_KEY_H
#define KS_DM_KEY_H
#include <errno.h>
#include <linux/dm-ioctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* One device-mapper ioctl on MAPPING into buf (a dm_ioctl header and room for the reply).
 * Returns 0, or the errno (ENXIO: no such mapping). */
static int dm_call(int ctl, unsigned long cmd, const char *mapping, unsigned flags,
                   struct dm_ioctl *buf, size_t size)
{
    memset(buf, 0, size);
    buf->version[0] = DM_VERSION_MAJOR;
    buf->data_size = size;
    buf->data_start = sizeof(*buf);
    buf->flags = flags;
    strncpy(buf->name, mapping, sizeof(buf->name) - 1);
    return ioctl(ctl, cmd, buf) == 0 ? 0 : errno;
}

/* Whether the live table of MAPPING still holds a dm-crypt key. */
static int key_present(int ctl, const char *mapping)
{
    static union { struct dm_ioctl io; char bytes[16384]; } buf;
    int err = dm_call(ctl, DM_TABLE_STATUS, mapping, DM_STATUS_TABLE_FLAG, &buf.io, sizeof(buf));
    if (err == ENXIO)
        return 0;
    if (err || (buf.io.flags & DM_BUFFER_FULL_FLAG)) {
        fprintf(stderr, DM_KEY_PROG ": DM_TABLE_STATUS %s: %s\n", mapping,
                err ? strerror(err) : "table larger than 16 KiB");
        exit(1);
    }
    /* The reply: target_count dm_target_spec records from data_start, each followed by its
     * parameters; "next" is the offset of the following record from the first one. For
     * crypt: "CIPHER KEY IV_OFFSET DEVICE OFFSET [OPTIONS]". */
    const char *targets = buf.bytes + buf.io.data_start;
    unsigned offset = 0;
    for (unsigned i = 0; i < buf.io.target_count; i++) {
        const struct dm_target_spec *spec = (const void *)(targets + offset);
        const char *params = (const char *)(spec + 1);
        if (strcmp(spec->target_type, "crypt") == 0) {
            const char *key = strchr(params, ' ');
            if (key) {
                size_t len = strcspn(++key, " ");
                if (len > 0 && !(len == 1 && key[0] == '-') && strspn(key, "0") < len)
                    return 1;
            }
        }
        offset = spec->next;
    }
    return 0;
}

#endif
