package leasectl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// stores are the implementations every contract test runs on.
func stores() map[string]func(t testing.TB) Store {
	return map[string]func(t testing.TB) Store{
		"bolt": func(t testing.TB) Store {
			s, err := OpenBolt(filepath.Join(t.TempDir(), "leases.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		},
		"etcd": func(t testing.TB) Store {
			s, err := OpenEtcd(context.Background(), startEtcd(t))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		},
	}
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startEtcd runs Debian's etcd on loopback ports with its own data, for
// this test only.
func startEtcd(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	client, peer := fmt.Sprintf("http://127.0.0.1:%d", freePort(t)), fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	cmd := exec.Command("etcd", "--data-dir", filepath.Join(dir, "data"), "--name", "test",
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "test="+peer, "--log-level", "error")
	log, _ := os.Create(filepath.Join(dir, "etcd.log"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start etcd (Debian's etcd-server): %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); log.Close() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, err := net.Dial("tcp", client[len("http://"):]); err == nil {
			c.Close()
			return client[len("http://"):]
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "etcd.log"))
			t.Fatalf("etcd never listened: %s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestStoreContract(t *testing.T) {
	for name, open := range stores() {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			clock := t0
			sv := &Service{Store: open(t), Now: func() time.Time { return clock }}

			if _, err := sv.Acquire(ctx, "desktop", "laptop", ttl); !errors.Is(err, ErrNoImage) {
				t.Fatalf("acquire on an unknown image: %v", err)
			}
			if err := sv.Create(ctx, "desktop"); err != nil {
				t.Fatal(err)
			}
			if err := sv.Create(ctx, "desktop"); !errors.Is(err, ErrExists) {
				t.Fatalf("second create: %v", err)
			}
			if err := sv.Create(ctx, "../etc"); !errors.Is(err, ErrBadInput) {
				t.Fatalf("create with a path for a name: %v", err)
			}
			l, err := sv.Acquire(ctx, "desktop", "laptop", ttl)
			if err != nil || l.Epoch != 1 {
				t.Fatalf("acquire: %+v, %v", l, err)
			}
			var held *HeldError
			if _, err := sv.Acquire(ctx, "desktop", "desktop", ttl); !errors.As(err, &held) || held.Holder != "laptop" {
				t.Fatalf("acquire while held: %v", err)
			}
			c1, err := sv.Commit(ctx, "desktop", CommitRequest{LeaseID: l.ID, Holder: "laptop", Manifest: root("r1")})
			if err != nil {
				t.Fatal(err)
			}
			stolen, err := sv.Steal(ctx, "desktop", "desktop", "laptop lost on a train", ttl)
			if err != nil || stolen.Epoch != 2 {
				t.Fatalf("steal: %+v, %v", stolen, err)
			}
			late := CommitRequest{Parent: c1.ID, LeaseID: l.ID, Holder: "laptop", Manifest: root("r2")}
			if _, err := sv.Commit(ctx, "desktop", late); !errors.Is(err, ErrRefused) {
				t.Fatalf("commit from the stolen lease: %v", err)
			}
			b, err := sv.Branch(ctx, "desktop", "desktop-laptop", late)
			if err != nil || b.Parent != c1.ID {
				t.Fatalf("branch: %+v, %v", b, err)
			}
			st, err := sv.Status(ctx, "desktop")
			if err != nil || st.Head != c1.ID || st.Lease.Holder != "desktop" || len(st.Commits) != 1 {
				t.Fatalf("status after the refused commit: %+v, %v", st, err)
			}
			br, err := sv.Status(ctx, "desktop-laptop")
			if err != nil || br.Head != b.ID || br.BranchOf != "desktop@"+c1.ID {
				t.Fatalf("branch status: %+v, %v", br, err)
			}
			clock = clock.Add(2 * ttl)
			if _, err := sv.Renew(ctx, "desktop", stolen.ID, ttl); !errors.Is(err, ErrExpired) {
				t.Fatalf("renew after expiry: %v", err)
			}
		})
	}
}

// TestOneWinnerUnderRace has many devices race for one image: exactly one
// lease is granted while it lives, on every store.
func TestOneWinnerUnderRace(t *testing.T) {
	for name, open := range stores() {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			sv := &Service{Store: open(t)}
			sv.Create(ctx, "desktop")
			var wg sync.WaitGroup
			var mu sync.Mutex
			wins := 0
			for i := range 16 {
				wg.Go(func() {
					_, err := sv.Acquire(ctx, "desktop", fmt.Sprintf("device-%d", i), time.Hour)
					mu.Lock()
					defer mu.Unlock()
					if err == nil {
						wins++
					} else if !errors.Is(err, ErrHeld) {
						t.Errorf("acquire: %v", err)
					}
				})
			}
			wg.Wait()
			st, _ := sv.Status(ctx, "desktop")
			if wins != 1 || st.Epoch != 1 {
				t.Fatalf("%d leases granted, epoch %d; want exactly one", wins, st.Epoch)
			}
		})
	}
}

// TestEtcdLeaseMirrorsTheImageLease checks that on etcd an image's lease
// is an etcd lease: kept alive by a renewal, gone with a release, and gone
// on its own when it runs out.
func TestEtcdLeaseMirrorsTheImageLease(t *testing.T) {
	ctx := context.Background()
	store, err := OpenEtcd(ctx, startEtcd(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	sv := &Service{Store: store}
	if err := sv.Create(ctx, "desktop"); err != nil {
		t.Fatal(err)
	}
	l, err := sv.Acquire(ctx, "desktop", "laptop", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	id, granted, ok := store.etcdLease(ctx, "desktop")
	if !ok || granted != 60 {
		t.Fatalf("after acquire: etcd lease %v granted %ds, present %v; want a 60s one", id, granted, ok)
	}
	if _, err := sv.Renew(ctx, "desktop", l.ID, time.Minute); err != nil {
		t.Fatal(err)
	}
	if again, _, ok := store.etcdLease(ctx, "desktop"); !ok || again != id {
		t.Fatalf("renew replaced etcd lease %x with %x instead of keeping it alive", id, again)
	}
	if err := sv.Release(ctx, "desktop", l.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := store.etcdLease(ctx, "desktop"); ok {
		t.Fatal("the lease key outlived its release")
	}
	if _, err := sv.Acquire(ctx, "desktop", "desktop", time.Second); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, _, ok := store.etcdLease(ctx, "desktop"); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("etcd kept a 1s lease for 10s")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestHistoryOutgrowsOneRecord keeps committing past what one stored
// value may hold (etcd refuses requests over 1.5 MiB): a change writes
// only what it adds, and the whole history reads back in order.
func TestHistoryOutgrowsOneRecord(t *testing.T) {
	onEachStore(t, func(t *testing.T, ctx context.Context, sv *Service) {
		l, err := sv.Acquire(ctx, "desktop", "laptop", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		note := strings.Repeat("n", maxMeta-len("note"))
		head := ""
		const n = 120 // 2 MB of history
		for i := range n {
			m := Manifest{Root: fmt.Sprintf("r%d", i), Meta: map[string]string{"note": note}}
			c, err := sv.Commit(ctx, "desktop", CommitRequest{Parent: head, LeaseID: l.ID, Holder: "laptop", Manifest: m})
			if err != nil {
				t.Fatalf("commit %d: %v", i, err)
			}
			head = c.ID
		}
		st, err := sv.Status(ctx, "desktop")
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Commits) != n || len(st.Log) != n+1 || st.Head != head {
			t.Fatalf("%d commits, %d events, head %s; want %d, %d, %s", len(st.Commits), len(st.Log), st.Head, n, n+1, head)
		}
		for i, c := range st.Commits {
			if c.Manifest.Root != fmt.Sprintf("r%d", i) || c.Manifest.Meta["note"] != note {
				t.Fatalf("commit %d reads back as root %q", i, c.Manifest.Root)
			}
		}
	})
}

// TestRefusedBranchLeavesNoImage: a branch that cannot be made leaves
// neither an empty image behind nor a note in the source's log.
func TestRefusedBranchLeavesNoImage(t *testing.T) {
	onEachStore(t, func(t *testing.T, ctx context.Context, sv *Service) {
		for _, req := range []CommitRequest{
			{Parent: "c-unknown", Holder: "laptop", Manifest: root("r")},
			{Holder: "laptop"},
		} {
			if _, err := sv.Branch(ctx, "desktop", "desktop-laptop", req); !errors.Is(err, ErrBadInput) {
				t.Fatalf("branch %+v: %v, want bad input", req, err)
			}
		}
		if _, err := sv.Status(ctx, "desktop-laptop"); !errors.Is(err, ErrNoImage) {
			t.Fatalf("a refused branch left an image: %v", err)
		}
		if _, err := sv.Branch(ctx, "desktop", "desktop", CommitRequest{Holder: "laptop", Manifest: root("r")}); !errors.Is(err, ErrExists) {
			t.Fatalf("branch onto an existing image: %v", err)
		}
		if st, _ := sv.Status(ctx, "desktop"); len(st.Log) != 0 || len(st.Commits) != 0 {
			t.Fatalf("refused branches changed the source: %+v", st)
		}
	})
}

// onEachStore runs test on every store, with an image "desktop" made.
func onEachStore(t *testing.T, test func(t *testing.T, ctx context.Context, sv *Service)) {
	for name, open := range stores() {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			sv := &Service{Store: open(t)}
			if err := sv.Create(ctx, "desktop"); err != nil {
				t.Fatal(err)
			}
			test(t, ctx, sv)
		})
	}
}
