package syncbench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/handoff-dev/handoff/leasectl"
)

// startServeProcess runs 'BIN serve' on dataDir as the home server, in a
// process of its own: the real server, and its CPU time apart from the
// workstation's. With a link, it runs on the link's far side.
func startServeProcess(ctx context.Context, bin, dataDir string, link *shapedLink) (*chunkServer, error) {
	_, fp, token, err := serverIdentity(dataDir)
	if err != nil {
		return nil, err
	}
	cmd := command(ctx, bin, "serve", "--data", dataDir, "--listen", "127.0.0.1:0")
	if link != nil {
		cmd = command(ctx, "ip", "netns", "exec", link.ns, bin, "serve", "--data", dataDir, "--listen", link.farAddr+":0")
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("start %s serve: %w", bin, err)
	}
	var stderr bytes.Buffer // read only after the process has exited
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s serve: %w", bin, err)
	}
	addrc := make(chan string, 1)
	exited := make(chan struct{})
	var reading sync.WaitGroup
	reading.Go(func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if addr, ok := serveAddr(sc.Text()); ok {
				select {
				case addrc <- addr:
				default:
				}
			}
		}
	})
	// Wait only after the last read of stdout, as exec requires.
	go func() {
		reading.Wait()
		cmd.Wait()
		close(exited)
	}()
	stop := func() {
		// SIGTERM: the server shuts down as after Ctrl-C; then the group,
		// whatever is left of it.
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			signalGroup(cmd)
			<-exited
		}
	}
	select {
	case addr := <-addrc:
		pid := cmd.Process.Pid
		return &chunkServer{Addr: addr, client: leasectl.PinnedTLS(fp), token: token, fingerprint: fp, bin: bin, stop: stop,
			cpu: func() (time.Duration, error) { return procCPU(pid) }}, nil
	case <-exited:
		return nil, fmt.Errorf("%s serve exited before listening (%v): %s", bin, cmd.ProcessState, strings.TrimSpace(stderr.String()))
	case <-ctx.Done():
		stop()
		return nil, fmt.Errorf("start %s serve: %w", bin, ctx.Err())
	case <-time.After(30 * time.Second):
		stop()
		return nil, fmt.Errorf("%s serve printed no address in 30 s: %s", bin, strings.TrimSpace(stderr.String()))
	}
}

// serveAddr reads the address from serve's line
// "handoff serve: https://127.0.0.1:PORT, certificate fingerprint ...".
func serveAddr(line string) (string, bool) {
	rest, ok := strings.CutPrefix(line, "handoff serve: https://")
	if !ok {
		return "", false
	}
	addr, _, _ := strings.Cut(rest, ",")
	return addr, addr != ""
}

// clockTicks is Linux's unit of CPU time in /proc/PID/stat (USER_HZ),
// fixed at 100 for programs on every architecture handoff runs on.
const clockTicks = 100

// procCPU is a process's CPU time so far, user and system, its reaped
// children's included: an rsync daemon's work is done by children.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, fmt.Errorf("read process %d's CPU time: %w", pid, err)
	}
	return parseStatCPU(string(b))
}

// parseStatCPU adds utime, stime, cutime and cstime (fields 14 to 17) of
// a /proc/PID/stat line. The command name, field 2, may hold spaces and
// parentheses, so fields are counted from its last ')'.
func parseStatCPU(stat string) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc stat line %q", stat)
	}
	f := strings.Fields(stat[i+1:]) // f[0] is field 3
	if len(f) < 15 {
		return 0, fmt.Errorf("short /proc stat line %q", stat)
	}
	var ticks int64
	for _, s := range f[11:15] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("malformed /proc stat line %q: %w", stat, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// waitNoChildren waits until no process has pid as its parent, so that
// pid's CPU time includes its children's: an rsync daemon's child for a
// connection exits just after the connection closes.
func waitNoChildren(ctx context.Context, pid int) error {
	deadline := time.Now().Add(5 * time.Second)
	for hasChildren(pid) {
		if time.Now().After(deadline) {
			return fmt.Errorf("process %d's children did not exit within 5 s", pid)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

func hasChildren(pid int) bool {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	want := strconv.Itoa(pid)
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i >= 0 {
			if f := strings.Fields(s[i+1:]); len(f) > 1 && f[1] == want {
				return true
			}
		}
	}
	return false
}
