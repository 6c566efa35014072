package relay

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// hostOn is a Host on one loopback address: the test's "server" and
// "workstation" are two, so each can listen on the same port.
func hostOn(ip string) Host {
	return Host{
		Listen: func(port int) (net.Listener, error) {
			return net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
		},
		Dial: func(ctx context.Context, port int) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
		},
	}
}

// startServer runs the relay's server end behind real TLS, as serve mounts
// it, on a link of linkRate bytes/s each way.
func startServer(t *testing.T, host Host, linkRate float64) Server {
	t.Helper()
	_, s := startTLSServer(t, host, linkRate)
	return s
}

// startTLSServer is startServer with the server itself, for its certificate.
func startTLSServer(t *testing.T, host Host, linkRate float64) (*httptest.Server, Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	mux := http.NewServeMux()
	mux.Handle("/v1/relay/", http.StripPrefix("/v1/relay", Handler(ctx, host)))
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener = slowListener{srv.Listener, linkRate}
	srv.StartTLS()
	t.Cleanup(func() { cancel(); srv.Close() })
	return srv, Server{URL: srv.URL, Token: "t", TLS: srv.Client().Transport.(*http.Transport).TLSClientConfig,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &slowConn{Conn: c, rate: linkRate}, nil
		}}
}

// slowConn writes at most rate bytes/s: a link the relay must fill.
type slowConn struct {
	net.Conn
	rate float64
}

func (c *slowConn) Write(p []byte) (int, error) {
	time.Sleep(time.Duration(float64(len(p)) / c.rate * float64(time.Second)))
	return c.Conn.Write(p)
}

type slowListener struct {
	net.Listener
	rate float64
}

func (l slowListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &slowConn{Conn: c, rate: l.rate}, nil
}

// guestMemory is a stream like a migration's: text-like pages that
// compress, and random ones that do not.
func guestMemory(size int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, size)
	words := []string{"kernel ", "page ", "cache ", "systemd ", "\x00\x00\x00\x00", "libc.so.6 ", "handoff "}
	for off := 0; off < size; off += 4096 {
		page := b[off:min(off+4096, size)]
		if off/4096%4 == 3 {
			for i := range page {
				page[i] = byte(r.Uint32())
			}
			continue
		}
		for i := 0; i < len(page); {
			i += copy(page[i:], words[r.IntN(len(words))])
		}
	}
	return b
}

