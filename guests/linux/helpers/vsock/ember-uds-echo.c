/*
 * ember-uds-echo: the host-side (L1) socket tool of Ember's virtio tests
 * (crates/ember/tests/linux_virtio.rs). It talks to ember's vsock device
 * through Firecracker's hybrid Unix-socket scheme, and over TCP for the
 * virtio-net test, with the same line-echo protocol as the guest's
 * ember-vsock-echo.
 *
 *   ember-uds-echo serve PATH PREFIX
 *       Listen on the Unix socket PATH (ember connects to <uds_path>_P
 *       when the guest connects to CID 2 port P), accept one connection
 *       and answer every line L with PREFIX L until the peer closes.
 *   ember-uds-echo tcp-serve PORT PREFIX
 *       The same on a TCP port.
 *   ember-uds-echo connect UDS_PATH PORT LINE COUNT
 *       Connect to ember's socket UDS_PATH, send "CONNECT PORT\n", expect
 *       "OK <n>\n" (retrying for up to 100 s while the guest does not
 *       listen yet), print "handshake: OK <n>", then send LINE COUNT
 *       times while reading the answers and print
 *           first reply: <the first line received>
 *           replies: <received> of <COUNT>, identical: yes|no
 *   ember-uds-echo tcp-connect IPV4 PORT LINE COUNT
 *       The same over TCP (no handshake).
 *   Exit status 0 only if COUNT identical replies ending in LINE came back.
 *
 * Link it statically (gcc -static); ember_harness::static_c_program does.
 * Everything stops after 180 s (alarm), so a lost peer cannot hang a test.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINE 4096

static void die(const char *what)
{
	fprintf(stderr, "ember-uds-echo: %s: %s\n", what, strerror(errno));
	exit(2);
}

static long number(const char *s)
{
	char *end;
	long v = strtol(s, &end, 0);

	if (!*s || *end || v < 0) {
		fprintf(stderr, "ember-uds-echo: bad number %s\n", s);
		exit(2);
	}
	return v;
}

static void write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			die("write");
		p += w;
		n -= (size_t)w;
	}
}

/* A Unix socket address (path != NULL) or a TCP one. */
static socklen_t make_addr(struct sockaddr_storage *ss, const char *path, const char *ip, long port)
{
	memset(ss, 0, sizeof(*ss));
	if (path) {
		struct sockaddr_un *un = (struct sockaddr_un *)ss;

		if (strlen(path) >= sizeof(un->sun_path)) {
			fprintf(stderr, "ember-uds-echo: path too long\n");
			exit(2);
		}
		un->sun_family = AF_UNIX;
		strcpy(un->sun_path, path);
		return sizeof(*un);
	}
	struct sockaddr_in *in = (struct sockaddr_in *)ss;

	in->sin_family = AF_INET;
	in->sin_port = htons((unsigned short)port);
	in->sin_addr.s_addr = htonl(INADDR_ANY);
	if (ip && inet_pton(AF_INET, ip, &in->sin_addr) != 1) {
		fprintf(stderr, "ember-uds-echo: bad address %s\n", ip);
		exit(2);
	}
	return sizeof(*in);
}

/* Echo server: one connection, PREFIX before every line, until EOF. */
static int serve(const char *path, long port, const char *prefix)
{
	struct sockaddr_storage ss;
	socklen_t len = make_addr(&ss, path, NULL, port);
	int one = 1, at_start = 1, fd;
	char in[8192], out[8192 * 2 + 256];
	size_t plen = strlen(prefix);
	int ls = socket(path ? AF_UNIX : AF_INET, SOCK_STREAM, 0);

	if (plen > 200) {
		fprintf(stderr, "ember-uds-echo: prefix too long\n");
		return 2;
	}
	if (ls < 0)
		die("socket");
	if (path)
		unlink(path);
	else
		setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(ls, (struct sockaddr *)&ss, len) < 0)
		die("bind");
	if (listen(ls, 1) < 0)
		die("listen");
	fd = accept(ls, NULL, NULL);
	if (fd < 0)
		die("accept");
	close(ls);
	for (;;) {
		ssize_t n = read(fd, in, sizeof(in));
		size_t o = 0;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("read");
		if (n == 0)
			break;
		for (ssize_t i = 0; i < n; i++) {
			if (at_start) {
				memcpy(out + o, prefix, plen);
				o += plen;
			}
			out[o++] = in[i];
			at_start = in[i] == '\n';
			if (o > sizeof(out) - plen - 2) {
				write_all(fd, out, o);
				o = 0;
			}
		}
		write_all(fd, out, o);
	}
	close(fd);
	printf("served: connection closed by peer\n");
	return 0;
}

/* Read one line (without its newline) byte by byte, so that nothing after
 * it is consumed; waits at most 10 s. Returns its length, -1 on EOF. */
static int read_line(int fd, char *buf, size_t cap)
{
	size_t n = 0;

	while (n + 1 < cap) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		char c;

		if (poll(&p, 1, 10000) <= 0)
			return -1;
		ssize_t r = read(fd, &c, 1);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		if (c == '\n')
			break;
		buf[n++] = c;
	}
	buf[n] = 0;
	return (int)n;
}

