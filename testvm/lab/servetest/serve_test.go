// Package servetest checks the lab's 'handoff serve' on a real lab: it
// runs as the server, the workstation reaches it across the shaped link
// (its bytes counted there), leases and chunks go through it, and lab
// down, or the next lab up after a lab was lost, leaves none running.
package servetest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/netns"
	"github.com/handoff-dev/handoff/leasectl"
	"github.com/handoff-dev/handoff/syncengine"
	"github.com/handoff-dev/handoff/testvm/lab"
	"github.com/handoff-dev/handoff/testvm/lab/labtest"
)

var (
	theLab *lab.Lab
	cfg    = lab.Config{Guest: lab.GuestConfig{MemMB: 128, DirtyMBps: 0, WSSMB: 16}} // small and idle: this is about serve
	bin    string
)

func TestMain(m *testing.M) {
	labtest.MainWithBinary(m, "serve", cfg, func(l *lab.Lab, b string) int {
		theLab, bin = l, b
		return m.Run()
	})
}

// servePIDs are the processes running the lab's copy of handoff.
func servePIDs(t *testing.T, dir string) []int {
	t.Helper()
	want := filepath.Join(dir, "bin", "handoff")
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err == nil && strings.TrimSuffix(exe, " (deleted)") == want {
			pid, _ := strconv.Atoi(e.Name())
			pids = append(pids, pid)
		}
	}
	return pids
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestServeRunsAsTheServersUserInItsNamespace(t *testing.T) {
	pids := servePIDs(t, theLab.Dir)
	if len(pids) != 1 {
		t.Fatalf("%d processes run the lab's handoff, want one serve: %v", len(pids), pids)
	}
	pid := pids[0]
	cmdline, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if len(args) < 2 || args[1] != "serve" || !strings.Contains(string(cmdline), theLab.Server.Addr+":7443") {
		t.Errorf("the lab's handoff runs as %q; want serve listening on %s:7443", args, theLab.Server.Addr)
	}
	u, err := user.Lookup(theLab.Server.User)
	if err != nil {
		t.Fatal(err)
	}
	var proc syscall.Stat_t
	if err := syscall.Stat(filepath.Join("/proc", strconv.Itoa(pid)), &proc); err != nil {
		t.Fatal(err)
	}
	if strconv.Itoa(int(proc.Uid)) != u.Uid {
		t.Errorf("serve runs as uid %d, want %s's (%s)", proc.Uid, theLab.Server.User, u.Uid)
	}
	if got, want := inode(t, filepath.Join("/proc", strconv.Itoa(pid), "ns", "net")), inode(t, filepath.Join("/run/netns", theLab.Server.Netns)); got != want {
		t.Errorf("serve runs in network namespace %d, want the server's %s (%d)", got, theLab.Server.Netns, want)
	}
	data := filepath.Join(theLab.Server.Dir, "handoff")
	var st syscall.Stat_t
	if err := syscall.Stat(data, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o777 != 0o700 || strconv.Itoa(int(st.Uid)) != u.Uid {
		t.Errorf("serve's data %s: mode %o, uid %d; want 700 and %s's", data, st.Mode&0o777, st.Uid, theLab.Server.User)
	}

	login, err := theLab.ServeLogin()
	if err != nil {
		t.Fatal(err)
	}
	if want := "https://" + theLab.Server.Addr + ":7443"; login.URL != want || login.Token == "" || len(login.Fingerprint) != 64 {
		t.Errorf("login = %+v; want %s with a token and a fingerprint", login, want)
	}
	if fi, err := os.Stat(filepath.Join(theLab.Dir, "serve-login.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the login's file: %v, %v; want mode 600 (it holds a token)", fi, err)
	}
	st2, err := theLab.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !st2.Serve.Answers || st2.Serve.URL != login.URL {
		t.Errorf("lab status: serve %+v; want %s answering", st2.Serve, login.URL)
	}
}

// TestWorkstationDialCrossesTheLink sends 4 MiB from a listener on the
// server's side to a connection WorkstationDial made, and finds them in
// the workstation's link counters.
func TestWorkstationDialCrossesTheLink(t *testing.T) {
	const n = 4 << 20
	ln, err := netns.Listen(theLab.Server.Netns, "tcp", theLab.Server.Addr+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sent := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, err = io.Copy(c, io.LimitReader(rand.NewChaCha8([32]byte{}), n))
			c.Close()
		}
		sent <- err
	}()
	before, err := theLab.LinkCounts()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c, err := theLab.WorkstationDial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		ln.Close()
		<-sent
		t.Fatal(err)
	}
	got, err := io.Copy(io.Discard, c)
	c.Close()
	if serr := <-sent; err != nil || serr != nil || got != n {
		t.Fatalf("received %d of %d bytes (%v, %v)", got, n, err, serr)
	}
	after, err := theLab.LinkCounts()
	if err != nil {
		t.Fatal(err)
	}
	// TCP/IP headers add about 3.5%; the idle guest's lab adds nothing.
	rx, tx := after.Received-before.Received, after.Sent-before.Sent
	t.Logf("the workstation's end of the link: %d bytes received, %d sent, for %d of data", rx, tx, n)
	if rx < n || rx > n*11/10 {
		t.Errorf("the workstation's end of the link received %d bytes; want the %d sent, plus headers", rx, n)
	}
	if tx <= 0 {
		t.Error("the workstation's end of the link sent nothing: no ACKs crossed it")
	}

	if _, err := theLab.WorkstationDial(ctx, "tcp", "server:7443"); err == nil {
		t.Error("WorkstationDial dialled a name; it must take only addresses (a lookup would leave the namespace)")
	}
}

