package relay

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNoRelay says the server's handoff has no relay: it is older than the
// workstation's. The migration then goes as before, uncompressed.
var ErrNoRelay = errors.New("the server's handoff serve has no migration relay (it is older than this handoff): update it there; until then memory moves uncompressed")

// Server is 'handoff serve' as the workstation reaches it.
type Server struct {
	URL   string // https://HOST:PORT
	Token string
	TLS   *tls.Config
	// Dial opens the connection to the server; nil: a plain dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// call sends one request for op; with upgrade it asks to switch to
// Protocol and returns the connection on 101. Every call has its own
// connection: a session owns it until the stream ends.
func (s Server) call(ctx context.Context, op string, port int, query url.Values, upgrade bool) (net.Conn, *http.Response, error) {
	base, err := url.Parse(s.URL)
	if err != nil || base.Host == "" {
		return nil, nil, fmt.Errorf("server address %q: give https://HOST:PORT", s.URL)
	}
	dial := s.Dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	raw, err := dial(ctx, "tcp", base.Host)
	if err != nil {
		return nil, nil, fmt.Errorf("reach handoff serve at %s: %w", base.Host, err)
	}
	cfg := s.TLS.Clone()
	if cfg == nil {
		cfg = &tls.Config{}
	}
	cfg.NextProtos = []string{"http/1.1"} // an upgrade is HTTP/1.1's
	if cfg.ServerName == "" {
		cfg.ServerName = base.Hostname()
	}
	conn := tls.Client(raw, cfg)
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	u := base.JoinPath("v1", "relay", op)
	q := url.Values{}
	for k, v := range query {
		q[k] = v
	}
	q.Set("port", strconv.Itoa(port))
	u.RawQuery = q.Encode()
	req, _ := http.NewRequest(http.MethodGet, u.String(), nil)
	req.Header.Set("Authorization", "Bearer "+s.Token)
	if upgrade {
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", Protocol)
	}
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("ask handoff serve at %s for a relay: %w", base.Host, err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("ask handoff serve at %s for a relay: %w", base.Host, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		conn.Close()
		resp.Body = io.NopCloser(strings.NewReader(string(body)))
		if resp.StatusCode == http.StatusNotFound {
			return nil, resp, ErrNoRelay
		}
		return nil, resp, nil
	}
	if br.Buffered() > 0 {
		return &bufferedConn{Conn: conn, r: br}, resp, nil
	}
	return conn, resp, nil
}

// session opens one upgraded connection for op.
func (s Server) session(ctx context.Context, op string, port int, query url.Values) (net.Conn, int, error) {
	conn, resp, err := s.call(ctx, op, port, query, true)
	if err != nil {
		return nil, 0, err
	}
	if conn == nil {
		msg, _ := io.ReadAll(resp.Body)
		return nil, 0, fmt.Errorf("handoff serve refused a relay on port %d (%s): %s", port, resp.Status, strings.TrimSpace(string(msg)))
	}
	if p := resp.Header.Get("Relay-Port"); p != "" {
		port, _ = strconv.Atoi(p)
	}
	return conn, port, nil
}

// free asks whether port is free on the server.
func (s Server) free(ctx context.Context, port int) (bool, error) {
	_, resp, err := s.call(ctx, "free", port, nil, false)
	if err != nil {
		return false, err
	}
	return resp.StatusCode == http.StatusNoContent, nil
}

// bufferedConn reads first what the response's reader took past the
// headers.
type bufferedConn struct {
	net.Conn
	r io.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// NetConn is the connection under the buffer, for socket options.
func (c *bufferedConn) NetConn() net.Conn { return c.Conn }

func (c *bufferedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Carrier is the workstation's end of the relay: it carries a migration's
// memory stream between QEMU here and QEMU on the server, compressed in the
// direction the memory goes. It opens ways for libvirt.Options.Stream.
type Carrier struct {
	Server Server
	// Local reaches this workstation's QEMU (in the lab, inside the
	// workstation's network namespace).
	Local Host
	// ToServer: the VM goes to the server (a hand back); otherwise it
	// comes here.
	ToServer bool
	// Stats, if set, counts what the workstation's end moved.
	Stats *Stats
	// Mirror, if set, makes the way the disks' NBD mirror's, its writes
	// sent as their changes to the chain both hosts hold.
	Mirror *Mirror
}

// query is what a session of c asks serve for besides its port.
func (c *Carrier) query() url.Values {
	if c.Mirror == nil {
		return nil
	}
	return c.Mirror.query()
}

// fromQEMU and intoQEMU are this end's side of a stream: QEMU's
// connection as it is, or a mirror's, coded against the chain here.
func (c *Carrier) fromQEMU(qemu net.Conn) net.Conn {
	if c.Mirror == nil {
		return qemu
	}
	return encodeFrom(qemu, c.Mirror.Here)
}

func (c *Carrier) intoQEMU(qemu net.Conn) net.Conn {
	if c.Mirror == nil {
		return qemu
	}
	return decodeInto(qemu, c.Mirror.Here)
}

// tries is how many ports Carry tries before it gives up: one taken on the
// other host only costs another.
const tries = 5

// Carry opens one way for a migration stream: the source QEMU sends to
// 127.0.0.1:port on its host; each connection made there reaches
// 127.0.0.1:port on the other, where the destination QEMU listens. It lives
// until stop, whatever becomes of ctx: in post-copy the VM pages through it.
// stop returns the first error that broke a stream on the way (QEMU only
// sees its connection close), for a failed job to say why.
func (c *Carrier) Carry(ctx context.Context) (port int, stop func() error, err error) {
	port, _, stop, err = c.open(ctx)
	return port, stop, err
}

// open is Carry, with the way itself for who watches its streams.
func (c *Carrier) open(ctx context.Context) (port int, w *way, stop func() error, err error) {
	life, cancel := context.WithCancel(context.WithoutCancel(ctx))
	w = &way{life: life}
	stop = func() error { cancel(); w.wg.Wait(); return w.err() }
	if c.ToServer {
		port, err = c.carryToServer(ctx, w)
	} else {
		port, err = c.carryFromServer(ctx, w)
	}
	if err != nil {
		stop()
		return 0, nil, nil, err
	}
	return port, w, stop, nil
}

// way is one Carry's life: the goroutines that carry its streams, and the
// first error that broke one while it was meant to run.
type way struct {
	life context.Context
	wg   sync.WaitGroup

	mu    sync.Mutex
	first error

	live  atomic.Int32 // streams carried now
	ended atomic.Int32 // streams carried to their end, or broken
}

// carrying counts one stream while carry carries it.
func (w *way) carrying(carry func() error) error {
	w.live.Add(1)
	defer func() { w.live.Add(-1); w.ended.Add(1) }()
	return carry()
}

// broke keeps err if it is the first, and not only the way's own stop.
func (w *way) broke(err error) {
	if err == nil || w.life.Err() != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.first == nil {
		w.first = err
	}
}

func (w *way) err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.first
}

// carryToServer listens here for our QEMU and opens a session to the
// server for each connection it makes.
func (c *Carrier) carryToServer(ctx context.Context, w *way) (int, error) {
	for range tries {
		ln, err := c.Local.Listen(0)
		if err != nil {
			return 0, fmt.Errorf("listen for QEMU here: %w", err)
		}
		listenForQEMU(ln)
		port := ln.Addr().(*net.TCPAddr).Port
		free, err := c.Server.free(ctx, port)
		if err != nil || !free {
			ln.Close()
			if err != nil {
				return 0, err
			}
			continue
		}
		context.AfterFunc(w.life, func() { ln.Close() })
		w.wg.Go(func() {
			for {
				qemu, err := ln.Accept()
				if err != nil {
					return
				}
				w.wg.Go(func() {
					link, _, err := c.Server.session(w.life, "receive", port, c.query())
					if err != nil {
						w.broke(err)
						qemu.Close() // QEMU fails the job or, in post-copy, pauses it to resume
						return
					}
					w.broke(w.carrying(func() error { return Send(w.life, c.fromQEMU(qemu), link, c.stats()) }))
				})
			}
		})
		return port, nil
	}
	return 0, fmt.Errorf("no port free on both hosts after %d tries", tries)
}

func (c *Carrier) stats() *Stats {
	if c.Stats != nil {
		return c.Stats
	}
	return &Stats{}
}

// carryFromServer has the server listen for its QEMU and keeps one session
// waiting there: when QEMU connects, the waiting one carries it and another
// waits. A broken link ends the waiting one; another is opened until stop,
// for the resume of a post-copy.
func (c *Carrier) carryFromServer(ctx context.Context, w *way) (int, error) {
	var first net.Conn
	var port int
	for range tries {
		link, p, err := c.Server.session(ctx, "send", 0, c.query())
		if err != nil {
			return 0, err
		}
		ln, err := c.Local.Listen(p)
		if err == nil {
			ln.Close()
			first, port = link, p
			break
		}
		link.Close()
	}
	if first == nil {
		return 0, fmt.Errorf("no port free on both hosts after %d tries", tries)
	}
	w.wg.Go(func() {
		spare := first
		for {
			if spare != nil {
				link := spare
				context.AfterFunc(w.life, func() { link.Close() }) // a stop ends its wait for a stream
				started := make(chan struct{})
				w.wg.Go(func() { w.broke(c.receiveOn(w, link, port, started)) })
				select {
				case <-started:
				case <-w.life.Done():
					return
				}
			}
			var err error
			if spare, _, err = c.Server.session(w.life, "send", port, c.query()); err != nil {
				w.broke(err)
				spare = nil
				select {
				case <-w.life.Done():
					return
				case <-time.After(time.Second):
				}
			}
		}
	})
	return port, nil
}

// receiveOn waits on a spare session for the stream's first byte, says so
// on started (closed also if the session ends first), and carries the
// stream into our QEMU. A session that ends before its stream began is no
// error: another waits in its place.
func (c *Carrier) receiveOn(w *way, link net.Conn, port int, started chan struct{}) error {
	defer link.Close()
	var first [1]byte
	_, err := io.ReadFull(link, first[:])
	close(started)
	if err != nil {
		return nil
	}
	return w.carrying(func() error {
		qemu, err := c.Local.Dial(w.life, port)
		if err != nil {
			return fmt.Errorf("reach this workstation's QEMU on port %d: %w", port, err)
		}
		return Receive(w.life, &bufferedConn{Conn: link, r: io.MultiReader(strings.NewReader(string(first[:])), link)}, c.intoQEMU(qemu), c.stats())
	})
}
