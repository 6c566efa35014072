package syncbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/handoff-dev/handoff/internal/netns"
	"github.com/handoff-dev/handoff/testvm/lab"
)

// linkRate is the rate of the bench's shaped link: the lab's default.
const linkRate = "1gbit"

// shapedLink is a network namespace joined to this one by a veth pair.
// The home server runs on its far side, so that handoff's pulls cross a
// real link, which tc can slow to a set rate.
type shapedLink struct {
	ns        string // the namespace: nsPrefix and this process's pid
	near, far string // the veth's ends: here, and in ns
	farAddr   string // the server's address, in ns
}

// nsPrefix names the bench's namespaces; the pid after it says whose.
const nsPrefix = "hsb-"

// linkSupport says why this machine cannot make a shaped link, or "".
func linkSupport() string {
	if os.Geteuid() != 0 {
		return "it needs root"
	}
	for _, t := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Sprintf("it needs %s (Debian package iproute2)", t)
		}
	}
	return ""
}

// newShapedLink makes the namespace and its link, unshaped. Namespaces
// left by a bench that died without cleaning up go first.
func newShapedLink(ctx context.Context) (*shapedLink, error) {
	removeStaleLinks(ctx)
	base, err := freeSubnet()
	if err != nil {
		return nil, err
	}
	tag := strconv.Itoa(os.Getpid())
	l := &shapedLink{ns: nsPrefix + tag, near: "hsb" + tag + "a", far: "hsb" + tag + "b",
		farAddr: fmt.Sprintf("198.51.100.%d", base+2)}
	nearAddr := fmt.Sprintf("198.51.100.%d/30", base+1)
	steps := [][]string{
		{"ip", "netns", "add", l.ns},
		{"ip", "link", "add", l.near, "type", "veth", "peer", "name", l.far},
		{"ip", "link", "set", l.far, "netns", l.ns},
		{"ip", "addr", "add", nearAddr, "dev", l.near},
		{"ip", "link", "set", l.near, "up"},
		{"ip", "-n", l.ns, "addr", "add", l.farAddr + "/30", "dev", l.far},
		{"ip", "-n", l.ns, "link", "set", l.far, "up"},
		{"ip", "-n", l.ns, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := runTool(ctx, s...); err != nil {
			l.close()
			return nil, fmt.Errorf("make the bench's link: %w", err)
		}
	}
	return l, nil
}

// freeSubnet picks a /30 of TEST-NET-2 (documentation addresses, never
// anyone's) that no interface here uses, and returns its first address's
// last byte less one.
func freeSubnet() (int, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return 0, fmt.Errorf("list this machine's addresses: %w", err)
	}
	used := map[int]bool{}
	for _, a := range addrs {
		if ip, ok := a.(*net.IPNet); ok {
			if v4 := ip.IP.To4(); v4 != nil && v4[0] == 198 && v4[1] == 51 && v4[2] == 100 {
				used[int(v4[3])&^3] = true
			}
		}
	}
	for base := 0; base < 256; base += 4 {
		if !used[base] {
			return base, nil
		}
	}
	return 0, errors.New("every /30 of 198.51.100.0/24 is in use here: remove the stale links ('ip -4 addr')")
}

// shape sets both directions to rate; "" takes the shaping off.
func (l *shapedLink) shape(ctx context.Context, rate string) error {
	for _, end := range []struct{ ns, dev string }{{"", l.near}, {l.ns, l.far}} {
		prefix := []string{"tc"}
		if end.ns != "" {
			prefix = []string{"ip", "netns", "exec", end.ns, "tc"}
		}
		runTool(ctx, append(prefix, "qdisc", "del", "dev", end.dev, "root")...) // none yet is fine
		if rate == "" {
			continue
		}
		cmds, err := lab.ShapeCommands(end.dev, lab.Link{Bandwidth: rate}, false)
		if err != nil {
			return err
		}
		for _, c := range cmds {
			if err := runTool(ctx, append(prefix, c...)...); err != nil {
				return fmt.Errorf("shape the bench's link: %w", err)
			}
		}
	}
	return nil
}

