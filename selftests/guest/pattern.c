// SPDX-License-Identifier: GPL-2.0
/*
 * pattern - hold anonymous memory filled with a verifiable pattern.
 *
 * usage: pattern hold MiB [SEED]
 * Fills MiB of anonymous memory with non-zero words that depend on the page's
 * address, the word's offset and SEED, prints "holding N pages", then waits:
 *   SIGUSR1  verify everything: "verify ok N pages" or "verify FAIL at ..."
 *            (first 8 bad words, then "verify FAIL: N bad pages of M")
 *   SIGTERM  exit 0 (exit 1 if any verification failed)
 * Pages are left migratable (no mlock) so compaction can move them.
 */
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static inline uint64_t word(uintptr_t page, size_t i, uint64_t seed)
{
	uint64_t x = (page ^ (seed * 0x9e3779b97f4a7c15ULL)) + i * 0xbf58476d1ce4e5b9ULL;

	x ^= x >> 31;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 29;
	return x | 1;	/* never zero: zero pages are free for QEMU */
}

static long verify(uint64_t *mem, size_t pages, size_t page, uint64_t seed)
{
	size_t words = page / sizeof(uint64_t);
	long bad_pages = 0, reported = 0;

	for (size_t p = 0; p < pages; p++) {
		uint64_t *w = mem + p * words;
		uintptr_t addr = (uintptr_t)w;
		int bad = 0;

		for (size_t i = 0; i < words; i++) {
			uint64_t want = word(addr, i, seed);

			if (w[i] == want)
				continue;
			bad = 1;
			if (reported++ < 8)
				printf("verify FAIL at page %zu (%#" PRIxPTR ") word %zu: got %#" PRIx64
				       " want %#" PRIx64 "\n", p, addr, i, w[i], want);
		}
		bad_pages += bad;
	}
	if (bad_pages)
		printf("verify FAIL: %ld bad pages of %zu\n", bad_pages, pages);
	else
		printf("verify ok %zu pages\n", pages);
	return bad_pages;
}

int main(int argc, char **argv)
{
	size_t page = sysconf(_SC_PAGESIZE), words = page / sizeof(uint64_t);
	uint64_t seed = 1, *mem;
	size_t mib, pages;
	sigset_t set;
	int failed = 0;

	if (argc < 3 || strcmp(argv[1], "hold")) {
		fprintf(stderr, "usage: pattern hold MiB [SEED]\n");
		return 2;
	}
	mib = strtoul(argv[2], NULL, 0);
	if (argc > 3)
		seed = strtoull(argv[3], NULL, 0);
	pages = mib * (1 << 20) / page;

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);

	mem = mmap(NULL, pages * page, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) {
		perror("pattern: mmap");
		return 1;
	}
	for (size_t p = 0; p < pages; p++) {
		uint64_t *w = mem + p * words;

		for (size_t i = 0; i < words; i++)
			w[i] = word((uintptr_t)w, i, seed);
	}
	printf("holding %zu pages\n", pages);

	for (;;) {
		int sig;

		if (sigwait(&set, &sig))
			continue;
		if (sig == SIGUSR1)
			failed |= verify(mem, pages, page, seed) != 0;
		else
			return failed;
	}
}
