package checkpointbench

import (
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/leasectl"
	"github.com/handoff-dev/handoff/testvm/lab"
)

func TestMedianAndWorst(t *testing.T) {
	for _, c := range []struct {
		name          string
		xs            []int64
		median, worst int64
	}{
		{"none", nil, 0, 0},
		{"one", []int64{7}, 7, 7},
		{"odd, unsorted", []int64{9, 1, 5}, 5, 9},
		{"even: the mean of the middle two", []int64{40, 10, 30, 20}, 25, 40},
		{"repeats", []int64{3, 3, 3, 100}, 3, 100},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := append([]int64(nil), c.xs...)
			if got := Median(c.xs); got != c.median {
				t.Errorf("Median(%v) = %d, want %d", c.xs, got, c.median)
			}
			if got := Worst(c.xs); got != c.worst {
				t.Errorf("Worst(%v) = %d, want %d", c.xs, got, c.worst)
			}
			for i := range before {
				if before[i] != c.xs[i] {
					t.Fatalf("Median reordered its input: %v, was %v", c.xs, before)
				}
			}
		})
	}
	if got := Median([]time.Duration{time.Second, 3 * time.Second}); got != 2*time.Second {
		t.Errorf("Median of durations = %v, want 2s", got)
	}
}

func withRef(c Checkpoint, zstd int64) Checkpoint {
	c.Reference = Reference{Zstd: zstd}
	return c
}

func TestSummarize(t *testing.T) {
	cp := func(pauseMs, sent, link, memory int64, took float64) Checkpoint {
		return Checkpoint{Pause: time.Duration(pauseMs) * time.Millisecond, Sent: sent, LinkBytes: link, MemoryBytes: memory,
			Took: time.Duration(took * float64(time.Second))}
	}
	for _, c := range []struct {
		name string
		cps  []Checkpoint
		want Summary
	}{
		{"none", nil, Summary{MemoryBytes: -1}},
		{"the first alone: no medians of the rest", []Checkpoint{cp(120, 90e6, 95e6, 536e6, 30)},
			Summary{N: 1, PauseMedian: 120 * time.Millisecond, PauseWorst: 120 * time.Millisecond, TookMedian: 30 * time.Second, TookWorst: 30 * time.Second,
				FirstSent: 90e6, FirstLink: 95e6, MemoryBytes: 536e6}},
		{"the first's bytes stand apart", []Checkpoint{
			cp(200, 90e6, 95e6, 536e6, 30), cp(80, 3e6, 4e6, 536e6, 3), cp(100, 5e6, 6e6, -1, 4), cp(60, 1e6, 2e6, 536e6, 2)},
			Summary{N: 4, PauseMedian: 90 * time.Millisecond, PauseWorst: 200 * time.Millisecond, TookMedian: 3500 * time.Millisecond, TookWorst: 30 * time.Second,
				FirstSent: 90e6, FirstLink: 95e6, SentMedian: 3e6, LinkMedian: 4e6, Later: 3, MemoryBytes: 536e6}},
		{"the bytes over what changed", []Checkpoint{
			cp(10, 90e6, 95e6, 536e6, 30), withRef(cp(10, 3e6, 4e6, 536e6, 3), 2e6), withRef(cp(10, 3e6, 3e6, 536e6, 3), 1e6), withRef(cp(10, 1e6, 1e6, 536e6, 2), -1)},
			Summary{N: 4, PauseMedian: 10 * time.Millisecond, PauseWorst: 10 * time.Millisecond, TookMedian: 3 * time.Second, TookWorst: 30 * time.Second,
				FirstSent: 90e6, FirstLink: 95e6, SentMedian: 3e6, LinkMedian: 3e6, Later: 3, MemoryBytes: 536e6,
				Judged: 2, RefMedian: 1.5e6, RatioMedian: 2.5, RatioWorst: 3}},
		{"no manifest read", []Checkpoint{cp(10, 1, 2, -1, 1), cp(10, 1, 2, -1, 1)},
			Summary{N: 2, PauseMedian: 10 * time.Millisecond, PauseWorst: 10 * time.Millisecond, TookMedian: time.Second, TookWorst: time.Second,
				FirstSent: 1, FirstLink: 2, SentMedian: 1, LinkMedian: 2, Later: 1, MemoryBytes: -1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := Summarize(c.cps); got != c.want {
				t.Errorf("Summarize =\n %+v, want\n %+v", got, c.want)
			}
		})
	}
}