// through is a measure that counts the bytes at the link's near end:
// what crossed the link, TCP/IP headers included.
func (l *shapedLink) through(ctx context.Context, target string, transfer func(addr string) (cpuTimes, error)) (measured, error) {
	before, err := l.counts()
	if err != nil {
		return measured{}, err
	}
	stop := l.watchBusy()
	start := time.Now()
	cpu, err := transfer(target)
	elapsed := time.Since(start)
	busy := stop()
	if err != nil {
		return measured{}, err
	}
	after, err := l.counts()
	return measured{Counts: after.Sub(before), cpuTimes: cpu, Time: elapsed, Busy: busy}, err
}

// busyTick is how often watchBusy looks at the link.
const busyTick = 10 * time.Millisecond

// watchBusy looks at the bytes the link's near end receives until stop is
// called, and stop returns how long they flowed: from the tick before the
// first that saw them grow to the last.
func (l *shapedLink) watchBusy() (stop func() time.Duration) {
	done := make(chan struct{})
	busy := make(chan time.Duration, 1)
	go func() {
		var first, last time.Time
		prev, _ := l.counts()
		tick := time.NewTicker(busyTick)
		defer tick.Stop()
		for {
			select {
			case <-done:
				busy <- last.Sub(first)
				return
			case now := <-tick.C:
				c, err := l.counts()
				if err == nil && c.Down > prev.Down {
					if first.IsZero() {
						first = now.Add(-busyTick)
					}
					last = now
				}
				prev = c
			}
		}
	}()
	return func() time.Duration {
		close(done)
		return <-busy
	}
}

// counts are the bytes the near end has received (Down) and sent (Up).
func (l *shapedLink) counts() (Counts, error) {
	var c Counts
	for _, f := range []struct {
		name string
		n    *int64
	}{{"rx_bytes", &c.Down}, {"tx_bytes", &c.Up}} {
		b, err := os.ReadFile(filepath.Join("/sys/class/net", l.near, "statistics", f.name))
		if err != nil {
			return c, fmt.Errorf("count the bench's link: %w", err)
		}
		if *f.n, err = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err != nil {
			return c, fmt.Errorf("count the bench's link: %w", err)
		}
	}
	return c, nil
}

// tcpRate is what one plain TCP stream of n bytes moves over the link, in
// bytes per second counted at the link: the most a pull could.
func (l *shapedLink) tcpRate(ctx context.Context, n int64) (float64, error) {
	ln, err := l.listenFar()
	if err != nil {
		return 0, fmt.Errorf("measure the bench's link: %w", err)
	}
	defer ln.Close()
	sent := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, err = io.CopyN(c, zeroes{}, n)
			c.Close()
		}
		sent <- err
	}()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		ln.Close()
		<-sent
		return 0, fmt.Errorf("measure the bench's link: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	var got int64
	m, err := l.through(ctx, "", func(string) (cpuTimes, error) {
		var err error
		got, err = io.Copy(io.Discard, c)
		return cpuTimes{}, err
	})
	if serr := <-sent; err == nil && serr != nil || got != n {
		return 0, fmt.Errorf("measure the bench's link: %d of %d bytes arrived (%v, %v)", got, n, err, serr)
	}
	return float64(m.Total()) / m.Time.Seconds(), nil
}

type zeroes struct{}

func (zeroes) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}

// listenFar listens on the link's far side, from this process.
func (l *shapedLink) listenFar() (net.Listener, error) {
	return netns.Listen(l.ns, "tcp", l.farAddr+":0")
}

// close removes the namespace, and with it both ends of the veth.
func (l *shapedLink) close() {
	// Not the run's context: it may have ended, and this must still happen.
	runTool(context.Background(), "ip", "netns", "del", l.ns)
	runTool(context.Background(), "ip", "link", "del", l.near) // gone with the namespace, unless that failed half-made
}

// removeStaleLinks deletes the namespaces of benches whose process is gone.
func removeStaleLinks(ctx context.Context) {
	names, _ := filepath.Glob("/run/netns/" + nsPrefix + "*")
	for _, p := range names {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(p), nsPrefix))
		if err != nil || !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			continue // not a bench's, or its bench still runs
		}
		runTool(ctx, "ip", "netns", "del", filepath.Base(p))
		runTool(ctx, "ip", "link", "del", "hsb"+strconv.Itoa(pid)+"a")
	}
}

// runTool runs one of the link's commands.
func runTool(ctx context.Context, args ...string) error {
	return runQuiet(command(ctx, args[0], args[1:]...))
}
