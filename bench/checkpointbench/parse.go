package checkpointbench

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/handoff-dev/handoff/checkout"
	"github.com/handoff-dev/handoff/leasectl"
	"github.com/handoff-dev/handoff/testvm/lab"
)

// Checkpoint is one checkpoint: what 'handoff checkpoint --json' said of
// it, and what the bench counted around it.
type Checkpoint struct {
	Commit string    // the commit's ID on the server
	Branch string    // set when the server kept it as a branch instead
	At     time.Time // the snapshot's instant
	Epoch  uint64    // the lease's, that the commit was fenced by
	// Pause is how long the guest stood still for the snapshot; Took is
	// from the command's snapshot call until the commit landed.
	Pause, Took time.Duration
	// Sent is what the checkpoint's chunk transfers put on the wire, as
	// the command counts them (memory and disks, compressed).
	Sent int64

	// LinkBytes is the lab link's own count during the command, both
	// ways, frames whole: the transfers, TLS, the lease's calls.
	LinkBytes int64
	// MemoryBytes is the size of the memory file the commit's manifest
	// names, -1 when the manifest could not be read; ManifestSent the
	// manifest's own count of the bytes sent (the same as Sent).
	MemoryBytes, ManifestSent int64
	// Saved is what the commit's manifest names; nil when it was not read.
	Saved *checkout.Saved
	// Reference is what the guest changed since the checkpoint before;
	// Zstd -1 when unknown (References fills it in).
	Reference Reference
}

// ParseCheckpoint reads what 'handoff checkpoint --json' printed: its last
// line, one JSON object with keys commit, branch, at, pause_ms,
// sent_bytes, seconds and epoch. Lines before it that are no JSON object
// are passed over.
func ParseCheckpoint(out []byte) (Checkpoint, error) {
	line := lastObject(out)
	if line == nil {
		return Checkpoint{}, fmt.Errorf("handoff checkpoint --json printed no JSON object: %q", bytes.TrimSpace(out))
	}
	var rec struct {
		Commit    string    `json:"commit"`
		Branch    string    `json:"branch"`
		At        time.Time `json:"at"`
		PauseMs   *int64    `json:"pause_ms"`
		SentBytes *int64    `json:"sent_bytes"`
		Seconds   *float64  `json:"seconds"`
		Epoch     uint64    `json:"epoch"`
	}
	if err := json.Unmarshal(line, &rec); err != nil {
		return Checkpoint{}, fmt.Errorf("handoff checkpoint --json's line %s: %w", line, err)
	}
	var missing []string
	for _, f := range []struct {
		name string
		ok   bool
	}{{"commit", rec.Commit != ""}, {"pause_ms", rec.PauseMs != nil}, {"sent_bytes", rec.SentBytes != nil}, {"seconds", rec.Seconds != nil}} {
		if !f.ok {
			missing = append(missing, f.name)
		}
	}
	if missing != nil {
		return Checkpoint{}, fmt.Errorf("handoff checkpoint --json's line %s lacks %q: is the binary older than the bench?", line, missing)
	}
	if *rec.PauseMs < 0 || *rec.SentBytes < 0 || *rec.Seconds <= 0 || math.IsInf(*rec.Seconds, 0) {
		return Checkpoint{}, fmt.Errorf("handoff checkpoint --json's line %s: a negative pause or bytes, or no time taken", line)
	}
	return Checkpoint{
		Commit: rec.Commit, Branch: rec.Branch, At: rec.At, Epoch: rec.Epoch,
		Pause: time.Duration(*rec.PauseMs) * time.Millisecond,
		Took:  time.Duration(*rec.Seconds * float64(time.Second)),
		Sent:  *rec.SentBytes, MemoryBytes: -1, ManifestSent: -1,
	}, nil
}

// ParseMigrate reads the result of 'handoff migrate --json', its last JSON
// line, and says whether the migration completed.
func ParseMigrate(out []byte) error {
	line := lastObject(out)
	if line == nil {
		return errors.New("handoff migrate --json printed no JSON")
	}
	var res struct {
		Phase string `json:"phase"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(line, &res); err != nil {
		return fmt.Errorf("handoff migrate --json's last line: %w", err)
	}
	if res.Phase != "completed" {
		return fmt.Errorf("the migration ended %q: %s", res.Phase, res.Error)
	}
	return nil
}

// lastObject is the last line of out that holds a JSON object; nil if none.
func lastObject(out []byte) []byte {
	lines := bytes.Split(out, []byte("\n"))
	for i := len(lines) - 1; i >= 0; i-- {
		l := bytes.TrimSpace(lines[i])
		if len(l) > 0 && l[0] == '{' && json.Valid(l) {
			return l
		}
	}
	return nil
}

// FromManifest fills in what the commit's manifest in st says of cp: the
// size of its memory file and the bytes sent. It fails when st holds no
// such commit or the commit is no checkpoint.
func FromManifest(cp *Checkpoint, st *leasectl.State) error {
	for i := len(st.Commits) - 1; i >= 0; i-- {
		c := st.Commits[i]
		if c.ID != cp.Commit {
			continue
		}
		saved, err := savedOf(c.Manifest.Meta)
		if err != nil {
			return fmt.Errorf("commit %s of %s: %w", c.ID, st.Image, err)
		}
		cp.MemoryBytes, cp.ManifestSent, cp.Saved = saved.MemoryBytes, saved.SentBytes, saved
		return nil
	}
	return fmt.Errorf("the server's history of %s has no commit %s (its head is %q)", st.Image, cp.Commit, st.Head)
}

// Verdict is the guest's state on host as st tells it: "ok" when it runs
// there and its own checks of memory and disk pass, or what is wrong.
func Verdict(st lab.Status, host string) string {
	switch {
	case st.GuestPanic != "":
		return "kernel died: " + st.GuestPanic
	case st.GuestHost != host:
		return fmt.Sprintf("runs on %s, not the %s", st.GuestHost, host)
	case st.GuestIntegrity == "ok" && st.GuestDiskIntegrity == "ok":
		return "ok"
	case st.GuestProblem != "":
		return fmt.Sprintf("memory %s, disk %s: %s", orNone(st.GuestIntegrity), orNone(st.GuestDiskIntegrity), st.GuestProblem)
	default:
		return fmt.Sprintf("memory %s, disk %s", orNone(st.GuestIntegrity), orNone(st.GuestDiskIntegrity))
	}
}

func orNone(s string) string {
	if s == "" {
		return "not reported"
	}
	return s
}
