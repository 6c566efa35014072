package switchover

import (
	"strings"
	"testing"
	"time"
)

const mb = 1e6

// trace builds samples every 500ms: each step gives the iteration, the
// dirty rate and bandwidth in MB/s and the remaining MB.
type step struct {
	iter              uint64
	dirty, bw, remain float64
}

func trace(steps ...step) []Sample {
	var out []Sample
	for i, s := range steps {
		out = append(out, Sample{
			Elapsed: time.Duration(i) * 500 * time.Millisecond, Phase: PhasePrecopy,
			Iteration: s.iter, DirtyRate: s.dirty * mb, Bandwidth: s.bw * mb,
			Remaining: uint64(s.remain * mb), Total: 256 * mb,
		})
	}
	return out
}

func repeat(n int, s step) []step {
	out := make([]step, n)
	for i := range out {
		out[i] = s
	}
	return out
}

func TestDecide(t *testing.T) {
	cfg := DefaultConfig()       // 300ms target, 1s settle, 3s window, post-copy after 20s
	cfg.SwitchByPostCopy = false // the pausing switch; see TestSwitchByPostCopyWhenTheRestFits
	tests := []struct {
		name       string
		samples    []Sample
		action     Action
		converging bool
		reason     string // a part of Decision.Reason
		switchIn   time.Duration
	}{
		{name: "no samples", samples: nil, action: Continue, converging: true, reason: "first reading"},
		{name: "no bandwidth yet", samples: trace(step{1, 0, 0, 200}), action: Continue, converging: true, reason: "measuring"},
		{name: "first pass predicts the pass",
			samples: trace(step{1, 0, 10, 100}), action: Continue, converging: true, reason: "first pass", switchIn: 10 * time.Second},
		{name: "idle guest finishes on the first pass",
			samples: trace(step{1, 0, 10, 1}), action: Switch, converging: true},
		{name: "converging but too much left",
			samples: trace(repeat(6, step{3, 1, 10, 19})...), action: Continue, converging: true, reason: "below bandwidth",
			switchIn: 1777777777}, // (19 MB - 10 MB/s * 0.3 s) / (10-1) MB/s
		{name: "converging too slowly to switch within the bound: post-copy",
			samples: trace(repeat(4, step{3, 9, 10, 100})...), action: PostCopy, converging: true, reason: "switching by post-copy"},
		{name: "slow convergence is judged only after a settle time",
			samples: trace(step{1, 0, 10, 20}, step{2, 9, 10, 100}), action: Continue, converging: true},
		{name: "converging, fits, settled",
			samples: trace(repeat(4, step{3, 1, 10, 2})...), action: Switch, converging: true, reason: "fits"},
		{name: "fits but dirty rate only just dropped: wait to settle",
			samples: trace(append(repeat(4, step{3, 12, 10, 2.5}), step{4, 1, 10, 2}, step{4, 1, 10, 2})...),
			action:  Continue, converging: true},
		{name: "not converging, bound not reached",
			samples: trace(repeat(10, step{3, 15, 10, 50})...), action: Continue, converging: false,
			reason: "not converging: dirty rate 15.0 MB/s exceeds bandwidth 10.0 MB/s", switchIn: cfg.PostCopyAfter - 4500*time.Millisecond},
		{name: "not converging past the bound: post-copy",
			samples: trace(repeat(42, step{3, 15, 10, 50})...), action: PostCopy, converging: false, reason: "post-copy"},
		{name: "post-copy bound counts from the second pass",
			samples: trace(append(repeat(40, step{1, 0, 10, 150}), repeat(4, step{2, 15, 10, 50})...)...),
			action:  Continue, converging: false},
		{name: "a first pass that ends within the bound goes on",
			samples: trace(repeat(8, step{1, 0, 10, 30})...), action: Continue, converging: true, reason: "first pass", switchIn: 3 * time.Second},
		{name: "a long first pass of a move that switches by pausing goes on",
			samples: trace(repeat(7, step{1, 0, 10, 150})...), action: Continue, converging: true, reason: "first pass", switchIn: 15 * time.Second},
		{name: "already in post-copy",
			samples: []Sample{{Phase: PhasePostcopy, Bandwidth: 1, Remaining: 1}}, action: Continue, converging: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Decide(cfg, tt.samples)
			if d.Action != tt.action || d.Converging != tt.converging {
				t.Fatalf("Decide = %+v, want action %s converging %v", d, tt.action, tt.converging)
			}
			if !strings.Contains(d.Reason, tt.reason) {
				t.Errorf("reason %q lacks %q", d.Reason, tt.reason)
			}
			if tt.switchIn != 0 && (d.SwitchIn-tt.switchIn).Abs() > 50*time.Millisecond {
				t.Errorf("SwitchIn = %v, want %v", d.SwitchIn, tt.switchIn)
			}
		})
	}
}

