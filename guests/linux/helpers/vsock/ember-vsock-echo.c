/*
 * ember-vsock-echo: the guest-side (L2) socket tool of Ember's virtio tests
 * (crates/ember/tests/linux_virtio.rs). Speaks a line-echo protocol over
 * AF_VSOCK streams, or over TCP for the virtio-net test.
 *
 *   ember-vsock-echo listen PORT PREFIX
 *   ember-vsock-echo tcp-listen PORT PREFIX
 *       Accept one connection and answer every line L with PREFIX L until
 *       the peer closes. Prints "listening ..." once bound.
 *   ember-vsock-echo connect CID PORT LINE COUNT
 *   ember-vsock-echo tcp-connect IPV4 PORT LINE COUNT
 *       Connect (retrying for up to 100 s while nobody listens), send LINE
 *       COUNT times while reading the answers, half-close the connection
 *       (shutdown SHUT_WR: the peer sees the end of the stream while its
 *       last answers are still on the way back), and print
 *           first reply: <the first line received>
 *           replies: <received> of <COUNT>, identical: yes|no
 *       Exit status 0 only if COUNT identical replies ending in LINE came
 *       back.
 *
 * Not freestanding: link it statically (gcc -static), as the test does
 * with ember_harness::static_c_program. scripts/guest/build-helpers.sh
 * does not build this directory (it builds only the libc-free .c files
 * right in helpers/ into every guest image). Everything stops after 180 s
 * (alarm), so a lost peer cannot hang a test.
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
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define MAX_LINE 4096

static void die(const char *what)
{
	fprintf(stderr, "ember-vsock-echo: %s: %s\n", what, strerror(errno));
	exit(2);
}

static long number(const char *s)
{
	char *end;
	long v = strtol(s, &end, 0);

	if (!*s || *end || v < 0) {
		fprintf(stderr, "ember-vsock-echo: bad number %s\n", s);
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

/* Fill the address for a vsock (tcp == 0) or TCP endpoint. */
static socklen_t make_addr(struct sockaddr_storage *ss, int tcp, const char *host, long port)
{
	memset(ss, 0, sizeof(*ss));
	if (tcp) {
		struct sockaddr_in *in = (struct sockaddr_in *)ss;

		in->sin_family = AF_INET;
		in->sin_port = htons((unsigned short)port);
		if (host && inet_pton(AF_INET, host, &in->sin_addr) != 1) {
			fprintf(stderr, "ember-vsock-echo: bad address %s\n", host);
			exit(2);
		}
		return sizeof(*in);
	} else {
		struct sockaddr_vm *vm = (struct sockaddr_vm *)ss;

		vm->svm_family = AF_VSOCK;
		vm->svm_port = (unsigned int)port;
		vm->svm_cid = host ? (unsigned int)number(host) : VMADDR_CID_ANY;
		return sizeof(*vm);
	}
}

/* Echo server: one connection, PREFIX before every line, until EOF. */
static int serve(int tcp, long port, const char *prefix)
{
	struct sockaddr_storage ss;
	socklen_t len = make_addr(&ss, tcp, NULL, port);
	int one = 1, at_start = 1;
	char in[8192], out[8192 * 2 + 256];
	size_t plen = strlen(prefix);
	int ls = socket(tcp ? AF_INET : AF_VSOCK, SOCK_STREAM, 0);
	int fd;

	if (plen > 200) {
		fprintf(stderr, "ember-vsock-echo: prefix too long\n");
		return 2;
	}
	if (ls < 0)
		die("socket");
	if (tcp)
		setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(ls, (struct sockaddr *)&ss, len) < 0)
		die("bind");
	if (listen(ls, 1) < 0)
		die("listen");
	printf("listening on %s port %ld\n", tcp ? "tcp" : "vsock", port);
	fflush(stdout);
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
		/* Flush whenever the buffer may not hold one more prefix. */
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

static int connect_retrying(int tcp, const char *host, long port)
{
	struct sockaddr_storage ss;
	socklen_t len = make_addr(&ss, tcp, host, port);
	time_t deadline = time(NULL) + 100;

	for (;;) {
		int fd = socket(tcp ? AF_INET : AF_VSOCK, SOCK_STREAM, 0);

		if (fd < 0)
			die("socket");
		if (connect(fd, (struct sockaddr *)&ss, len) == 0)
			return fd;
		if (time(NULL) >= deadline)
			die("connect");
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
	/* Non-blocking: a write must never wait while answers pile up. */
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
			fprintf(stderr, "ember-vsock-echo: no progress for 30 s\n");
			break;
		}
		if (p.revents & POLLOUT) {
			char buf[8192];
			size_t n = 0;

			/* As much of the remaining stream as fits in buf. */
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
			if (sent_bytes == total && shutdown(fd, SHUT_WR) < 0)
				die("shutdown");
		}
		if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
			char buf[8192];
			ssize_t n = read(fd, buf, sizeof(buf));

			if (n < 0 && (errno == EINTR || errno == EAGAIN))
				continue;
			if (n <= 0) {
				fprintf(stderr, "ember-vsock-echo: connection closed early\n");
				break;
			}
			for (ssize_t i = 0; i < n; i++) {
				if (buf[i] != '\n') {
					if (cur_len == MAX_LINE) {
						fprintf(stderr, "ember-vsock-echo: reply too long\n");
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
	if (argc == 4 && strcmp(argv[1], "listen") == 0)
		return serve(0, number(argv[2]), argv[3]);
	if (argc == 4 && strcmp(argv[1], "tcp-listen") == 0)
		return serve(1, number(argv[2]), argv[3]);
	if (argc == 6 && strcmp(argv[1], "connect") == 0)
		return client(connect_retrying(0, argv[2], number(argv[3])), argv[4], number(argv[5]));
	if (argc == 6 && strcmp(argv[1], "tcp-connect") == 0)
		return client(connect_retrying(1, argv[2], number(argv[3])), argv[4], number(argv[5]));
	fprintf(stderr, "usage: ember-vsock-echo listen|tcp-listen PORT PREFIX\n"
			"       ember-vsock-echo connect CID PORT LINE COUNT\n"
			"       ember-vsock-echo tcp-connect IPV4 PORT LINE COUNT\n");
	return 2;
}
