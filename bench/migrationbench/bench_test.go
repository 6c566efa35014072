package migrationbench

import (
	"testing"
	"time"
)

func TestParseDomjobinfo(t *testing.T) {
	// As virsh 9.0 prints a completed job.
	out := `Job type:         Completed
Operation:        Outgoing migration
Time elapsed:     12345        ms
Time elapsed w/o network: 12340        ms
Data processed:   98.765 MiB
Data remaining:   0.000 B
Total downtime:   57           ms
Downtime w/o network: 52           ms
`
	total, downtime, sent := parseDomjobinfo(out)
	if total != 12345*time.Millisecond || downtime != 57*time.Millisecond || sent != 103562608 {
		t.Fatalf("parseDomjobinfo = %v, %v, %d", total, downtime, sent)
	}
}

func TestFaultsMean(t *testing.T) {
	for _, c := range []struct {
		f    Faults
		want time.Duration
	}{
		{Faults{}, 0},
		{Faults{Blocked: 300 * time.Millisecond, Requests: 0}, 0},
		{Faults{Blocked: 300 * time.Millisecond, Requests: 150}, 2 * time.Millisecond},
	} {
		if got := c.f.Mean(); got != c.want {
			t.Errorf("%+v.Mean() = %v, want %v", c.f, got, c.want)
		}
	}
}