func TestParseCheckpoint(t *testing.T) {
	const good = `{"at":"2026-12-02T08:01:02.5Z","branch":"","commit":"c-0007","epoch":3,"pause_ms":142,"seconds":12.25,"sent_bytes":3400000}`
	at := time.Date(2026, 12, 2, 8, 1, 2, 5e8, time.UTC)
	for _, c := range []struct {
		name, out string
		want      Checkpoint
		err       string
	}{
		{"one line", good + "\n", Checkpoint{Commit: "c-0007", At: at, Epoch: 3, Pause: 142 * time.Millisecond, Took: 12250 * time.Millisecond,
			Sent: 3400000, MemoryBytes: -1, ManifestSent: -1}, ""},
		{"a warning before it", "warning: the link cannot emulate a round trip\n" + good, Checkpoint{Commit: "c-0007", At: at, Epoch: 3,
			Pause: 142 * time.Millisecond, Took: 12250 * time.Millisecond, Sent: 3400000, MemoryBytes: -1, ManifestSent: -1}, ""},
		{"a branch", `{"commit":"c-1","branch":"handoff-desktop-laptop-0801","pause_ms":0,"sent_bytes":0,"seconds":1}`,
			Checkpoint{Commit: "c-1", Branch: "handoff-desktop-laptop-0801", Took: time.Second, MemoryBytes: -1, ManifestSent: -1}, ""},
		{"nothing", "", Checkpoint{}, "printed no JSON object"},
		{"the text output", "checkpoint of handoff-desktop committed as c-1 (lease epoch 2): paused 90 ms\n", Checkpoint{}, "printed no JSON object"},
		{"no commit", `{"pause_ms":1,"sent_bytes":1,"seconds":1}`, Checkpoint{}, `lacks ["commit"]`},
		{"an older binary", `{"commit":"c-1"}`, Checkpoint{}, `lacks ["pause_ms" "sent_bytes" "seconds"]`},
		{"a wrong type", `{"commit":"c-1","pause_ms":"fast","sent_bytes":1,"seconds":1}`, Checkpoint{}, "cannot unmarshal"},
		{"no time taken", `{"commit":"c-1","pause_ms":1,"sent_bytes":1,"seconds":0}`, Checkpoint{}, "no time taken"},
		{"negative bytes", `{"commit":"c-1","pause_ms":1,"sent_bytes":-5,"seconds":1}`, Checkpoint{}, "negative"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseCheckpoint([]byte(c.out))
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err = %v, want one saying %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !got.At.Equal(c.want.At) {
				t.Errorf("At = %v, want %v", got.At, c.want.At)
			}
			got.At, c.want.At = time.Time{}, time.Time{}
			if got != c.want {
				t.Errorf("got\n %+v, want\n %+v", got, c.want)
			}
		})
	}
}

func TestParseMigrate(t *testing.T) {
	for _, c := range []struct{ name, out, err string }{
		{"completed", `{"phase":"disks"}` + "\n" + `{"phase":"completed"}` + "\n" + `{"phase":"completed","mode":"pre-copy","total_ms":9000}` + "\n", ""},
		{"aborted", `{"phase":"memory"}` + "\n" + `{"phase":"aborted","mode":"pre-copy","error":"the link went away"}`, `ended "aborted": the link went away`},
		{"no JSON", "moved\n", "printed no JSON"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := ParseMigrate([]byte(c.out))
			if c.err == "" && err != nil || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
				t.Fatalf("err = %v, want %q", err, c.err)
			}
		})
	}
}

func TestFromManifest(t *testing.T) {
	meta := map[string]string{"domain": "handoff-desktop", "memory": strings.Repeat("ab", 32),
		"sent-bytes": "3400000", "memory-bytes": "541065216"}
	st := &leasectl.State{Image: "handoff-desktop", Head: "c-2", Commits: []leasectl.Commit{
		{ID: "c-1", Manifest: leasectl.Manifest{Root: "r", Meta: map[string]string{"domain": "handoff-desktop", "memory": strings.Repeat("cd", 32), "memory-bytes": "1"}}},
		{ID: "c-2", Manifest: leasectl.Manifest{Root: "r", Meta: meta}},
		{ID: "c-plain", Manifest: leasectl.Manifest{Root: "r"}},
	}}
	cp := Checkpoint{Commit: "c-2", MemoryBytes: -1, ManifestSent: -1}
	if err := FromManifest(&cp, st); err != nil {
		t.Fatal(err)
	}
	if cp.MemoryBytes != 541065216 || cp.ManifestSent != 3400000 {
		t.Errorf("from the manifest: memory %d, sent %d", cp.MemoryBytes, cp.ManifestSent)
	}
	for _, id := range []string{"c-missing", "c-plain"} {
		cp := Checkpoint{Commit: id, MemoryBytes: -1, ManifestSent: -1}
		if err := FromManifest(&cp, st); err == nil || cp.MemoryBytes != -1 {
			t.Errorf("commit %s: err %v, memory %d; want an error and the size unknown", id, err, cp.MemoryBytes)
		}
	}
}

