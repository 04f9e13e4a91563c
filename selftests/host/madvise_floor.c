// SPDX-License-Identifier: GPL-2.0
/*
 * madvise_floor - the host's own cost of discarding ballooned memory.
 *
 * usage: madvise_floor PAGES
 * Maps PAGES 4 KiB pages of anonymous memory, touches them, then discards
 * them with one madvise(MADV_DONTNEED) per 4 KiB page, as a host does for
 * each page number a balloon hands it. Prints the discard time in seconds.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

int main(int argc, char **argv)
{
	long pages = argc > 1 ? atol(argv[1]) : 0;
	struct timespec a, b;
	size_t len;
	char *p;
	long i;

	if (pages <= 0) {
		fprintf(stderr, "usage: madvise_floor PAGES\n");
		return 2;
	}
	len = (size_t)pages * 4096;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	/* like guest RAM in QEMU: eligible for huge pages, all touched */
	madvise(p, len, MADV_HUGEPAGE);
	for (i = 0; i < pages; i++)
		p[i * 4096] = 1;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (i = 0; i < pages; i++)
		if (madvise(p + i * 4096, 4096, MADV_DONTNEED)) {
			perror("madvise");
			return 1;
		}
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("%.6f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
	return 0;
}
