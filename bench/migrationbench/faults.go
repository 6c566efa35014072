package migrationbench

import (
	"context"
	"sync"
	"time"

	"github.com/handoff-dev/handoff/testvm/lab"
)

// Faults is what post-copy's page faults cost the guest during a move:
// the time its vCPUs waited for pages (QEMU's postcopy-blocktime, on the
// destination) and the pages the destination asked for (postcopy-requests,
// on the source). Their quotient is the mean wait a fault costs.
type Faults struct {
	Blocked  time.Duration
	Requests uint64
}

// Mean is the mean wait of one page request; 0 with none.
func (f Faults) Mean() time.Duration {
	if f.Requests == 0 {
		return 0
	}
	return f.Blocked / time.Duration(f.Requests)
}

// faultPoll is how often a move's fault counters are read: the
// destination forgets its own when the move ends.
const faultPoll = 200 * time.Millisecond

// watchFaults asks the destination QEMU to count its vCPUs' post-copy
// wait as soon as its incoming half exists (before the switch, when QEMU
// sets post-copy up), and reads both ends' counters until stop, which
// returns the last read. It reads through the lab's own QMP monitor of
// each QEMU: libvirt has no call for these figures, and its monitor
// passthrough waits behind the migration's job.
func watchFaults(ctx context.Context, l *lab.Lab) (stop func() Faults) {
	ctx, cancel := context.WithCancel(ctx)
	var (
		mu   sync.Mutex
		seen Faults
		wg   sync.WaitGroup
	)
	wg.Go(func() {
		counting := false
		t := time.NewTicker(faultPoll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if !counting {
				counting = lab.QMP(ctx, l.Workstation, lab.GuestName, `{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"postcopy-blocktime","state":true}]}}`, nil) == nil
			}
			var dst struct {
				Blocktime uint64 `json:"postcopy-blocktime"` // ms
			}
			var src struct {
				RAM struct {
					Requests uint64 `json:"postcopy-requests"`
				} `json:"ram"`
			}
			const query = `{"execute":"query-migrate"}`
			dstErr, srcErr := lab.QMP(ctx, l.Workstation, lab.GuestName, query, &dst), lab.QMP(ctx, l.Server, lab.GuestName, query, &src)
			mu.Lock()
			if dstErr == nil && time.Duration(dst.Blocktime)*time.Millisecond > seen.Blocked {
				seen.Blocked = time.Duration(dst.Blocktime) * time.Millisecond
			}
			if srcErr == nil && src.RAM.Requests > seen.Requests {
				seen.Requests = src.RAM.Requests
			}
			mu.Unlock()
		}
	})
	return func() Faults {
		cancel()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return seen
	}
}
