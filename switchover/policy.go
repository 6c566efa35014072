package switchover

import (
	"fmt"
	"time"

	"github.com/handoff-dev/handoff/units"
)

// Config is the user's side of the policy.
type Config struct {
	// DowntimeTarget is the longest pause the user accepts at the switch.
	DowntimeTarget time.Duration
	// Settle is how long the dirty rate must stay below the bandwidth before
	// a switch: one good sample is noise, a run of them is a trend.
	Settle time.Duration
	// Window is how far back rates are averaged.
	Window time.Duration
	// PostCopyAfter bounds pre-copy: the policy switches by post-copy
	// once a first pass is measured to take longer (after Window of it;
	// with SwitchByPostCopy),
	// once the migration has not converged for this long after it, or as
	// soon as it converges too slowly to switch within it. Zero means
	// never on its own: the policy then only reports.
	PostCopyAfter time.Duration
	// SwitchByPostCopy makes the switch itself a post-copy one when the
	// rest fits the downtime target: the source pauses only while its
	// CPU and device state cross (3-6 ms measured here, against 97-334 ms
	// of stop-and-copy), and the rest follows on demand for about as long
	// as the stop-and-copy pause would have lasted: a short window in which
	// the guest needs both hosts. Off where post-copy is not available.
	SwitchByPostCopy bool
	// PostCopyRest is how much link time of memory a post-copy switch may
	// leave to page in after it: the guest needs both hosts that long.
	// It is longer than the downtime target because QEMU, which polls
	// far more often than the policy, completes by itself by a stop-and-
	// copy once the rest fits its own (held) limit at the bandwidth it
	// believes: through the relay, whose buffers take bursts, it believed
	// 800 KB fit 10 ms at 20 Mbit/s and paused the guest 142-550 ms
	// (pre-switchover, measured on the lab) where a post-copy switch
	// pauses it 3 ms. A horizon of a second lets the policy switch first.
	PostCopyRest time.Duration
}

// DefaultConfig suits a desktop VM over a home link.
func DefaultConfig() Config {
	return Config{
		DowntimeTarget: 300 * time.Millisecond,
		Settle:         time.Second,
		Window:         3 * time.Second,
		PostCopyAfter:  10 * time.Second,
		// The libvirt package turns it off where post-copy is not there.
		SwitchByPostCopy: true,
		PostCopyRest:     time.Second,
	}
}

