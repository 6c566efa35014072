package syncbench

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// rsyncModule is the daemon's one module, serving the server's directory.
const rsyncModule = "bench"

// rsyncDaemon is an rsync --daemon on 127.0.0.1, serving one directory.
type rsyncDaemon struct {
	Addr   string
	cmd    *exec.Cmd
	exited chan struct{}
	log    string
}

// startRsyncDaemon starts rsync --daemon --no-detach on 127.0.0.1 with its
// own config in work, serving dir read-only as the module "bench". Stop it
// with stop; it is killed when ctx ends too.
func startRsyncDaemon(ctx context.Context, work, dir string) (*rsyncDaemon, error) {
	if err := needTools("rsync"); err != nil {
		return nil, err
	}
	conf := filepath.Join(work, "rsyncd.conf")
	d := &rsyncDaemon{log: filepath.Join(work, "rsyncd.log"), exited: make(chan struct{})}
	// The daemon runs as us: the default for root is nobody, who could not
	// read a private temp dir. No reverse lookups: they would add DNS
	// timeouts to the measured time.
	text := fmt.Sprintf(`uid = %d
gid = %d
use chroot = no
reverse lookup = no
log file = %s
pid file = %s

[%s]
	path = %s
	read only = yes
`, os.Getuid(), os.Getgid(), d.log, filepath.Join(work, "rsyncd.pid"), rsyncModule, dir)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return nil, fmt.Errorf("start rsync daemon: %w", err)
	}
	port, err := freePort(ctx)
	if err != nil {
		return nil, fmt.Errorf("start rsync daemon: %w", err)
	}
	d.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	d.cmd = command(ctx, "rsync", "--daemon", "--no-detach", "--config="+conf,
		"--address=127.0.0.1", "--port="+strconv.Itoa(port))
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start rsync daemon: %w", err)
	}
	// One goroutine reaps the daemon; stop waits for it.
	go func() {
		d.cmd.Wait()
		close(d.exited)
	}()
	if err := d.waitListening(ctx); err != nil {
		d.stop()
		return nil, err
	}
	return d, nil
}

// waitListening waits until the daemon accepts connections.
func (d *rsyncDaemon) waitListening(ctx context.Context) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		var dl net.Dialer
		c, err := dl.DialContext(ctx, "tcp", d.Addr)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-d.exited:
			log, _ := os.ReadFile(d.log)
			return fmt.Errorf("start rsync daemon: it exited (%v); its log says: %s", d.cmd.ProcessState, log)
		case <-ctx.Done():
			return fmt.Errorf("start rsync daemon: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("start rsync daemon: nothing listens on %s after 10 s: %w", d.Addr, err)
		}
	}
}

func (d *rsyncDaemon) pid() int { return d.cmd.Process.Pid }

// stop kills the daemon and every child it forked, and waits for it.
func (d *rsyncDaemon) stop() {
	signalGroup(d.cmd)
	<-d.exited
}

// freePort asks the kernel for a free port on 127.0.0.1. Another program
// could take it before rsync does; then the daemon's start fails and says so.
func freePort(ctx context.Context) (int, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// rsyncPull fetches the daemon's file name through addr (the proxy) onto
// dst, which holds the old version: rsync's delta transfer against it.
// It returns the client's CPU time and, with -z, the compression rsync
// negotiated (3.2 and later choose zstd, not zlib).
func rsyncPull(ctx context.Context, addr, name, dst string, compress bool) (time.Duration, string, error) {
	args := []string{"--no-whole-file", "--ignore-times"}
	if compress {
		args = append(args, "-z", "--debug=nstr")
	}
	args = append(args, "rsync://"+addr+"/"+rsyncModule+"/"+name, dst)
	cmd := command(ctx, "rsync", args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := runQuiet(cmd); err != nil {
		return 0, "", fmt.Errorf("rsync the update: %w", err)
	}
	return cpuOf(cmd), negotiatedCompression(out.String()), nil
}

// negotiatedCompression finds "Client negotiated compress: zstd (level 3)"
// in rsync's --debug=nstr output.
func negotiatedCompression(out string) string {
	for line := range strings.Lines(out) {
		if _, c, ok := strings.Cut(line, "negotiated compress: "); ok {
			return strings.TrimSpace(c)
		}
	}
	return ""
}
