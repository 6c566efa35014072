package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/handoff-dev/handoff/internal/netns"
	"github.com/handoff-dev/handoff/leasectl"
	"github.com/handoff-dev/handoff/relay"
	"github.com/handoff-dev/handoff/syncengine"
)

// The lab's server runs 'handoff serve' as a home server does: leases and
// the chunk store, on the server's link address, run by the server's
// libvirt user inside the server's namespace (so that it reads and writes
// what that daemon's VMs use, whose folders are that user's alone). The
// workstation is logged in to it with a token of its own; code on the
// workstation reaches it through WorkstationDial, across the shaped link.

// ServeLogin is how the workstation logs in to the lab server's 'handoff
// serve': what 'handoff lease login' saves on a device.
type ServeLogin struct {
	URL         string `json:"url"`         // https://192.0.2.1:7443: the server's address on the link
	Token       string `json:"token"`       // the workstation's device token
	Fingerprint string `json:"fingerprint"` // the server certificate's, pinned
}

// ServeStatus says whether the lab's serve answers the workstation.
type ServeStatus struct {
	URL     string `json:"url"`
	Answers bool   `json:"answers"`
	Error   string `json:"error,omitempty"` // why it does not
}

const (
	servePort   = "7443"
	serveDevice = "workstation" // the workstation's token's name on the server
)

// serveData is serve's --data: its store, tokens and TLS key.
func (l *Lab) serveData() string { return filepath.Join(l.Server.Dir, "handoff") }

// ServerChunks is the lab server's chunk store: a bench reads what a
// commit names there (syncengine.OpenStored), as the server would.
func (l *Lab) ServerChunks() string { return filepath.Join(l.serveData(), "chunks") }

func (l *Lab) serveLog() string { return filepath.Join(l.Server.Dir, "handoff-serve.log") }

// loginPath holds the login apart from lab.json, readable by root alone:
// the token opens the lab server's store.
func loginPath(dir string) string { return filepath.Join(dir, "serve-login.json") }

// serveBin is the lab's own copy of the handoff binary: the server's user
// can run it wherever the original lives (go test builds into a folder
// only root may enter), and a rebuild does not change a running lab.
func serveBin(dir string) string { return filepath.Join(dir, "bin", "handoff") }

