/* The fingerprint lines of a tree's listed files, "name:size:mtime_ns" joined by '\n', as
   dp3batch.books.fingerprints.listed_fingerprint makes them in Python: a no-op rerun over
   10,000 MSs makes them for 1.2 million files, and Python's os.stat builds a whole stat
   result for each (measured here: 3.8-4.0 us a file from Python, 2.2-2.5 us from here).
   Built into the environment by `make setup` (dp3batch.books.native_stat). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

/* Changed whenever the interface below changes: a library of another version is not used. */
int dp3batch_stat_lines_version(void) { return 1; }

/* For each of `count` NUL-terminated names packed in `names`, relative to the directory
   open as `directory` (followed through links, as os.stat), its line into `out`. Returns
   the bytes written; -1 when a name cannot be stat-ed (gone, unreadable); -2 when `out`
   (`size` bytes) is too small. */
long dp3batch_stat_lines(int directory, const char *names, int count, char *out, long size) {
    long used = 0;
    for (int index = 0; index < count; index++) {
        struct stat info;
        if (fstatat(directory, names, &info, 0) != 0) return -1;
        long long mtime_ns = (long long)info.st_mtim.tv_sec * 1000000000LL + info.st_mtim.tv_nsec;
        int written = snprintf(out + used, (size_t)(size - used), "%s%s:%lld:%lld",
                               index ? "\n" : "", names, (long long)info.st_size, mtime_ns);
        if (written < 0 || used + written >= size) return -2;
        used += written;
        names += strlen(names) + 1;
    }
    return used;
}