func TestLeaseThroughTheLab(t *testing.T) {
	c, err := theLab.LeaseClient()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	const image = "servetest-image"
	if err := c.Create(ctx, image); err != nil {
		t.Fatal(err)
	}
	l, err := c.Acquire(ctx, image, "workstation", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var held *leasectl.HeldError
	if _, err := c.Acquire(ctx, image, "laptop", time.Minute); !errors.As(err, &held) || held.Holder != "workstation" {
		t.Errorf("a second device's acquire: %v; want refused as held by workstation", err)
	}
	if err := c.Release(ctx, image, l.ID); err != nil {
		t.Fatal(err)
	}
	s, err := c.Status(ctx, image)
	if err != nil {
		t.Fatal(err)
	}
	if s.Lease != nil {
		t.Errorf("after release the image is still leased: %+v", s.Lease)
	}
}

// TestChunksThroughTheLab pushes a file from one workstation cache to the
// lab server's store and pulls it into another, across the link.
func TestChunksThroughTheLab(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "disk.img"), filepath.Join(dir, "pulled.img")
	data := make([]byte, 3<<20+12345) // odd-sized, incompressible: every byte must cross
	rand.NewChaCha8([32]byte{1}).Read(data)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	store, err := theLab.ChunkStore()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	codec := syncengine.NewCodec()

	before, err := theLab.LinkCounts()
	if err != nil {
		t.Fatal(err)
	}
	pusher := &syncengine.Client{Remote: store, Cache: syncengine.DirStore{Dir: filepath.Join(dir, "cache-a")}, Codec: codec}
	defer pusher.Close()
	root, pushed, err := pusher.Push(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	mid, err := theLab.LinkCounts()
	if err != nil {
		t.Fatal(err)
	}
	puller := &syncengine.Client{Remote: store, Cache: syncengine.DirStore{Dir: filepath.Join(dir, "cache-b")}, Codec: codec}
	defer puller.Close()
	pulled, err := puller.Pull(ctx, root, dst)
	if err != nil {
		t.Fatal(err)
	}
	after, err := theLab.LinkCounts()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("the pulled file (%d bytes) differs from the pushed one (%d)", len(got), len(data))
	}
	up, down := mid.Sent-before.Sent, after.Received-mid.Received
	t.Logf("push: %d bytes on the wire, %d sent over the link; pull: %d on the wire, %d received over the link", pushed.WireBytes, up, pulled.WireBytes, down)
	if up < int64(len(data)) || down < int64(len(data)) {
		t.Errorf("the link carried %d bytes up and %d down for a %d-byte file: the chunks did not cross it", up, down, len(data))
	}
	chunks, _ := filepath.Glob(filepath.Join(theLab.Server.Dir, "handoff", "chunks", "*"))
	if len(chunks) == 0 {
		t.Errorf("nothing in the lab server's chunk store %s", filepath.Join(theLab.Server.Dir, "handoff", "chunks"))
	}
}

// TestZLostLabAndDown runs last: it loses the lab's state, as a lab killed
// halfway would, brings the lab up again, which must stop the old serve
// and start one, then takes it down, which must leave none.
func TestZLostLabAndDown(t *testing.T) {
	old := servePIDs(t, theLab.Dir)
	if len(old) != 1 {
		t.Fatalf("before: %d serve processes, want one", len(old))
	}
	if err := os.Remove(filepath.Join(theLab.Dir, "lab.json")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	up := cfg
	up.Dir, up.Handoff, up.Progress = theLab.Dir, bin, testLog{t}
	l, err := lab.Up(ctx, up)
	if err != nil {
		t.Fatal(err)
	}
	if pids := servePIDs(t, l.Dir); len(pids) != 1 || pids[0] == old[0] {
		t.Errorf("after lab up over the lost lab: serve processes %v; want one new one (the old was %d)", pids, old[0])
	}
	if err := syscall.Kill(old[0], 0); err == nil {
		t.Errorf("the lost lab's serve (%d) still runs", old[0])
	}
	if st, err := l.Status(ctx); err != nil || !st.Serve.Answers {
		t.Errorf("the new lab's serve: %+v, %v; want it answering", st.Serve, err)
	}
	if err := lab.Down(ctx, l.Dir); err != nil {
		t.Fatal(err)
	}
	if pids := servePIDs(t, l.Dir); len(pids) > 0 {
		t.Errorf("lab down left serve processes %v", pids)
	}
	if _, err := os.Stat(filepath.Join("/run/netns", l.Server.Netns)); err == nil {
		t.Errorf("lab down left the server's namespace %s", l.Server.Netns)
	}
}

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
