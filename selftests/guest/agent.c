// SPDX-License-Identifier: GPL-2.0
/*
 * agent - the guest end of the selftests command channel.
 *
 * Runs as PID 1's successor (exec'd by /init) on a serial port in raw mode.
 * Request:  "@@REQ <id> <timeout_s> <len>\n" followed by <len> bytes of shell.
 * Reply:    "@@VBA <id> <rc> <len>\n" followed by <len> bytes of stdout+stderr.
 * On start: "@@VBA READY\n".
 *
 * Each command runs as "/bin/sh -c CMD" in its own session with stdin from
 * /dev/null; on timeout its process group is killed and rc is 124.  Because
 * the agent is init, it also reaps orphans (background jobs of earlier
 * commands) after every command.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define MAX_CMD (1 << 20)
#define MAX_OUT (8 << 20)

static int tty;

static void write_all(const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(tty, p, len);

		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			perror("agent: write");
			return;
		}
		p += n;
		len -= n;
	}
}

static int read_exact(char *buf, size_t len)
{
	while (len) {
		ssize_t n = read(tty, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		buf += n;
		len -= n;
	}
	return 0;
}

/* Read one header line; returns its length, -1 on EOF. */
static int read_line(char *buf, size_t size)
{
	size_t i = 0;

	for (;;) {
		char c;

		if (read_exact(&c, 1))
			return -1;
		if (c == '\n')
			break;
		if (i + 1 < size)
			buf[i++] = c;
	}
	buf[i] = '\0';
	return (int)i;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void reply(unsigned long id, int rc, const char *out, size_t len)
{
	char hdr[96];
	int n = snprintf(hdr, sizeof(hdr), "@@VBA %lu %d %zu\n", id, rc, len);

	write_all(hdr, n);
	write_all(out, len);
}

static void run(unsigned long id, int timeout, const char *cmd)
{
	static char out[MAX_OUT];
	size_t len = 0;
	int pfd[2], status = 0, rc, timed_out = 0, exited = 0;
	double deadline = now() + timeout, drain_until = 0;
	pid_t pid;

	if (pipe(pfd)) {
		rc = snprintf(out, sizeof(out), "agent: pipe: %s\n", strerror(errno));
		reply(id, 125, out, rc);
		return;
	}
	pid = fork();
	if (pid == 0) {
		int null = open("/dev/null", O_RDONLY);

		setsid();
		dup2(null, 0);
		dup2(pfd[1], 1);
		dup2(pfd[1], 2);
		close(pfd[0]);
		close(pfd[1]);
		close(null);
		close(tty);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	if (pid < 0) {
		close(pfd[0]);
		rc = snprintf(out, sizeof(out), "agent: fork: %s\n", strerror(errno));
		reply(id, 125, out, rc);
		return;
	}

	for (;;) {
		struct pollfd p = { .fd = pfd[0], .events = POLLIN };
		double t = now();
		int r;

		if (!exited && waitpid(pid, &status, WNOHANG) == pid) {
			exited = 1;
			/* a stray background job may hold the pipe: drain briefly */
			drain_until = t + 0.3;
		}
		if (exited && t > drain_until)
			break;
		if (!exited && t > deadline) {
			kill(-pid, SIGKILL);
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			timed_out = exited = 1;
			break;
		}
		r = poll(&p, 1, 100);
		if (r > 0) {
			char tmp[4096];
			ssize_t n = read(pfd[0], tmp, sizeof(tmp));

			if (n == 0) {
				if (!exited) {
					waitpid(pid, &status, 0);
					exited = 1;
				}
				break;
			}
			if (n > 0) {
				size_t room = sizeof(out) - len;

				if ((size_t)n > room)
					n = room;
				memcpy(out + len, tmp, n);
				len += n;
			}
		}
	}
	close(pfd[0]);

	if (timed_out) {
		rc = 124;
		len += snprintf(out + len, sizeof(out) - len > 80 ? 80 : 0,
				"\nagent: timeout after %d s, killed\n", timeout);
	} else if (WIFEXITED(status)) {
		rc = WEXITSTATUS(status);
	} else {
		rc = 128 + WTERMSIG(status);
	}
	reply(id, rc, out, len);

	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

int main(int argc, char **argv)
{
	const char *dev = argc > 1 ? argv[1] : "/dev/ttyS1";
	static char cmd[MAX_CMD + 1];
	struct termios tio;
	char line[256];

	tty = open(dev, O_RDWR | O_NOCTTY);
	if (tty < 0) {
		perror("agent: open");
		return 1;
	}
	if (tcgetattr(tty, &tio) == 0) {
		cfmakeraw(&tio);
		cfsetispeed(&tio, B115200);
		cfsetospeed(&tio, B115200);
		tcsetattr(tty, TCSANOW, &tio);
	}
	signal(SIGPIPE, SIG_IGN);
	fprintf(stderr, "agent: ready on %s\n", dev);
	write_all("@@VBA READY\n", 12);

	for (;;) {
		unsigned long id;
		int timeout;
		size_t len;

		if (read_line(line, sizeof(line)) < 0) {
			sleep(1);
			continue;
		}
		if (sscanf(line, "@@REQ %lu %d %zu", &id, &timeout, &len) != 3)
			continue;
		if (len > MAX_CMD) {
			/* consume it to stay in sync with the host */
			for (; len; len -= len > MAX_CMD ? MAX_CMD : len)
				if (read_exact(cmd, len > MAX_CMD ? MAX_CMD : len))
					break;
			reply(id, 125, "agent: command too long\n", 24);
			continue;
		}
		if (read_exact(cmd, len))
			continue;
		cmd[len] = '\0';
		run(id, timeout > 0 ? timeout : 1, cmd);
	}
}