func TestVerdict(t *testing.T) {
	well := lab.Status{GuestHost: "workstation", GuestIntegrity: "ok", GuestDiskIntegrity: "ok"}
	for _, c := range []struct {
		name string
		edit func(*lab.Status)
		want string
	}{
		{"well", func(*lab.Status) {}, "ok"},
		{"kernel died", func(s *lab.Status) { s.GuestPanic = "Kernel panic - not syncing: list_add corruption" },
			"kernel died: Kernel panic - not syncing: list_add corruption"},
		{"elsewhere", func(s *lab.Status) { s.GuestHost = "none" }, "runs on none, not the workstation"},
		{"disk broken", func(s *lab.Status) {
			s.GuestDiskIntegrity, s.GuestProblem = "FAIL", "disk: record 812 holds seq 790"
		}, "memory ok, disk FAIL: disk: record 812 holds seq 790"},
		{"no disk verdict (the busybox guest)", func(s *lab.Status) { s.GuestDiskIntegrity = "" }, "memory ok, disk not reported"},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := well
			c.edit(&st)
			if got := Verdict(st, "workstation"); got != c.want {
				t.Errorf("Verdict = %q, want %q", got, c.want)
			}
		})
	}
}

func TestWriteMarkdown(t *testing.T) {
	cps := func(pausesMs ...int64) []Checkpoint {
		var out []Checkpoint
		for i, p := range pausesMs {
			sent, link := int64(2e6), int64(2.2e6)
			if i == 0 {
				sent, link = 150e6, 160e6
			}
			out = append(out, Checkpoint{Pause: time.Duration(p) * time.Millisecond, Sent: sent, LinkBytes: link,
				MemoryBytes: 541e6, Took: time.Duration(i+2) * time.Second, Reference: Reference{Zstd: int64(1e6 * (i + 1))}})
		}
		return out
	}
	rows := []Row{
		{Link: "20mbit", Try: 1, Count: 3, Checkpoints: cps(150, 90), Note: "after checkpoint 2 of 3 the guest's kernel died: oops | here"},
		{Link: "20mbit", Try: 2, Count: 3, Checkpoints: cps(150, 90, 110), Guest: "ok"},
		{Link: "1gbit", Try: 1, Count: 3, Checkpoints: cps(120, 340, 80), Guest: "ok"},
		{Link: "1gbit", Try: 2, Count: 3, Note: "the move to the workstation: exit status 1"},
		{Link: "100mbit", Try: 1, Count: 1, Checkpoints: cps(30), Guest: "ok", Note: "after the move home the guest's state is kernel died"},
	}
	var b strings.Builder
	WriteMarkdown(&b, rows)
	want := `| link | checkpoints | pause, median | pause, worst | sent, the first | sent, median of the rest | link, the first | link, median of the rest | memory file | changed since the one before (zstd -3), median | link / changed, median | link / changed, worst | snapshot to commit, median | snapshot to commit, worst | guest after |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|
| 20 Mbit/s | 2 of 3 | 120 ms | 150 ms | 150.0 MB | 2.0 MB | 160.0 MB | 2.2 MB | 541.0 MB | 2.0 MB | 1.10x | 1.10x | 2.5 s | 3.0 s | after checkpoint 2 of 3 the guest's kernel died: oops \| here |
| 20 Mbit/s, try 2 | 3 of 3 | 110 ms | 150 ms | 150.0 MB | 2.0 MB | 160.0 MB | 2.2 MB | 541.0 MB | 2.5 MB | 0.92x | 1.10x | 3.0 s | 4.0 s | ok |
| 1 Gbit/s | 3 of 3 | 120 ms | 340 ms | 150.0 MB | 2.0 MB | 160.0 MB | 2.2 MB | 541.0 MB | 2.5 MB | 0.92x | 1.10x | 3.0 s | 4.0 s | ok |
| 1 Gbit/s, try 2 | 0 of 3 | – | – | – | – | – | – | – | – | – | – | – | – | the move to the workstation: exit status 1 |
| 100 Mbit/s | 1 of 1 | 30 ms | 30 ms | 150.0 MB | – | 160.0 MB | – | 541.0 MB | – | – | – | 2.0 s | 2.0 s | ok; after the move home the guest's state is kernel died |

- 20 Mbit/s: not judged: the turn failed after 2 of 3 checkpoints (their worst pause 150 ms)
- 20 Mbit/s, try 2: the worst pause of 3 checkpoints 150 ms (median 110 ms); target under 300 ms, guest ok: met
- 20 Mbit/s, try 2: the link's bytes of 2 later checkpoints, over zstd -3 of the pages and disk blocks changed since the one before: median 0.92x, worst 1.10x; target at most 1.5x: met
- 1 Gbit/s: the worst pause of 3 checkpoints 340 ms (median 120 ms); target under 300 ms, guest ok: NOT met
- 1 Gbit/s: the link's bytes of 2 later checkpoints, over zstd -3 of the pages and disk blocks changed since the one before: median 0.92x, worst 1.10x; target at most 1.5x: met
- 1 Gbit/s, try 2: not judged: the turn failed before its first checkpoint
- 100 Mbit/s: not judged: the turn failed after 1 of 1 checkpoints (their worst pause 30 ms)
`
	if got := b.String(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}
