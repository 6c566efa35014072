package leasectl

import (
	"context"
	"testing"
	"time"
)

// BenchmarkAcquireRenewCommit measures one device's cycle on each store:
// acquire, renew, commit, release (four durable changes).
func BenchmarkAcquireRenewCommit(b *testing.B) {
	for name, open := range stores() {
		b.Run(name, func(b *testing.B) {
			sv := &Service{Store: open(b)}
			ctx := context.Background()
			sv.Create(ctx, "desktop")
			head := ""
			b.ResetTimer()
			for range b.N {
				l, err := sv.Acquire(ctx, "desktop", "laptop", time.Minute)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := sv.Renew(ctx, "desktop", l.ID, time.Minute); err != nil {
					b.Fatal(err)
				}
				c, err := sv.Commit(ctx, "desktop", CommitRequest{Parent: head, LeaseID: l.ID, Holder: "laptop", Manifest: root("r")})
				if err != nil {
					b.Fatal(err)
				}
				head = c.ID
				if err := sv.Release(ctx, "desktop", l.ID); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(4*b.N), "µs/change")
		})
	}
}
