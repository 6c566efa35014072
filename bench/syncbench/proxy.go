package syncbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Counts are the bytes a Proxy carried: Up from the client to the target
// (the workstation to the server), Down from the target to the client.
type Counts struct {
	Up, Down int64
}

// Sub is what was carried since an earlier snapshot.
func (c Counts) Sub(before Counts) Counts {
	return Counts{Up: c.Up - before.Up, Down: c.Down - before.Down}
}

// Total is both directions together.
func (c Counts) Total() int64 { return c.Up + c.Down }

// Proxy forwards TCP connections from 127.0.0.1 to a target and counts the
// bytes in both directions. Every contender's traffic goes through one, so
// that all are measured the same way, at the socket: TLS, HTTP and rsync's
// own protocol included.
type Proxy struct {
	ln     net.Listener
	target string
	up     atomic.Int64
	down   atomic.Int64

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	active int
	idle   chan struct{} // closed while no connection is open
	closed bool

	wg       sync.WaitGroup
	stopCtx  func() bool
	shutdown sync.Once
}

// StartProxy listens on 127.0.0.1 and forwards every connection to target.
// It stops when ctx ends or Close is called.
func StartProxy(ctx context.Context, target string) (*Proxy, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("start the counting proxy: %w", err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}, idle: make(chan struct{})}
	close(p.idle)
	p.stopCtx = context.AfterFunc(ctx, p.stop)
	p.wg.Go(func() { p.accept(ctx) })
	return p, nil
}

// Addr is the proxy's address, to be dialled instead of the target's.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Counts returns the bytes carried so far; connections still open may add
// more (see WaitIdle).
func (p *Proxy) Counts() Counts {
	return Counts{Up: p.up.Load(), Down: p.down.Load()}
}

// WaitIdle waits until no connection is open, so that Counts include every
// byte of what was measured: a client may return before the proxy has
// counted the last bytes it forwarded.
func (p *Proxy) WaitIdle(ctx context.Context) error {
	p.mu.Lock()
	idle := p.idle
	p.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for the proxied connections to close: %w", ctx.Err())
	}
}

// Close stops accepting, cuts the open connections and waits for every
// goroutine of the proxy to end.
func (p *Proxy) Close() error {
	p.stopCtx()
	p.stop()
	p.wg.Wait()
	return nil
}

func (p *Proxy) stop() {
	p.shutdown.Do(func() {
		p.ln.Close()
		p.mu.Lock()
		p.closed = true
		for c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	})
}

func (p *Proxy) accept(ctx context.Context) {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed: stop was called
		}
		if !p.track(c, true) {
			c.Close()
			return
		}
		p.wg.Go(func() { p.forward(ctx, c) })
	}
}

// track adds or removes a connection; it refuses new ones once stopped.
func (p *Proxy) track(c net.Conn, add bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		if p.closed {
			return false
		}
		p.conns[c] = struct{}{}
		return true
	}
	delete(p.conns, c)
	return true
}

// open and done count the client connections being forwarded, for WaitIdle.
func (p *Proxy) open() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.active == 0 {
		p.idle = make(chan struct{})
	}
	p.active++
}

func (p *Proxy) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.active--
	if p.active == 0 {
		close(p.idle)
	}
}

func (p *Proxy) forward(ctx context.Context, client net.Conn) {
	p.open()
	defer p.done()
	defer func() {
		client.Close()
		p.track(client, false)
	}()
	var d net.Dialer
	server, err := d.DialContext(ctx, "tcp", p.target)
	if err != nil {
		return // the client sees its connection closed, as with a dead server
	}
	if !p.track(server, true) {
		server.Close()
		return
	}
	defer func() {
		server.Close()
		p.track(server, false)
	}()
	var wg sync.WaitGroup
	wg.Go(func() { pipe(server, client, &p.up) })
	pipe(client, server, &p.down)
	wg.Wait()
}

// pipe copies src to dst, counting, then passes the end of the stream on
// as a half-close: a zstd or rsync receiver needs to see EOF while its
// answer still flows the other way.
func pipe(dst, src net.Conn, n *atomic.Int64) {
	buf := make([]byte, 256<<10)
	for {
		r, err := src.Read(buf)
		if r > 0 {
			w, werr := dst.Write(buf[:r])
			n.Add(int64(w))
			if werr != nil {
				src.Close()
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if cw, ok := dst.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite()
					return
				}
			}
			dst.Close()
			return
		}
	}
}

// cpuTimes is the CPU time a transfer took on each side. Server is zero
// when it cannot be told apart (a server in this process).
type cpuTimes struct {
	Workstation, Server time.Duration
}

// measured is one transfer: the bytes through the proxy, the time it
// took, and the CPU time on each side.
type measured struct {
	Counts
	cpuTimes
	Time time.Duration
	Busy time.Duration // how long bytes flowed to the workstation, where measured
}

// measure runs transfer against target and measures it: transfer gets the
// address to use and returns the CPU time it knows of.
type measure func(ctx context.Context, target string, transfer func(addr string) (cpuTimes, error)) (measured, error)

// throughProxy runs transfer against a fresh counting proxy to target and
// measures it. transfer gets the proxy's address and returns the CPU time
// it knows of; the bytes are counted once every connection has closed.
func throughProxy(ctx context.Context, target string, transfer func(addr string) (cpuTimes, error)) (measured, error) {
	p, err := StartProxy(ctx, target)
	if err != nil {
		return measured{}, err
	}
	defer p.Close()
	start := time.Now()
	cpu, err := transfer(p.Addr())
	elapsed := time.Since(start)
	if err != nil {
		return measured{}, err
	}
	if err := p.WaitIdle(ctx); err != nil {
		return measured{}, err
	}
	return measured{Counts: p.Counts(), cpuTimes: cpu, Time: elapsed}, nil
}
