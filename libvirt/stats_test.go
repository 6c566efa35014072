package libvirt

import (
	"errors"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/handoff-dev/handoff/switchover"
)

func TestJobStatsToSample(t *testing.T) {
	// Field names and types as libvirt 9.0 sends them for a running job.
	params := []golibvirt.TypedParam{
		{Field: "time_elapsed", Value: golibvirt.TypedParamValue{D: 4, I: uint64(1500)}},
		{Field: "memory_iteration", Value: golibvirt.TypedParamValue{D: 4, I: uint64(3)}},
		{Field: "memory_dirty_rate", Value: golibvirt.TypedParamValue{D: 4, I: uint64(250)}},
		{Field: "memory_page_size", Value: golibvirt.TypedParamValue{D: 4, I: uint64(4096)}},
		{Field: "memory_bps", Value: golibvirt.TypedParamValue{D: 4, I: uint64(2_500_000)}},
		{Field: "memory_remaining", Value: golibvirt.TypedParamValue{D: 4, I: uint64(10 << 20)}},
		{Field: "data_processed", Value: golibvirt.TypedParamValue{D: 4, I: uint64(99 << 20)}},
		{Field: "memory_total", Value: golibvirt.TypedParamValue{D: 4, I: uint64(256 << 20)}},
		{Field: "operation", Value: golibvirt.TypedParamValue{D: 1, I: int32(3)}},
		{Field: "some_string", Value: golibvirt.TypedParamValue{D: 7, I: "x"}},
	}
	got := parseJobStats(params).sample(switchover.PhasePrecopy)
	want := switchover.Sample{
		Elapsed: 1500 * time.Millisecond, Phase: switchover.PhasePrecopy, Iteration: 3,
		DirtyRate: 250 * 4096, Bandwidth: 2_500_000, Remaining: 10 << 20,
		Transferred: 99 << 20, Total: 256 << 20,
	}
	if got != want {
		t.Fatalf("sample = %+v\nwant     %+v", got, want)
	}
}

func TestJobStatsDefaultPageSize(t *testing.T) {
	s := parseJobStats([]golibvirt.TypedParam{{Field: "memory_dirty_rate", Value: golibvirt.TypedParamValue{D: 4, I: uint64(10)}}})
	if got := s.sample(switchover.PhasePrecopy).DirtyRate; got != 40960 {
		t.Fatalf("DirtyRate = %v, want 10 pages/s * 4096 B", got)
	}
}

func TestVNCFromXML(t *testing.T) {
	tests := []struct {
		xml     string
		want    VNCAddress
		wantErr bool
	}{
		{`<domain><devices><graphics type='vnc' socket='/run/a/vnc.sock'/></devices></domain>`, VNCAddress{"unix", "/run/a/vnc.sock"}, false},
		{`<domain><devices><graphics type='spice' port='5901'/><graphics type='vnc' port='5900' listen='0.0.0.0'/></devices></domain>`, VNCAddress{"tcp", "127.0.0.1:5900"}, false},
		{`<domain><devices><graphics type='vnc' port='5902' listen='10.0.0.5'/></devices></domain>`, VNCAddress{"tcp", "10.0.0.5:5902"}, false},
		{`<domain><devices/></domain>`, VNCAddress{}, true},
		{`<domain><devices><graphics type='vnc' port='-1' autoport='yes'/></devices></domain>`, VNCAddress{}, true},
	}
	for _, tt := range tests {
		got, err := vncFromXML(tt.xml)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("vncFromXML(%s) = %v, %v; want %v, error %v", tt.xml, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestCompletedResultTakesTheDowntimeOfTheSideThatHasOne(t *testing.T) {
	src := jobStats{elapsed: 22 * time.Second, transferred: 100, iteration: 3}
	dst := jobStats{elapsed: 21 * time.Second, downtime: 4 * time.Millisecond, hasDowntime: true}
	running := jobStats{elapsed: 21 * time.Second, downtime: 6 * time.Millisecond, hasDowntime: true}
	for _, tc := range []struct {
		name    string
		sides   []jobStats
		running jobStats
		want    time.Duration
		known   bool
	}{
		{"the source has none", []jobStats{src, dst}, running, 4 * time.Millisecond, true},
		{"only the destination kept its", []jobStats{dst}, running, 4 * time.Millisecond, true},
		{"a real 0 ms", []jobStats{{elapsed: time.Second, hasDowntime: true}, dst}, running, 0, true},
		{"none kept one, the running job had", []jobStats{src}, running, 6 * time.Millisecond, true},
		{"a hand back by post-copy: nobody reported one", []jobStats{src}, jobStats{}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := completedResult(Result{}, tc.sides, tc.running)
			if r.Downtime != tc.want || r.DowntimeKnown != tc.known {
				t.Errorf("downtime %v (known %v), want %v (%v)", r.Downtime, r.DowntimeKnown, tc.want, tc.known)
			}
			if rec := r.Record(); (rec.DowntimeMs != nil) != tc.known {
				t.Errorf("--json's downtime_ms %v, want one only when known", rec.DowntimeMs)
			}
		})
	}
	if r := completedResult(Result{}, []jobStats{src, dst}, running); r.Total != src.elapsed || r.Iterations != 3 {
		t.Errorf("totals %+v, want the source's", r)
	}
}

func TestBothStreamsSayWhichBroke(t *testing.T) {
	broke := func(msg string) func() error { return func() error { return errors.New(msg) } }
	fine := func() error { return nil }
	for _, tc := range []struct {
		name           string
		memory, disks  func() error
		want           string // "" : no error
		nilWhenNoneSet bool
	}{
		{"neither opened", nil, nil, "", true},
		{"memory only, broken", broke("reset"), nil, "reset", false},
		{"disks only, broken", nil, broke("reset"), "the disks' mirror: reset", false},
		{"both fine", fine, fine, "", false},
		{"both broken", broke("cut"), broke("reset"), "cut\nthe disks' mirror: reset", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stop := bothStreams(tc.memory, tc.disks)
			if stop == nil {
				if !tc.nilWhenNoneSet {
					t.Fatal("no stop for ways that were opened")
				}
				return
			}
			err := stop()
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tc.want {
				t.Errorf("stop() = %q, want %q", got, tc.want)
			}
		})
	}
}
