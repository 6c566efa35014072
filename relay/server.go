package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Protocol names this relay's wire format in the HTTP upgrade; a later
// format gets a new name, and a server that does not know the one asked
// for answers 426 with the one it knows.
const Protocol = "handoff-relay/3"

// Host is how a relay end reaches QEMU on its own host: the source QEMU
// sends to a port the relay listens on, the destination QEMU listens on the
// same port. Both are on 127.0.0.1, so nothing but the relay's own
// connection crosses the link.
type Host struct {
	Listen func(port int) (net.Listener, error)
	Dial   func(ctx context.Context, port int) (net.Conn, error)
}

// Loopback is the Host of a process in the host's own network namespace.
func Loopback() Host {
	return Host{
		Listen: func(port int) (net.Listener, error) {
			return net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		},
		Dial: func(ctx context.Context, port int) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		},
	}
}

// listenerGrace is how long a port stays open for the source QEMU after
// its last session ended: a post-copy resume reconnects to the same port
// once the workstation has opened a session again.
const listenerGrace = 2 * time.Minute

// Handler is the server's end of the relay, which 'handoff serve' mounts
// under /v1/relay/ behind its tokens. The workstation opens every
// connection (a laptop behind NAT can still take its VM):
//
//	GET send?port=P     the server's QEMU sends: the server listens on P (0:
//	                    any free port, named in the Relay-Port header) and
//	                    each QEMU connection there rides one such session,
//	                    compressed; the workstation keeps one waiting.
//	GET receive?port=P  the server's QEMU listens on P: the session's
//	                    frames go to it.
//	GET free?port=P     204 when P is free here, 409 when taken.
//
// Sessions are HTTP/1.1 upgrades to Protocol. ctx ends every session and
// listener.
func Handler(ctx context.Context, host Host) http.Handler {
	h := &handler{ctx: ctx, host: host, ports: map[int]*sharedListener{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /send", h.send)
	mux.HandleFunc("GET /receive", h.receive)
	mux.HandleFunc("GET /free", h.free)
	return mux
}

type handler struct {
	ctx  context.Context
	host Host

	mu    sync.Mutex
	ports map[int]*sharedListener
}

func portParam(r *http.Request) (int, error) {
	p, err := strconv.Atoi(r.URL.Query().Get("port"))
	if err != nil || p < 0 || p > 65535 {
		return 0, fmt.Errorf("port=%q: give a TCP port", r.URL.Query().Get("port"))
	}
	return p, nil
}

func (h *handler) free(w http.ResponseWriter, r *http.Request) {
	port, err := portParam(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	h.mu.Lock()
	_, ours := h.ports[port]
	h.mu.Unlock()
	if ours {
		http.Error(w, "port in use by another relay", http.StatusConflict)
		return
	}
	ln, err := h.host.Listen(port)
	if err != nil {
		http.Error(w, err.Error(), http.StatusConflict)
		return
	}
	ln.Close()
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) send(w http.ResponseWriter, r *http.Request) {
	port, ok := sessionPort(w, r)
	if !ok {
		return
	}
	ln, err := h.acquire(port)
	if err != nil {
		http.Error(w, fmt.Sprintf("listen for QEMU on port %d of the server: %v", port, err), http.StatusConflict)
		return
	}
	defer h.release(ln)
	link, err := upgrade(w, map[string]string{"Relay-Port": strconv.Itoa(ln.port)})
	if err != nil {
		return
	}
	defer link.Close()
	qemu, err := ln.next(h.ctx, link)
	if err != nil {
		return // the workstation left, or serve stops
	}
	if refs := mirrorOf(r.URL.Query()); refs != nil {
		qemu = encodeFrom(qemu, refs)
	}
	Send(h.ctx, qemu, link, &Stats{})
}

func (h *handler) receive(w http.ResponseWriter, r *http.Request) {
	port, ok := sessionPort(w, r)
	if !ok {
		return
	}
	qemu, err := h.host.Dial(r.Context(), port)
	if err != nil {
		http.Error(w, fmt.Sprintf("reach the destination QEMU on port %d of the server: %v", port, err), http.StatusBadGateway)
		return
	}
	link, err := upgrade(w, nil)
	if err != nil {
		qemu.Close()
		return
	}
	defer link.Close()
	if refs := mirrorOf(r.URL.Query()); refs != nil {
		qemu = decodeInto(qemu, refs)
	}
	Receive(h.ctx, link, qemu, &Stats{})
}

// sessionPort reads a session request's port and protocol, answering
// the client itself when either is wrong.
func sessionPort(w http.ResponseWriter, r *http.Request) (int, bool) {
	port, err := portParam(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return 0, false
	}
	return port, wantsProtocol(w, r)
}

// wantsProtocol answers 426 to a client that asks for another protocol.
func wantsProtocol(w http.ResponseWriter, r *http.Request) bool {
	for _, p := range strings.Split(r.Header.Get("Upgrade"), ",") {
		if strings.TrimSpace(p) == Protocol {
			return true
		}
	}
	w.Header().Set("Upgrade", Protocol)
	http.Error(w, fmt.Sprintf("this server's handoff relays %s, not %q: use the same handoff release on both machines", Protocol, r.Header.Get("Upgrade")), http.StatusUpgradeRequired)
	return false
}

// upgrade answers 101 and takes the connection over from net/http.
func upgrade(w http.ResponseWriter, headers map[string]string) (net.Conn, error) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		http.Error(w, "the relay needs HTTP/1.1: "+err.Error(), http.StatusHTTPVersionNotSupported)
		return nil, err
	}
	if brw.Reader.Buffered() > 0 {
		// The client sends nothing before the 101: it is not a relay.
		conn.Close()
		return nil, errors.New("bytes before the upgrade")
	}
	conn.SetDeadline(time.Time{}) // the server's header timeout is not the stream's
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n", Protocol)
	for k, v := range headers {
		fmt.Fprintf(brw, "%s: %s\r\n", k, v)
	}
	brw.WriteString("\r\n")
	if err := brw.Flush(); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// sharedListener is one port the server's QEMU sends to; sessions wait on
// it for the connections QEMU makes.
type sharedListener struct {
	port  int
	ln    net.Listener
	conns chan net.Conn
	users int
	idle  *time.Timer
}

func (h *handler) acquire(port int) (*sharedListener, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s, ok := h.ports[port]; ok && port != 0 {
		s.users++
		s.idle.Stop()
		return s, nil
	}
	ln, err := h.host.Listen(port)
	if err != nil {
		return nil, err
	}
	listenForQEMU(ln)
	s := &sharedListener{port: ln.Addr().(*net.TCPAddr).Port, ln: ln, conns: make(chan net.Conn), users: 1}
	s.idle = time.AfterFunc(listenerGrace, func() { h.expire(s) })
	s.idle.Stop()
	h.ports[s.port] = s
	stop := context.AfterFunc(h.ctx, func() { h.expire(s) })
	go func() {
		defer stop()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case s.conns <- c:
			case <-time.After(10 * time.Second):
				c.Close() // no session came for it: QEMU sees the failure
			}
		}
	}()
	return s, nil
}