/* Connect to PATH (and do the CONNECT handshake for vsock port vport if
 * vport >= 0) or to ip:port over TCP; retry for up to 100 s. */
static int connect_retrying(const char *path, long vport, const char *ip, long port)
{
	struct sockaddr_storage ss;
	socklen_t len = make_addr(&ss, path, ip, port);
	time_t deadline = time(NULL) + 100;
	char line[128];

	for (;;) {
		int fd = socket(path ? AF_UNIX : AF_INET, SOCK_STREAM, 0);

		if (fd < 0)
			die("socket");
		if (connect(fd, (struct sockaddr *)&ss, len) == 0) {
			if (!path)
				return fd;
			int n = snprintf(line, sizeof(line), "CONNECT %ld\n", vport);

			write_all(fd, line, (size_t)n);
			if (read_line(fd, line, sizeof(line)) > 0 && strncmp(line, "OK ", 3) == 0) {
				printf("handshake: %s\n", line);
				return fd;
			}
		}
		if (time(NULL) >= deadline) {
			fprintf(stderr, "ember-uds-echo: no connection within 100 s\n");
			exit(2);
		}
		close(fd);
		usleep(250 * 1000);
	}
}

/* Send LINE COUNT times, read the answers as they come, report. */
static int client(int fd, const char *line, long count)
{
	size_t llen = strlen(line) + 1;	/* with the newline */
	char *msg = malloc(llen), first[MAX_LINE + 1] = "", cur[MAX_LINE + 1];
	size_t cur_len = 0, sent_bytes = 0, total = llen * (size_t)count;
	long replies = 0, identical = 1;

	if (!msg)
		die("malloc");
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0)
		die("fcntl");
	memcpy(msg, line, llen - 1);
	msg[llen - 1] = '\n';
	while (replies < count) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int r;

		if (sent_bytes < total)
			p.events |= POLLOUT;
		r = poll(&p, 1, 30000);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			fprintf(stderr, "ember-uds-echo: no progress for 30 s\n");
			break;
		}
		if (p.revents & POLLOUT) {
			char buf[8192];
			size_t n = 0;

			while (n < sizeof(buf) && sent_bytes + n < total) {
				size_t at = (sent_bytes + n) % llen;
				size_t take = llen - at;

				if (take > sizeof(buf) - n)
					take = sizeof(buf) - n;
				if (take > total - sent_bytes - n)
					take = total - sent_bytes - n;
				memcpy(buf + n, msg + at, take);
				n += take;
			}
			ssize_t w = write(fd, buf, n);

			if (w < 0 && errno != EAGAIN && errno != EINTR)
				die("write");
			if (w > 0)
				sent_bytes += (size_t)w;
		}
		if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
			char buf[8192];
			ssize_t n = read(fd, buf, sizeof(buf));

			if (n < 0 && (errno == EINTR || errno == EAGAIN))
				continue;
			if (n <= 0) {
				fprintf(stderr, "ember-uds-echo: connection closed early\n");
				break;
			}
			for (ssize_t i = 0; i < n; i++) {
				if (buf[i] != '\n') {
					if (cur_len == MAX_LINE) {
						fprintf(stderr, "ember-uds-echo: reply too long\n");
						return 1;
					}
					cur[cur_len++] = buf[i];
					continue;
				}
				cur[cur_len] = 0;
				if (replies == 0)
					memcpy(first, cur, cur_len + 1);
				else if (strcmp(first, cur) != 0)
					identical = 0;
				replies++;
				cur_len = 0;
			}
		}
	}
	close(fd);
	printf("first reply: %s\n", first);
	printf("replies: %ld of %ld, identical: %s\n", replies, count, identical ? "yes" : "no");
	size_t flen = strlen(first);
	int tail_ok = flen >= llen - 1 && strcmp(first + flen - (llen - 1), line) == 0;
	return replies == count && identical && tail_ok ? 0 : 1;
}

int main(int argc, char **argv)
{
	alarm(180);
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 4 && strcmp(argv[1], "serve") == 0)
		return serve(argv[2], 0, argv[3]);
	if (argc == 4 && strcmp(argv[1], "tcp-serve") == 0)
		return serve(NULL, number(argv[2]), argv[3]);
	if (argc == 6 && strcmp(argv[1], "connect") == 0)
		return client(connect_retrying(argv[2], number(argv[3]), NULL, 0), argv[4],
			      number(argv[5]));
	if (argc == 6 && strcmp(argv[1], "tcp-connect") == 0)
		return client(connect_retrying(NULL, -1, argv[2], number(argv[3])), argv[4],
			      number(argv[5]));
	fprintf(stderr, "usage: ember-uds-echo serve PATH PREFIX | tcp-serve PORT PREFIX\n"
			"       ember-uds-echo connect UDS_PATH PORT LINE COUNT\n"
			"       ember-uds-echo tcp-connect IPV4 PORT LINE COUNT\n");
	return 2;
}
