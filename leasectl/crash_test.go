package leasectl

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/testbin"
)

// serveProcess is a real 'handoff serve', to be killed with -9.
type serveProcess struct {
	cmd       *exec.Cmd
	addr      string
	token, fp string
}

var loginLine = regexp.MustCompile(`--token (\S+) --fingerprint (\S+)`)
var listenLine = regexp.MustCompile(`handoff serve: https://(\S+),`)

func startServe(t *testing.T, bin, data, listen string, flags ...string) *serveProcess {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve", "--data", data, "--listen", listen}, flags...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	p := &serveProcess{cmd: cmd}
	lines := bufio.NewScanner(out)
	deadline := time.AfterFunc(30*time.Second, func() { cmd.Process.Kill() })
	defer deadline.Stop()
	for lines.Scan() {
		if m := loginLine.FindStringSubmatch(lines.Text()); m != nil {
			p.token, p.fp = m[1], m[2]
		}
		if m := listenLine.FindStringSubmatch(lines.Text()); m != nil {
			p.addr = m[1]
			go func() {
				for lines.Scan() {
				}
			}()
			return p
		}
	}
	t.Fatal("handoff serve never said where it listens")
	return nil
}

// TestKillNineKeepsEveryAcknowledgedCommit kills the server in the middle
// of a stream of commits, restarts it, and checks that every commit it
// acknowledged is there, in order, and nothing half-written.
// With etcd, the kill -9 hits the server between its reads and its
// transactions instead of inside bbolt's.
func TestKillNineKeepsEveryAcknowledgedCommit(t *testing.T) {
	bin, cleanup, err := testbin.Binary()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cleanup)
	t.Run("bolt", func(t *testing.T) { killNineMidCommits(t, bin) })
	t.Run("etcd", func(t *testing.T) { killNineMidCommits(t, bin, "--store", "etcd://"+startEtcd(t)) })
}

func killNineMidCommits(t *testing.T, bin string, flags ...string) {
	data := t.TempDir()
	srv := startServe(t, bin, data, "127.0.0.1:0", flags...)
	if srv.token == "" {
		t.Fatal("first start printed no token")
	}
	ctx := context.Background()
	c := NewClient("https://"+srv.addr, srv.token, srv.fp)
	if err := c.Create(ctx, "desktop"); err != nil {
		t.Fatal(err)
	}
	l, err := c.Acquire(ctx, "desktop", "laptop", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var acked []string
	head := ""
	time.AfterFunc(300*time.Millisecond, func() { srv.cmd.Process.Signal(syscall.SIGKILL) })
	for i := 0; ; i++ {
		cm, err := c.Commit(ctx, "desktop", CommitRequest{Parent: head, LeaseID: l.ID, Holder: "laptop", Manifest: root(fmt.Sprintf("r%d", i))})
		if err != nil {
			break // the server died under us
		}
		acked, head = append(acked, cm.ID), cm.ID
	}
	if len(acked) < 3 {
		t.Fatalf("only %d commits before the kill: the test proves little", len(acked))
	}
	srv.cmd.Wait()

	again := startServe(t, bin, data, srv.addr, flags...)
	if again.token != "" {
		t.Error("the restarted server made a new first-device token: it lost its state")
	}
	st, err := NewClient("https://"+again.addr, srv.token, srv.fp).Status(ctx, "desktop")
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Commits) < len(acked) || len(st.Commits) > len(acked)+1 {
		t.Fatalf("%d commits after restart, %d acknowledged", len(st.Commits), len(acked))
	}
	parent := ""
	for i, cm := range st.Commits {
		if i < len(acked) && cm.ID != acked[i] {
			t.Fatalf("commit %d is %s, acknowledged %s", i, cm.ID, acked[i])
		}
		if cm.Parent != parent || !strings.HasPrefix(cm.Manifest.Root, "r") {
			t.Fatalf("commit %d is half-written or out of order: %+v", i, cm)
		}
		parent = cm.ID
	}
	if st.Head != parent || st.Lease == nil || st.Lease.ID != l.ID {
		t.Fatalf("after restart: head %s (want %s), lease %+v", st.Head, parent, st.Lease)
	}
	t.Logf("%d commits acknowledged before kill -9; all there after restart", len(acked))
}

func TestLeaseCommandsAgainstARealServer(t *testing.T) {
	bin, cleanup, err := testbin.Binary()
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	srv := startServe(t, bin, t.TempDir(), "127.0.0.1:0")
	home := t.TempDir()
	lease := func(args ...string) (string, error) {
		cmd := exec.Command(bin, append([]string{"lease"}, args...)...)
		cmd.Env = append(cmd.Environ(), "XDG_CONFIG_HOME="+home)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := lease("acquire", "desktop"); err == nil || !strings.Contains(out, "handoff lease login") {
		t.Fatalf("acquire before login: %v, %s", err, out)
	}
	if out, err := lease("login", "--server", "https://"+srv.addr, "--token", srv.token, "--fingerprint", srv.fp); err != nil {
		t.Fatalf("login: %v, %s", err, out)
	}
	if out, err := lease("create", "desktop"); err != nil {
		t.Fatalf("create: %v, %s", err, out)
	}
	out, err := lease("acquire", "desktop", "--holder", "laptop", "--json")
	if err != nil || !strings.Contains(out, `"epoch":1`) {
		t.Fatalf("acquire --json: %v, %s", err, out)
	}
	if out, err := lease("acquire", "desktop", "--holder", "tablet"); err == nil || !strings.Contains(out, "laptop holds it") {
		t.Fatalf("second acquire: %v, %s", err, out)
	}
	if out, err := lease("steal", "desktop", "--holder", "tablet", "--reason", "laptop lost"); err != nil || !strings.Contains(out, "epoch 2") {
		t.Fatalf("steal: %v, %s", err, out)
	}
	if out, err := lease("commit", "desktop", "--holder", "reader", "--root", "abc"); err == nil || !strings.Contains(out, "handoff lease branch") {
		t.Fatalf("a commit while leased to another should be refused with the branch command: %v, %s", err, out)
	}
	if out, err := lease("log", "desktop"); err != nil || !strings.Contains(out, "steal") || !strings.Contains(out, "laptop lost") {
		t.Fatalf("log: %v, %s", err, out)
	}

	// The same server stores chunks: push an image, pull it elsewhere.
	img := filepath.Join(t.TempDir(), "disk.img")
	data := []byte(strings.Repeat("a disk image's bytes ", 100000))
	os.WriteFile(img, data, 0o644)
	sync := func(args ...string) (string, error) {
		cmd := exec.Command(bin, append([]string{"sync"}, args...)...)
		cmd.Env = append(cmd.Environ(), "XDG_CONFIG_HOME="+home, "XDG_CACHE_HOME="+home)
		out, err := cmd.Output()
		return string(out), err
	}
	out, err = sync("push", img, "--json")
	var pushed struct{ Root string }
	if err != nil || json.Unmarshal([]byte(out), &pushed) != nil || len(pushed.Root) != 64 {
		t.Fatalf("sync push: %v, %q", err, out)
	}
	pulled := filepath.Join(t.TempDir(), "pulled.img")
	if out, err := sync("pull", pushed.Root, pulled); err != nil {
		t.Fatalf("sync pull: %v, %s", err, out)
	}
	if got, _ := os.ReadFile(pulled); string(got) != string(data) {
		t.Fatal("the image pulled through the server differs")
	}
}
