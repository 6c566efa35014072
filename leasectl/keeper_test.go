package leasectl

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestKeeperRenewsUntilTheLeaseIsStolen keeps a short lease alive past
// several of its lifetimes on a real server, then has another device
// steal it: the keeper must say the lease is lost.
func TestKeeperRenewsUntilTheLeaseIsStolen(t *testing.T) {
	srv, token, sv := apiServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := sv.Create(ctx, "desktop"); err != nil {
		t.Fatal(err)
	}
	k := &Keeper{Client: NewClient(srv.URL, token, fingerprintOf(srv)), Image: "desktop", Holder: "laptop", TTL: 2 * time.Second}
	l, err := k.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (&Keeper{Client: k.Client, Image: "desktop", Holder: "tablet"}).Acquire(ctx); !errors.Is(err, ErrHeld) {
		t.Fatalf("a second keeper acquired a held image: %v", err)
	}
	updates := make(chan Lease, 1)
	stopped := make(chan error, 1)
	go func() { stopped <- k.Renew(ctx, l, updates) }()

	time.Sleep(3 * k.TTL)
	st, err := sv.Status(ctx, "desktop")
	if err != nil || st.Lease == nil || st.Lease.ID != l.ID || !time.Now().Before(st.Lease.Expires) {
		t.Fatalf("after three lifetimes the keeper's lease is not live: %+v, %v", st.Lease, err)
	}
	if _, err := sv.Steal(ctx, "desktop", "tablet", "laptop lost", time.Hour); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-stopped:
		if !errors.Is(err, ErrOrphaned) {
			t.Fatalf("keeper stopped with %v, want the lease reported lost", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the keeper never noticed its lease was stolen")
	}
}
