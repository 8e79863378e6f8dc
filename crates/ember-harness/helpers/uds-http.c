/*
 * uds-http: one HTTP/1.1 request over a Unix socket, for driving ember's
 * API from inside the nested host, where there is no curl.
 *
 *   uds-http SOCKET METHOD PATH [BODY]
 *
 * Prints "HTTP <status>" on the first line, then the response body, and
 * exits 0 for a 2xx status, 1 for any other status, 2 on a local error.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: %s SOCKET METHOD PATH [BODY]\n", argv[0]);
        return 2;
    }
    const char *body = argc == 5 ? argv[4] : "";
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(argv[1]) >= sizeof(addr.sun_path)) {
        fprintf(stderr, "uds-http: socket path too long\n");
        return 2;
    }
    strcpy(addr.sun_path, argv[1]);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        perror("uds-http: connect");
        return 2;
    }
    char head[1024];
    int n = snprintf(head, sizeof(head),
                     "%s %s HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
                     "Connection: close\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n",
                     argv[2], argv[3], strlen(body));
    if (n < 0 || (size_t)n >= sizeof(head) || write_all(fd, head, (size_t)n) < 0 ||
        write_all(fd, body, strlen(body)) < 0) {
        perror("uds-http: write");
        return 2;
    }
    static char resp[1 << 16];
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, resp + len, sizeof(resp) - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
        if (len == sizeof(resp) - 1)
            break;
    }
    resp[len] = 0;
    int status = 0;
    if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1) {
        fprintf(stderr, "uds-http: bad response: %s\n", resp);
        return 2;
    }
    char *b = strstr(resp, "\r\n\r\n");
    printf("HTTP %d\n%s\n", status, b ? b + 4 : "");
    return status >= 200 && status < 300 ? 0 : 1;
}
