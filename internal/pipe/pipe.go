// Package pipe joins two connections both ways: the SSH tunnel's forwards
// and the migration relay's ends do it alike. A direction that ends
// half-closes its writer (QEMU's return path in post-copy needs the
// connection open the other way until the job ends); one that breaks, or a
// context that ends, closes both.
package pipe

import (
	"context"
	"errors"
	"io"
	"net"
)

// Join copies a to b and b to a until both directions end, or ctx does.
func Join(ctx context.Context, a, b net.Conn) error {
	return Both(ctx, a, b, func() error { return Copy(a, b) }, func() error { return Copy(b, a) })
}

// Both runs the two directions of a connection pair, forth and back, until
// both end; a broken direction ends the other too, and ctx ends both by
// closing a and b.
func Both(ctx context.Context, a, b net.Conn, forth, back func() error) error {
	stop := context.AfterFunc(ctx, func() { a.Close(); b.Close() })
	defer stop()
	errs := make(chan error, 2)
	run := func(f func() error) {
		err := f()
		if err != nil {
			a.Close()
			b.Close()
		}
		errs <- err
	}
	go run(forth)
	go run(back)
	err := errors.Join(<-errs, <-errs)
	a.Close()
	b.Close()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// Copy copies src to dst and then half-closes dst, so the other end sees
// the end of this direction while the other still runs.
func Copy(dst, src net.Conn) error {
	_, err := io.Copy(dst, src)
	CloseWrite(dst)
	if IsClosed(err) {
		return nil
	}
	return err
}

// CloseWrite half-closes c where it can be.
func CloseWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// IsClosed says err is only an end closing: how a stream ends when the job
// is over, or the other direction closed both.
func IsClosed(err error) bool {
	return err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed)
}
