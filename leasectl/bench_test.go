package leasectl

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkOps measures the latency of each durable change, one device at
// a time, on each store.
func BenchmarkOps(b *testing.B) {
	ctx := context.Background()
	for name, open := range stores() {
		b.Run(name+"/acquire", func(b *testing.B) {
			sv := &Service{Store: open(b)}
			for i := range b.N {
				if err := sv.Create(ctx, fmt.Sprintf("img%d", i)); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for i := range b.N {
				if _, err := sv.Acquire(ctx, fmt.Sprintf("img%d", i), "laptop", time.Minute); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/renew", func(b *testing.B) {
			sv, l := leasedImage(b, open(b))
			b.ResetTimer()
			for range b.N {
				if _, err := sv.Renew(ctx, "desktop", l.ID, time.Minute); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/commit", func(b *testing.B) {
			sv, l := leasedImage(b, open(b))
			b.ResetTimer()
			commitChain(b, sv.Commit, l)
		})
	}
}

func leasedImage(b *testing.B, store Store) (*Service, Lease) {
	sv := &Service{Store: store}
	ctx := context.Background()
	if err := sv.Create(ctx, "desktop"); err != nil {
		b.Fatal(err)
	}
	l, err := sv.Acquire(ctx, "desktop", "laptop", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	return sv, l
}

// BenchmarkParallelCommits measures throughput: many devices, each
// committing to its own image at once.
func BenchmarkParallelCommits(b *testing.B) {
	for name, open := range stores() {
		b.Run(name, func(b *testing.B) {
			sv := &Service{Store: open(b)}
			var next atomic.Int64
			b.SetParallelism(4)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				image := fmt.Sprintf("img%d", next.Add(1))
				if err := sv.Create(ctx, image); err != nil {
					b.Error(err)
					return
				}
				l, err := sv.Acquire(ctx, image, "laptop", time.Hour)
				if err != nil {
					b.Error(err)
					return
				}
				head := ""
				for pb.Next() {
					c, err := sv.Commit(ctx, image, CommitRequest{Parent: head, LeaseID: l.ID, Holder: "laptop", Manifest: root("r")})
					if err != nil {
						b.Error(err)
						return
					}
					head = c.ID
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commits/s")
		})
	}
}

// BenchmarkHTTPSCommit measures a commit as a device sees it: through the
// pinned TLS client, the token check and the bbolt store.
func BenchmarkHTTPSCommit(b *testing.B) {
	srv, token, sv := apiServer(b)
	ctx := context.Background()
	sv.Create(ctx, "desktop")
	c := NewClient(srv.URL, token, fingerprintOf(srv))
	l, err := c.Acquire(ctx, "desktop", "laptop", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	commitChain(b, c.Commit, l)
}

// commitChain makes b.N commits to "desktop", each on the last, under l;
// commit is the Service's or a Client's.
func commitChain(b *testing.B, commit func(context.Context, string, CommitRequest) (Commit, error), l Lease) {
	head := ""
	for range b.N {
		c, err := commit(context.Background(), "desktop", CommitRequest{Parent: head, LeaseID: l.ID, Holder: "laptop", Manifest: root("r")})
		if err != nil {
			b.Fatal(err)
		}
		head = c.ID
	}
}
