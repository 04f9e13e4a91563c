// SPDX-License-Identifier: GPL-2.0
/*
 * memhog - allocate anonymous memory and touch every page with non-zero data.
 *
 * usage: memhog [-t SECONDS] [-w] [-p] [-f N] MiB
 *   -t N  hold the memory N seconds before exiting
 *   -w    hold until SIGTERM/SIGINT/SIGUSR1 (prints "holding" when ready)
 *   -p    print progress every 64 MiB (useful when the OOM killer may strike)
 *   -f N  fragment: map the memory in 4 KiB pages (MADV_NOHUGEPAGE) and,
 *         once all is touched, give back every Nth page (MADV_DONTNEED):
 *         free single pages scattered through the blocks the rest uses
 * Memory is taken in 1 MiB mmap chunks so a failure leaves what was got.
 * "memhog: touched N MiB" follows the touching (unless killed).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CHUNK (1UL << 20)

int main(int argc, char **argv)
{
	int opt, wait_sig = 0, progress = 0, hold = 0;
	long want, got = 0, every = 0, freed = 0;
	unsigned char **chunks;
	long page = sysconf(_SC_PAGESIZE);
	sigset_t set;

	while ((opt = getopt(argc, argv, "t:wpf:")) != -1) {
		switch (opt) {
		case 't':
			hold = atoi(optarg);
			break;
		case 'w':
			wait_sig = 1;
			break;
		case 'p':
			progress = 1;
			break;
		case 'f':
			every = atol(optarg);
			if (every < 1)
				goto usage;
			break;
		default:
			goto usage;
		}
	}
	if (optind != argc - 1)
		goto usage;
	want = atol(argv[optind]);
	chunks = calloc(want > 0 ? want : 1, sizeof(*chunks));
	if (!chunks)
		return 1;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGUSR1);
	sigprocmask(SIG_BLOCK, &set, NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);

	for (got = 0; got < want; got++) {
		unsigned char *p = mmap(NULL, CHUNK, PROT_READ | PROT_WRITE,
					MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (p == MAP_FAILED) {
			printf("memhog: mmap failed after %ld MiB\n", got);
			break;
		}
		chunks[got] = p;
		if (every)
			madvise(p, CHUNK, MADV_NOHUGEPAGE);
		for (unsigned long off = 0; off < CHUNK; off += page)
			memset(p + off, 0x5a ^ (int)(off >> 12), 64);
		if (progress && got % 64 == 63)
			printf("memhog: progress %ld MiB\n", got + 1);
	}
	printf("memhog: touched %ld MiB\n", got);
	/* only now: a page given back earlier would serve the next chunk */
	for (long i = 0, n = 0; every && i < got; i++)
		for (unsigned long off = 0; off < CHUNK; off += page)
			if (++n % every == 0 && !madvise(chunks[i] + off, page, MADV_DONTNEED))
				freed++;
	if (every)
		printf("memhog: gave back %ld pages, one in %ld\n", freed, every);

	if (wait_sig) {
		int sig;

		printf("memhog: holding\n");
		sigwait(&set, &sig);
	} else if (hold) {
		sleep(hold);
	}
	return got == want ? 0 : 1;

usage:
	fprintf(stderr, "usage: memhog [-t SECONDS] [-w] [-p] [-f N] MiB\n");
	return 2;
}
