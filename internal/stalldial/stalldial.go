// Package stalldial makes TCP connections that give up on a dead link in
// seconds. A laptop that leaves its network keeps its connections open:
// what it sends waits for acknowledgements that never come, and the kernel
// retransmits with a growing backoff for a quarter of an hour before it
// says so, while a request in flight simply hangs. TCP_USER_TIMEOUT bounds
// how long sent data may stay unacknowledged; past it the connection
// fails, and the next request dials afresh once the link is back.
package stalldial

import (
	"context"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// Limit is how long data sent on a connection may go unacknowledged.
const Limit = 20 * time.Second

// Dial is how an http.Transport dials (nil: the system's dialer).
type Dial func(ctx context.Context, network, addr string) (net.Conn, error)

// Wrap returns dial with Limit set on every TCP connection it makes.
func Wrap(dial Dial) Dial {
	if dial == nil {
		dial = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 15 * time.Second}).DialContext
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if tc, ok := c.(*net.TCPConn); ok {
			if err := setUserTimeout(tc, Limit); err != nil {
				c.Close()
				return nil, err
			}
		}
		return c, nil
	}
}

func setUserTimeout(c *net.TCPConn, d time.Duration) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d.Milliseconds()))
	}); err != nil {
		return err
	}
	return serr
}