// Decide returns what to do now, given the samples of one job in the order
// they were taken. The last sample is "now".
func Decide(cfg Config, samples []Sample) Decision {
	if len(samples) == 0 {
		return Decision{Action: Continue, Converging: true, Reason: "waiting for the first reading"}
	}
	now := samples[len(samples)-1]
	switch now.Phase {
	case PhasePostcopy, PhaseCompleted, PhaseAborted, PhaseFailed:
		return Decision{Action: Continue, Converging: true, Reason: string(now.Phase)}
	case PhaseDisks:
		// libvirt copies disks first and starts on memory once they are
		// mirrored: nothing to decide yet, only how long it will take.
		d := Decision{Action: Continue, Converging: true,
			Reason: fmt.Sprintf("copying disks: %s of %s left", units.Bytes(now.DiskRemaining), units.Bytes(now.DiskTotal))}
		if rate := mean(within(samples, now.Elapsed-cfg.Window), func(s Sample) float64 { return s.DiskRate }); rate > 0 {
			d.SwitchIn = seconds(float64(now.DiskRemaining) / rate)
		}
		return d
	}
	recent := within(samples, now.Elapsed-cfg.Window)
	bw := mean(recent, func(s Sample) float64 { return s.Bandwidth })
	if bw <= 0 {
		return Decision{Action: Continue, Converging: true, Reason: "measuring bandwidth"}
	}
	// QEMU reports no dirty rate during the first pass; those zeros are
	// not a measurement and must not pull the average down.
	dirty := mean(afterFirstPass(recent), func(s Sample) float64 { return s.DirtyRate })
	// What the pause must still send: the memory left, and the disk
	// blocks the guest wrote since the mirror last caught up.
	left := now.Remaining + now.DiskRemaining
	downtime := seconds(float64(left) / bw)
	// What may stay unsent at the switch: for a pause, what the link moves
	// within the downtime target; for a post-copy switch, what it pages in
	// within PostCopyRest.
	horizon := cfg.switchHorizon()
	fits := float64(left) <= bw*horizon.Seconds()
	d := Decision{PredictedDowntime: downtime}

	if now.Iteration <= 1 {
		// The first pass sends all of memory once; QEMU measures no dirty
		// rate until it ends, so the best guess is the pass itself.
		d.Action, d.Converging = Continue, true
		d.SwitchIn = seconds(float64(left) / bw)
		d.Reason = "first pass over memory"
		if fits && now.Remaining > 0 {
			d.SwitchIn = 0
			d.switchNow(cfg, fmt.Sprintf("memory sent; the rest fits %v", horizon))
			return d
		}
		// A first pass that will outlast PostCopyAfter (a slow link):
		// every page the guest dirties after it was sent goes again, pass
		// after pass, where post-copy sends each page left once. So once
		// the link has been measured for a window, post-copy. Measured at
		// 20 Mbit/s, guest dirtying 2 MB/s (6 MB/s): 38-46 s (50 s) by
		// pre-copy and a post-copy after the first pass, 29 s (35 s) by a
		// post-copy 10 s into it, against 21 s (22 s) for its memory
		// compressed once.
		run := now.Elapsed - stableSince(samples, func(s Sample) bool { return s.Phase == PhasePrecopy && s.Iteration <= 1 })
		// Only where post-copy is how this move switches anyway: one that
		// must pause (its disks' mirror) keeps post-copy as a fallback.
		if !cfg.SwitchByPostCopy || cfg.PostCopyAfter <= 0 || run+d.SwitchIn <= cfg.PostCopyAfter || left <= uint64(bw*horizon.Seconds()) {
			return d
		}
		if run < cfg.Window {
			d.SwitchIn = cfg.Window - run
			d.Reason += fmt.Sprintf(": a pass of %v; post-copy once the link is measured", (run + d.SwitchIn).Round(time.Second))
			return d
		}
		d.Action, d.SwitchIn = PostCopy, 0
		d.Reason = fmt.Sprintf("the first pass over memory has run %v and needs %v more: switching by post-copy, which sends each page left once", run.Round(time.Second), seconds(float64(left)/bw).Round(time.Second))
		return d
	}

	if dirty < bw {
		d.Converging = true
		settled := stableSince(samples, func(s Sample) bool { return s.Bandwidth > 0 && s.DirtyRate < s.Bandwidth })
		if fits && now.Elapsed-settled >= cfg.Settle {
			d.switchNow(cfg, fmt.Sprintf("dirty rate %s below bandwidth %s; the rest fits %v", units.Rate(dirty), units.Rate(bw), horizon))
			return d
		}
		d.Action = Continue
		excess := float64(left) - bw*horizon.Seconds()
		if excess > 0 {
			d.SwitchIn = seconds(excess / (bw - dirty))
		}
		if d.SwitchIn < cfg.Settle-(now.Elapsed-settled) {
			d.SwitchIn = cfg.Settle - (now.Elapsed - settled)
		}
		d.Reason = fmt.Sprintf("dirty rate %s below bandwidth %s", units.Rate(dirty), units.Rate(bw))
		// Converging, but so slowly that waiting costs more than post-copy:
		// each pass resends what the guest dirtied during the last.
		slow := stableSince(samples, func(s Sample) bool { return s.Iteration > 1 })
		if cfg.PostCopyAfter > 0 && d.SwitchIn > cfg.PostCopyAfter && now.Elapsed-slow >= cfg.Settle {
			d.Action = PostCopy
			d.Reason += fmt.Sprintf(", but the switch is %v away: switching by post-copy", d.SwitchIn.Round(time.Second))
		}
		return d
	}

	d.Converging = false
	d.Reason = fmt.Sprintf("not converging: dirty rate %s exceeds bandwidth %s", units.Rate(dirty), units.Rate(bw))
	if cfg.PostCopyAfter <= 0 {
		d.Action = Continue
		return d
	}
	since := stableSince(samples, func(s Sample) bool { return s.Iteration > 1 && s.DirtyRate >= s.Bandwidth })
	if now.Elapsed-since >= cfg.PostCopyAfter {
		d.Action = PostCopy
		d.Reason += fmt.Sprintf(" for %v; switching by post-copy", (now.Elapsed - since).Round(time.Second))
		return d
	}
	d.Action = Continue
	d.SwitchIn = cfg.PostCopyAfter - (now.Elapsed - since)
	d.Reason += fmt.Sprintf("; post-copy in %v", d.SwitchIn.Round(time.Second))
	return d
}

// switchHorizon is how much link time of memory may be left at a switch.
func (cfg Config) switchHorizon() time.Duration {
	if cfg.SwitchByPostCopy {
		return max(cfg.DowntimeTarget, cfg.PostCopyRest)
	}
	return cfg.DowntimeTarget
}

// switchNow decides the switch, by post-copy where the config allows it.
func (d *Decision) switchNow(cfg Config, reason string) {
	d.Action, d.Reason = Switch, reason
	if cfg.SwitchByPostCopy {
		d.Action = PostCopy
		d.Reason += fmt.Sprintf(": switching by post-copy, the rest (about %v of link) paged after", d.PredictedDowntime.Round(time.Millisecond))
	}
}

// within returns the samples taken at or after from; always at least the last.
func within(samples []Sample, from time.Duration) []Sample {
	i := len(samples) - 1
	for i > 0 && samples[i-1].Elapsed >= from {
		i--
	}
	return samples[i:]
}

// stableSince returns the time of the earliest sample of the unbroken run of
// samples, ending now, for which ok holds; now's own time when the last fails.
func stableSince(samples []Sample, ok func(Sample) bool) time.Duration {
	since := samples[len(samples)-1].Elapsed
	for i := len(samples) - 1; i >= 0 && ok(samples[i]); i-- {
		since = samples[i].Elapsed
	}
	return since
}

func afterFirstPass(samples []Sample) []Sample {
	var out []Sample
	for _, s := range samples {
		if s.Iteration > 1 {
			out = append(out, s)
		}
	}
	return out
}

func mean(samples []Sample, f func(Sample) float64) float64 {
	if len(samples) == 0 {
		return 0
	}
	var sum float64
	for _, s := range samples {
		sum += f(s)
	}
	return sum / float64(len(samples))
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
