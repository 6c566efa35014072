// Package diskbenchtest runs a short turn of the disk bench on a real lab
// of its own: one cold grab of the Debian desktop guest at 1 Gbit/s and the
// hand back, measured as the whole bench measures them.
package diskbenchtest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/bench/diskbench"
	"github.com/handoff-dev/handoff/testvm/lab"
	"github.com/handoff-dev/handoff/testvm/lab/labtest"
)

var (
	theLab *lab.Lab
	bin    string
)

func TestMain(m *testing.M) {
	labtest.MainWithBinary(m, "dbn", diskbench.LabConfig("", "", 0.5, nil), func(l *lab.Lab, b string) int {
		theLab, bin = l, b
		return m.Run()
	})
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestFirstGrabAndHandBackAt1Gbit(t *testing.T) {
	ctx := context.Background()
	t.Cleanup(func() { theLab.Shape(ctx, lab.DefaultLink) })
	cfg := diskbench.Config{Handoff: bin, Links: []string{"1gbit"}, WorkDir: t.TempDir(), Moves: 2}
	rows, err := diskbench.Run(ctx, theLab, cfg, logWriter{t})
	var table strings.Builder
	diskbench.WriteMarkdown(&table, rows)
	t.Logf("\n%s", table.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) < 2 {
		t.Fatalf("%d rows, want a grab and a hand back", len(rows))
	}
	grab, back := rows[len(rows)-2], rows[len(rows)-1]
	if grab.Move != diskbench.FirstGrab || back.Move != diskbench.HandBack || grab.Guest != "ok" || back.Guest != "ok" {
		t.Fatalf("the last try's rows are %+v and %+v, want a grab and a hand back with the guest well", grab, back)
	}
	if grab.Running <= 0 || grab.Running > 2*time.Minute {
		t.Errorf("the grab ran there after %v", grab.Running)
	}
	// The link carries what handoff counted, headers on top; the frames
	// the link counts are the IP packets the counters saw and more.
	if grab.DiskBytes <= 0 || grab.Split.Store < grab.DiskBytes || grab.Split.Memory <= 0 {
		t.Errorf("the grab's bytes: handoff counted %d for the disk, the link %+v", grab.DiskBytes, grab.Split)
	}
	if sum := grab.Split.Memory + grab.Split.Disk(); grab.LinkBytes < sum {
		t.Errorf("the link counted %d bytes, fewer than the %d of its streams", grab.LinkBytes, sum)
	}
	// A cold grab cannot carry less than the image compressed, give or
	// take per-chunk framing; the target (1.3x) the bench judges.
	if grab.Reference.Blocks == 0 || grab.Ratio() < 0.8 || grab.Ratio() > 2 {
		t.Errorf("the grab's disk bytes are %.2fx the reference %+v", grab.Ratio(), grab.Reference)
	}
	if st, err := theLab.Status(ctx); err != nil || st.GuestHost != "server" {
		t.Errorf("after the hand back the guest runs on %q (%v), want the server", st.GuestHost, err)
	}
}
