// SPDX-License-Identifier: GPL-2.0
/*
 * tmpfill - fragment page-cache/tmpfs memory with many small files.
 *
 * usage: tmpfill fill DIR COUNT KiB   write COUNT files of KiB non-zero bytes
 *        tmpfill punch DIR            delete every other file (f0, f2, ...)
 *        tmpfill clear DIR            delete all files
 * Prints "tmpfill: N files, M KiB" / "tmpfill: removed N files".
 * One process instead of a shell loop: fork+exec per file is slow under TCG.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int fill(const char *dir, long count, long kib)
{
	size_t len = kib * 1024;
	char *buf = malloc(len), path[4096];
	long n;

	if (!buf)
		return 1;
	mkdir(dir, 0755);
	for (n = 0; n < count; n++) {
		int fd;

		memset(buf, 0x11 + (n & 0x7f), len);
		snprintf(path, sizeof(path), "%s/f%ld", dir, n);
		fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0 || write(fd, buf, len) != (ssize_t)len) {
			perror(path);
			if (fd >= 0)
				close(fd);
			break;
		}
		close(fd);
	}
	printf("tmpfill: %ld files, %ld KiB\n", n, n * kib);
	free(buf);
	return n == count ? 0 : 1;
}

static int removefiles(const char *dir, int every_other)
{
	char path[4096];
	struct dirent *de;
	long removed = 0;
	DIR *d = opendir(dir);

	if (!d) {
		perror(dir);
		return 1;
	}
	while ((de = readdir(d))) {
		if (de->d_name[0] != 'f')
			continue;
		if (every_other && atol(de->d_name + 1) % 2)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		if (unlink(path) == 0)
			removed++;
	}
	closedir(d);
	printf("tmpfill: removed %ld files\n", removed);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 5 && !strcmp(argv[1], "fill"))
		return fill(argv[2], atol(argv[3]), atol(argv[4]));
	if (argc == 3 && !strcmp(argv[1], "punch"))
		return removefiles(argv[2], 1);
	if (argc == 3 && !strcmp(argv[1], "clear"))
		return removefiles(argv[2], 0);
	fprintf(stderr, "usage: tmpfill fill DIR COUNT KiB | punch DIR | clear DIR\n");
	return 2;
}