// migrate plays both QEMUs over a carried port: the source sends memory and
// half-closes, the destination answers on the return path with the sum of
// what it got, as post-copy's requests go the other way.
func migrate(t *testing.T, source, destination Host, port int, memory []byte) {
	t.Helper()
	ln, err := destination.Listen(port)
	if err != nil {
		t.Fatalf("the destination QEMU cannot listen on %d: %v", port, err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		h := sha256.New()
		n, err := io.Copy(h, c)
		sum := fmt.Sprintf("%d %x", n, h.Sum(nil))
		if err != nil {
			sum = err.Error()
		}
		io.WriteString(c, sum)
		c.(*net.TCPConn).CloseWrite()
		got <- sum
	}()
	src, err := source.Dial(context.Background(), port)
	if err != nil {
		t.Fatalf("the source QEMU cannot reach its relay on %d: %v", port, err)
	}
	defer src.Close()
	if _, err := src.Write(memory); err != nil {
		t.Fatalf("send memory: %v", err)
	}
	src.(*net.TCPConn).CloseWrite()
	answer, err := io.ReadAll(src)
	if err != nil {
		t.Fatalf("read the return path: %v", err)
	}
	want := fmt.Sprintf("%d %x", len(memory), sha256.Sum256(memory))
	if d := <-got; d != want {
		t.Fatalf("the destination got %s, want %s", d, want)
	}
	if string(answer) != want {
		t.Fatalf("the return path carried %q, want %q", answer, want)
	}
}

// direction is one way a stream goes: a grab, the server's QEMU the
// source, or a hand back, the workstation's.
type direction struct {
	name                string
	toServer            bool
	source, destination Host
}

func directions(server, workstation Host) []direction {
	return []direction{
		{"grab: the server's QEMU sends", false, server, workstation},
		{"hand back: the workstation's QEMU sends", true, workstation, server},
	}
}

func TestCarrierMovesStreamsBothWaysCompressed(t *testing.T) {
	server, workstation := hostOn("127.0.0.2"), hostOn("127.0.0.1")
	srv := startServer(t, server, 8e6)
	memory := guestMemory(16 << 20)
	for _, tc := range directions(server, workstation) {
		t.Run(tc.name, func(t *testing.T) {
			stats := &Stats{}
			c := &Carrier{Server: srv, Local: workstation, ToServer: tc.toServer, Stats: stats}
			port, stop, err := c.Carry(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer stop()
			migrate(t, tc.source, tc.destination, port, memory)
			// A post-copy resume connects to the same port again.
			migrate(t, tc.source, tc.destination, port, memory[:1<<20])
			raw, wire := stats.Raw.Load(), stats.Wire.Load()
			if raw != uint64(len(memory)+1<<20) {
				t.Errorf("the workstation's end counted %d stream bytes, want %d", raw, len(memory)+1<<20)
			}
			// A quarter of the pages are random: at best about 0.25 + 0.75/4.
			if r := stats.Ratio(); r > 0.6 {
				mode, why := stats.Mode()
				t.Errorf("the link carried %d bytes for %d (%.2f): not compressed (%v: %s)", wire, raw, r, mode, why)
			}
			stop()
			if c, err := tc.source.Dial(context.Background(), port); err == nil && !tc.toServer {
				c.Close() // the server keeps its port a while for a resume
			} else if err == nil {
				c.Close()
				t.Error("the workstation still listens after stop")
			}
		})
	}
}

func TestCarrierSaysWhenTheServerIsOlder(t *testing.T) {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	c := &Carrier{Server: Server{URL: srv.URL, TLS: srv.Client().Transport.(*http.Transport).TLSClientConfig}, Local: hostOn("127.0.0.1")}
	for _, toServer := range []bool{false, true} {
		c.ToServer = toServer
		if _, _, err := c.Carry(context.Background()); !errors.Is(err, ErrNoRelay) {
			t.Errorf("to server %v: %v, want ErrNoRelay", toServer, err)
		}
	}
}

func TestServerForgetsASessionWhoseWorkstationLeft(t *testing.T) {
	server, workstation := hostOn("127.0.0.2"), hostOn("127.0.0.1")
	srv := startServer(t, server, 1e9)
	c := &Carrier{Server: srv, Local: workstation}
	port, stop, err := c.Carry(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	stop() // the workstation's waiting session goes away
	// The server's next waiting session is a new workstation's; the old
	// one must not take the source QEMU's connection and lose it.
	c2 := &Carrier{Server: srv, Local: workstation}
	link, _, err := c2.Server.session(context.Background(), "send", port, nil)
	if err != nil {
		t.Fatal(err)
	}
	spareStats := &Stats{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		started := make(chan struct{})
		c2.Stats = spareStats
		c2.receiveOn(&way{life: context.Background()}, link, port, started)
	}()
	time.Sleep(100 * time.Millisecond) // the old session's end reaches the server
	ln, err := workstation.Listen(port)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	src, err := server.Dial(context.Background(), port)
	if err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte("page "), 1000)
	src.Write(msg)
	src.(*net.TCPConn).CloseWrite()
	dst, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(dst)
	dst.Close()
	src.Close()
	<-done
	if !bytes.Equal(got, msg) {
		t.Fatalf("the destination got %d bytes, want %d: the stream went to a session that was gone", len(got), len(msg))
	}
}

func TestServerAnswersAnotherRelayVersionWithItsOwn(t *testing.T) {
	h := Handler(context.Background(), hostOn("127.0.0.2"))
	for _, path := range []string{"/send?port=0", "/receive?port=1"} {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "handoff-relay/9")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusUpgradeRequired || rec.Header().Get("Upgrade") != Protocol || !strings.Contains(rec.Body.String(), "same handoff release") {
			t.Errorf("%s with relay/9: %d %q %q, want 426 naming %s and what to do", path, rec.Code, rec.Header().Get("Upgrade"), rec.Body.String(), Protocol)
		}
	}
}

func TestQEMUsConnectionHoldsLittle(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	listenForQEMU(ln)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var mss int
	control(c, func(fd int) { mss, _ = unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_MAXSEG) })
	if mss == 0 || mss > segmentFromQEMU {
		t.Errorf("QEMU's side segments %d bytes, want at most %d: its send buffer grows with them", mss, segmentFromQEMU)
	}
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	var rcv int
	control(a, func(fd int) { rcv, _ = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF) })
	if rcv == 0 || rcv > 2*queuedFromQEMU {
		t.Errorf("the relay's side buffers %d bytes from QEMU, want at most %d", rcv, 2*queuedFromQEMU)
	}
}

