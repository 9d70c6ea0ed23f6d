/* An HTTPS client with OpenSSL linked in statically (the shape of nginx or node builds that
 * carry their own TLS library): `static_client <port> <n> <pause>` makes one request for
 * /warm, sleeps <pause> seconds, then makes <n> requests for /ok, each on a new connection,
 * and exits non-zero if any fails. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int get(SSL_CTX *ctx, int port, const char *path) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) return -1;
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) return -1;
    char req[256];
    int len = snprintf(req, sizeof req,
                       "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", path);
    if (SSL_write(ssl, req, len) != len) return -1;
    char buf[4096];
    int got = 0, n;
    while ((n = SSL_read(ssl, buf + got, sizeof buf - 1 - got)) > 0) got += n;
    buf[got] = 0;
    SSL_shutdown(ssl);
    SSL_free(ssl);
    close(fd);
    return strncmp(buf, "HTTP/1.1 200", 12) == 0 ? 0 : -1;
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    int port = atoi(argv[1]), n = atoi(argv[2]), pause = atoi(argv[3]);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (get(ctx, port, "/warm") != 0) return 1;
    sleep(pause);
    for (int i = 0; i < n; i++)
        if (get(ctx, port, "/ok") != 0) return 1;
    puts("done");
    return 0;
}