func TestSwitchByPostCopyWhenTheRestFits(t *testing.T) {
	cfg := DefaultConfig()
	for _, tt := range []struct {
		name    string
		samples []Sample
		action  Action
	}{
		{"converged and settled", trace(repeat(4, step{3, 1, 10, 2})...), PostCopy},
		{"idle guest at the end of its first pass", trace(step{1, 0, 10, 1}), PostCopy},
		{"too much left: keep copying", trace(repeat(6, step{3, 1, 10, 19})...), Continue},
		// Within a second of link: QEMU would otherwise stop-and-copy first.
		{"a second of link left", trace(repeat(4, step{3, 1, 10, 8})...), PostCopy},
		{"the end of a first pass within a second", trace(step{1, 0, 10, 8}), PostCopy},
		{"fits but not settled", trace(append(repeat(4, step{3, 12, 10, 2.5}), step{4, 1, 10, 2}, step{4, 1, 10, 2})...), Continue},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := Decide(cfg, tt.samples)
			if d.Action != tt.action {
				t.Fatalf("Decide = %+v, want %s", d, tt.action)
			}
			if d.Action == PostCopy && !strings.Contains(d.Reason, "fits") {
				t.Errorf("reason %q does not say the rest fits", d.Reason)
			}
		})
	}
}

func TestALongFirstPassSwitchesByPostCopy(t *testing.T) {
	cfg := DefaultConfig() // post-copy after 10 s, a 3 s window
	for _, tt := range []struct {
		name     string
		samples  []Sample
		action   Action
		reason   string
		switchIn time.Duration
	}{
		{"a pass of 18 s, measured for 3 s", trace(repeat(7, step{1, 0, 10, 150})...), PostCopy, "sends each page left once", 0},
		{"a pass of 18 s, measured for 2.5 s", trace(repeat(6, step{1, 0, 10, 150})...), Continue, "post-copy once the link is measured", 500 * time.Millisecond},
		{"a pass that ends within 10 s", trace(repeat(8, step{1, 0, 10, 30})...), Continue, "first pass", 3 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := Decide(cfg, tt.samples)
			if d.Action != tt.action || !strings.Contains(d.Reason, tt.reason) || (d.SwitchIn-tt.switchIn).Abs() > 50*time.Millisecond {
				t.Fatalf("Decide = %+v, want %s, %q, switch in %v", d, tt.action, tt.reason, tt.switchIn)
			}
		})
	}
}

func TestAPausingSwitchWaitsForTheDowntimeTarget(t *testing.T) {
	cfg := DefaultConfig()
	cfg.SwitchByPostCopy = false
	// 0.8 s of link left: a post-copy switch would go, a pause must not.
	if d := Decide(cfg, trace(repeat(4, step{3, 1, 10, 8})...)); d.Action != Continue {
		t.Fatalf("Decide = %+v, want to keep copying until the rest fits %v", d, cfg.DowntimeTarget)
	}
}

func TestDecideNeverPostCopiesWhenTheBoundIsZero(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PostCopyAfter = 0
	d := Decide(cfg, trace(repeat(400, step{3, 15, 10, 50})...))
	if d.Action != Continue || d.Converging || !strings.Contains(d.Reason, "not converging") {
		t.Fatalf("Decide = %+v, want to keep copying and say it does not converge", d)
	}
}

func TestPredictedDowntime(t *testing.T) {
	d := Decide(DefaultConfig(), trace(repeat(3, step{3, 1, 10, 5})...))
	if want := 500 * time.Millisecond; (d.PredictedDowntime - want).Abs() > time.Millisecond {
		t.Fatalf("PredictedDowntime = %v, want %v", d.PredictedDowntime, want)
	}
}

func TestDecideCountsTheDisks(t *testing.T) {
	cfg := DefaultConfig()
	cfg.SwitchByPostCopy = false // as for a move with disks
	// Copying disks: no memory figures yet; the time left comes from the
	// mirror's own rate.
	disks := []Sample{
		{Elapsed: 0, Phase: PhaseDisks, DiskTotal: 100 * mb, DiskRemaining: 60 * mb, DiskRate: 10 * mb},
		{Elapsed: time.Second, Phase: PhaseDisks, DiskTotal: 100 * mb, DiskRemaining: 50 * mb, DiskRate: 10 * mb},
	}
	d := Decide(cfg, disks)
	if d.Action != Continue || d.SwitchIn != 5*time.Second || !strings.Contains(d.Reason, "copying disks") {
		t.Errorf("disk phase: got %+v, want continue, 5s to go, a reason about disks", d)
	}
	// Memory all but sent, converging: the same remainder fits the target
	// alone, but not with 20 MB of disk writes still to flush at the switch.
	mem := repeat(6, step{iter: 3, dirty: 1, bw: 50, remain: 5})
	alone := trace(mem...)
	if d := Decide(cfg, alone); d.Action != Switch {
		t.Fatalf("without disks: got %v (%s), want switch", d.Action, d.Reason)
	}
	withDisk := trace(mem...)
	for i := range withDisk {
		withDisk[i].DiskRemaining, withDisk[i].DiskTotal = 20*mb, 100*mb
	}
	d = Decide(cfg, withDisk)
	if d.Action == Switch {
		t.Errorf("with 20 MB of disk left: switched (%s), want to wait", d.Reason)
	}
	if want := 500 * time.Millisecond; d.PredictedDowntime != want {
		t.Errorf("predicted downtime %v, want %v (25 MB at 50 MB/s)", d.PredictedDowntime, want)
	}
}