func (h *handler) release(s *sharedListener) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.users--; s.users == 0 {
		s.idle.Reset(listenerGrace)
	}
}

func (h *handler) expire(s *sharedListener) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.users > 0 && h.ctx.Err() == nil {
		return
	}
	if h.ports[s.port] == s {
		delete(h.ports, s.port)
	}
	s.ln.Close()
}

// next waits for the source QEMU to connect, or for the session's client to
// go away (its connection read ends while nothing is due from it yet).
func (s *sharedListener) next(ctx context.Context, link net.Conn) (net.Conn, error) {
	gone := watchGone(link)
	select {
	case c := <-s.conns:
		if err := gone.stop(); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	case <-gone.done:
		return nil, gone.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// goneWatch reads a connection on which nothing is due yet: a read that
// ends means the other end went away.
type goneWatch struct {
	conn net.Conn
	done chan struct{}
	got  int
	err  error
}

func watchGone(c net.Conn) *goneWatch {
	g := &goneWatch{conn: c, done: make(chan struct{})}
	go func() {
		defer close(g.done)
		var b [1]byte
		g.got, g.err = c.Read(b[:])
	}()
	return g
}

// stop ends the watch before the connection is used.
func (g *goneWatch) stop() error {
	g.conn.SetReadDeadline(time.Now())
	<-g.done
	g.conn.SetReadDeadline(time.Time{})
	switch {
	case g.got > 0:
		return errors.New("the workstation sent bytes before its stream began")
	case errors.Is(g.err, os.ErrDeadlineExceeded):
		return nil
	case g.err == nil:
		return errors.New("the workstation's session ended")
	}
	return g.err
}
