package migrationbench

import (
	"context"
	"encoding/json"
	"os/exec"
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
// returns the last read. It reads through QEMU's monitor: libvirt has no
// call for these figures.
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
				counting = qmp(ctx, l.Workstation.URI, `{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"postcopy-blocktime","state":true}]}}`, nil) == nil
			}
			var dst struct {
				Return struct {
					Blocktime uint64 `json:"postcopy-blocktime"` // ms
				} `json:"return"`
			}
			var src struct {
				Return struct {
					RAM struct {
						Requests uint64 `json:"postcopy-requests"`
					} `json:"ram"`
				} `json:"return"`
			}
			const query = `{"execute":"query-migrate"}`
			dstErr, srcErr := qmp(ctx, l.Workstation.URI, query, &dst), qmp(ctx, l.Server.URI, query, &src)
			mu.Lock()
			if dstErr == nil && time.Duration(dst.Return.Blocktime)*time.Millisecond > seen.Blocked {
				seen.Blocked = time.Duration(dst.Return.Blocktime) * time.Millisecond
			}
			if srcErr == nil && src.Return.RAM.Requests > seen.Requests {
				seen.Requests = src.Return.RAM.Requests
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

// qmp runs one QMP command on the lab guest's QEMU behind uri, decoding
// the answer into out when it is given.
func qmp(ctx context.Context, uri, command string, out any) error {
	b, err := exec.CommandContext(ctx, "virsh", "-c", uri, "qemu-monitor-command", lab.GuestName, command).Output()
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out)
}