// startServe makes a token for the workstation, starts serve detached, as
// the daemons are, and waits until it answers the workstation.
func (l *Lab) startServe(ctx context.Context, bin string) error {
	if bin == "" {
		return errors.New("the lab's server runs 'handoff serve': give lab.Config.Handoff, the handoff binary's path")
	}
	keepFilesFromDaemons()
	uid, gid, err := ensureUser(ctx, l.Server)
	if err != nil {
		return err
	}
	self := serveBin(l.Dir)
	if err := os.MkdirAll(filepath.Dir(self), 0o755); err != nil {
		return fmt.Errorf("make %s: %w", filepath.Dir(self), err)
	}
	if err := copyFile(bin, self, 0o755); err != nil {
		return fmt.Errorf("copy %s into the lab: %w", bin, err)
	}
	data := l.serveData()
	if err := os.Mkdir(data, 0o700); err != nil {
		return fmt.Errorf("make the lab server's serve directory: %w", err)
	}
	if err := os.Chown(data, uid, gid); err != nil {
		return err
	}
	asServer := func(args ...string) []string {
		return append([]string{"setpriv", "--reuid", strconv.Itoa(uid), "--regid", strconv.Itoa(gid), "--clear-groups", "--",
			"env", "-i", "HOME=" + filepath.Join(l.Server.Dir, "home"), "PATH=/usr/sbin:/usr/bin:/sbin:/bin", self}, args...)
	}
	tokenAdd := asServer("serve", "token", "add", serveDevice, "--data", data)
	out, err := exec.CommandContext(ctx, tokenAdd[0], tokenAdd[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("make the workstation's token on the lab server (handoff serve token add): %w: %s", err, strings.TrimSpace(string(out)))
	}
	login, err := parseTokenAdd(string(out))
	if err != nil {
		return err
	}
	login.URL = "https://" + net.JoinHostPort(l.Server.Addr, servePort)
	raw, _ := json.MarshalIndent(login, "", "  ")
	if err := os.WriteFile(loginPath(l.Dir), raw, 0o600); err != nil {
		return fmt.Errorf("save the lab's serve login: %w", err)
	}
	log, err := os.OpenFile(l.serveLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	// setsid --fork detaches it, as it does the libvirt daemons; Down
	// finds it by its binary, which only this lab runs.
	args := append([]string{"--fork", "ip", "netns", "exec", l.Server.Netns},
		asServer("serve", "--data", data, "--listen", net.JoinHostPort(l.Server.Addr, servePort), "--images", imagesDir(l.Server))...)
	cmd := exec.CommandContext(ctx, "setsid", args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("start handoff serve on the lab server: %w (log: %s)", err, l.serveLog())
	}
	start := time.Now()
	for {
		err := l.serveAnswers(ctx)
		if err == nil {
			return nil
		}
		// A second is ample for setsid's child to become serve.
		gone := time.Since(start) > time.Second && len(servePIDs(l.Dir)) == 0
		if gone || time.Since(start) > 30*time.Second {
			b, _ := os.ReadFile(l.serveLog())
			return fmt.Errorf("handoff serve on the lab server does not answer: %w (log %s: %s)", err, l.serveLog(), strings.TrimSpace(string(b)))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// tokenAddLogin reads the login command 'handoff serve token add' prints.
var tokenAddLogin = regexp.MustCompile(`--token (\S+) --fingerprint ([0-9a-f]{64})`)

func parseTokenAdd(out string) (ServeLogin, error) {
	m := tokenAddLogin.FindStringSubmatch(out)
	if m == nil {
		return ServeLogin{}, fmt.Errorf("'handoff serve token add' printed no login command: %q", out)
	}
	return ServeLogin{Token: m[1], Fingerprint: m[2]}, nil
}

// ServeLogin is the workstation's login to the lab server's serve.
func (l *Lab) ServeLogin() (ServeLogin, error) {
	var in ServeLogin
	raw, err := os.ReadFile(loginPath(l.Dir))
	if errors.Is(err, os.ErrNotExist) {
		return in, fmt.Errorf("the lab in %s runs no handoff serve (it was started by an older handoff): run 'handoff lab down' and 'handoff lab up'", l.Dir)
	}
	if err != nil {
		return in, fmt.Errorf("read the lab's serve login: %w", err)
	}
	if err := json.Unmarshal(raw, &in); err != nil {
		return in, fmt.Errorf("the lab's serve login %s is damaged (%v): run 'handoff lab down' and 'handoff lab up'", loginPath(l.Dir), err)
	}
	return in, nil
}

// WorkstationDial opens a connection from inside the workstation's
// namespace, as http.Transport's DialContext: what it carries crosses the
// lab's shaped link and is counted at the workstation's end of it. addr's
// host must be an IP address.
func (l *Lab) WorkstationDial(ctx context.Context, network, addr string) (net.Conn, error) {
	return netns.Dial(ctx, l.Workstation.Netns, network, addr)
}

// LeaseClient reaches the lab server's leases as the workstation, across
// the link.
func (l *Lab) LeaseClient() (*leasectl.Client, error) {
	in, err := l.ServeLogin()
	if err != nil {
		return nil, err
	}
	return leasectl.NewClientVia(in.URL, in.Token, in.Fingerprint, l.WorkstationDial), nil
}

// ChunkStore is the lab server's chunk store as the workstation reaches
// it, across the link: a syncengine.Client's Remote.
func (l *Lab) ChunkStore() (syncengine.HTTPStore, error) {
	in, err := l.ServeLogin()
	if err != nil {
		return syncengine.HTTPStore{}, err
	}
	return syncengine.HTTPStore{Base: in.URL + "/v1/chunks", Token: in.Token,
		Client: syncengine.NewHTTPClientVia(leasectl.PinnedTLS(in.Fingerprint), l.WorkstationDial)}, nil
}

// serveAnswers asks serve about an image as the workstation: an answer,
// "no such image" included, means it runs, pins and takes the token.
func (l *Lab) serveAnswers(ctx context.Context) error {
	in, err := l.ServeLogin()
	if err != nil {
		return err
	}
	// The client keeps its connection for later; there is no later, so
	// it is closed here, and with it the transport's goroutine for it.
	var mu sync.Mutex
	var opened []net.Conn
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range opened {
			c.Close()
		}
	}()
	c := leasectl.NewClientVia(in.URL, in.Token, in.Fingerprint, func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := l.WorkstationDial(ctx, network, addr)
		if err == nil {
			mu.Lock()
			opened = append(opened, conn)
			mu.Unlock()
		}
		return conn, err
	})
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := c.Status(ctx, GuestName); err != nil && !errors.Is(err, leasectl.ErrNoImage) {
		return err
	}
	return nil
}

func (l *Lab) serveStatus(ctx context.Context) ServeStatus {
	var st ServeStatus
	if in, err := l.ServeLogin(); err == nil {
		st.URL = in.URL
	}
	if err := l.serveAnswers(ctx); err != nil {
		st.Error = err.Error()
	} else {
		st.Answers = true
	}
	return st
}

// LinkCounts are the bytes the workstation's end of the link has
// received and sent since the lab came up, its frames' headers included.
type LinkCounts struct {
	Received, Sent int64
}

// LinkCounts reads the workstation's end of the link.
func (l *Lab) LinkCounts() (LinkCounts, error) {
	var b []byte
	err := netns.Do(l.Workstation.Netns, func() (err error) {
		// thread-self: /proc/self/net is the main thread's namespace.
		b, err = os.ReadFile("/proc/thread-self/net/dev")
		return err
	})
	if err != nil {
		return LinkCounts{}, fmt.Errorf("count the lab link: %w", err)
	}
	return parseNetDev(string(b), l.Workstation.Dev)
}

// parseNetDev reads one device's byte counts from /proc/net/dev.
func parseNetDev(s, dev string) (LinkCounts, error) {
	for _, line := range strings.Split(s, "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(name) != dev {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 16 {
			break
		}
		rx, err1 := strconv.ParseInt(f[0], 10, 64)
		tx, err2 := strconv.ParseInt(f[8], 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return LinkCounts{}, fmt.Errorf("count the lab link: %s in /proc/net/dev: %w", dev, err)
		}
		return LinkCounts{Received: rx, Sent: tx}, nil
	}
	return LinkCounts{}, fmt.Errorf("count the lab link: no %s in the workstation's /proc/net/dev", dev)
}

// keepFilesFromDaemons marks every file this process inherited open
// (beyond stdin, stdout and stderr) close-on-exec, so that what the lab
// starts detached does not keep them open for the lab's life: under
// 'flock LOCK handoff lab up' the daemons held the lock until lab down.
func keepFilesFromDaemons() {
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}

// servePIDs are the processes that run the lab in dir's copy of handoff:
// its serve, found with or without the lab's state.
func servePIDs(dir string) []int {
	bin := serveBin(dir)
	return pidsWhere(func(proc string) bool {
		exe, err := os.Readlink(filepath.Join(proc, "exe"))
		return err == nil && strings.TrimSuffix(exe, " (deleted)") == bin
	})
}

// pidsWhere are the processes whose /proc directory passes match.
func pidsWhere(match func(proc string) bool) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && match(filepath.Join("/proc", e.Name())) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// stopServe stops the lab's serve as Ctrl-C would (its store closes
// cleanly), and kills it if it will not go.
func stopServe(dir string) { killAll(servePIDs(dir)) }

// stopRelayEnds ends the workstation's relay ends of moves between the
// lab's hosts that outlived their clients.
func stopRelayEnds(dir string) {
	mark := RelayEndFlag(dir)
	killAll(pidsWhere(func(proc string) bool {
		cmdline, err := os.ReadFile(filepath.Join(proc, "cmdline"))
		args := strings.Split(string(cmdline), "\x00")
		return err == nil && len(args) > 1 && args[1] == "relay-end" && slices.Contains(args, mark)
	}))
}

// RelayEndFlag names the lab in the arguments of 'handoff relay-end' for
// a move between its hosts, so that Down finds the ones still running.
func RelayEndFlag(dir string) string { return "--lab=" + dir }

// StreamRelay carries a migration's memory stream between the lab's hosts
// through the lab server's serve, as a workstation does its own server's:
// the workstation's end reaches its QEMU inside its namespace, and the
// relay's connection crosses the shaped link. toServer: the VM goes to the
// server.
func (l *Lab) StreamRelay(toServer bool, stats *relay.Stats) (*relay.Carrier, error) {
	in, err := l.ServeLogin()
	if err != nil {
		return nil, err
	}
	ns := l.Workstation.Netns
	addr := func(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
	return &relay.Carrier{
		Server: relay.Server{URL: in.URL, Token: in.Token, TLS: leasectl.PinnedTLS(in.Fingerprint), Dial: l.WorkstationDial},
		Local: relay.Host{
			Listen: func(port int) (net.Listener, error) { return netns.Listen(ns, "tcp", addr(port)) },
			Dial:   func(ctx context.Context, port int) (net.Conn, error) { return netns.Dial(ctx, ns, "tcp", addr(port)) },
		},
		ToServer: toServer,
		Stats:    stats,
	}, nil
}