// A hand back whose destination QEMU the server cannot reach: QEMU here
// sees only its connection close, and the way's stop says why.
func TestCarrierSaysWhatBrokeAStream(t *testing.T) {
	server, workstation := hostOn("127.0.0.2"), hostOn("127.0.0.1")
	srv := startServer(t, server, 1e9) // nothing listens on the server's port
	c := &Carrier{Server: srv, Local: workstation, ToServer: true}
	port, stop, err := c.Carry(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	qemu, err := workstation.Dial(context.Background(), port)
	if err != nil {
		t.Fatal(err)
	}
	qemu.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(qemu); err != nil {
		t.Fatalf("the source QEMU's connection: %v, want it closed", err)
	}
	qemu.Close()
	err = stop()
	if err == nil || !strings.Contains(err.Error(), "reach the destination QEMU on port "+strconv.Itoa(port)) {
		t.Fatalf("stop() = %v, want the server's reason", err)
	}

	// A way that carried nothing and was stopped broke nothing.
	_, stop, err = (&Carrier{Server: srv, Local: workstation}).Carry(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatalf("stop() of an idle way = %v, want nil", err)
	}
}

// NBD's server speaks first: the disks' mirror goes through the relay only
// if the far end dials its QEMU before the source has sent a byte.
func TestCarrierCarriesAProtocolWhoseServerSpeaksFirst(t *testing.T) {
	server, workstation := hostOn("127.0.0.2"), hostOn("127.0.0.1")
	srv := startServer(t, server, 8e6)
	for _, tc := range directions(server, workstation) {
		t.Run(tc.name, func(t *testing.T) {
			port, ln := carryTo(t, &Carrier{Server: srv, Local: workstation, ToServer: tc.toServer}, tc.destination)
			request := make(chan string, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					request <- err.Error()
					return
				}
				defer c.Close()
				io.WriteString(c, "NBDMAGIC")
				b := make([]byte, 4)
				_, err = io.ReadFull(c, b)
				request <- string(b)
			}()
			src, err := tc.source.Dial(context.Background(), port)
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			src.SetReadDeadline(time.Now().Add(5 * time.Second))
			greeting := make([]byte, 8)
			if _, err := io.ReadFull(src, greeting); err != nil || string(greeting) != "NBDMAGIC" {
				t.Fatalf("the client read %q, %v before it sent anything; want the server's greeting", greeting, err)
			}
			io.WriteString(src, "opts")
			if got := <-request; got != "opts" {
				t.Errorf("the server got %q, want the client's answer", got)
			}
		})
	}
}

// carryTo opens c's way and listens at its far end as the destination
// QEMU would; both end with the test.
func carryTo(t *testing.T, c *Carrier, destination Host) (int, net.Listener) {
	t.Helper()
	port, stop, err := c.Carry(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stop() })
	ln, err := destination.Listen(port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return port, ln
}
