package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/checkout"
	"github.com/handoff-dev/handoff/leasectl"
	"github.com/handoff-dev/handoff/syncengine"
)

func TestLeaseLogNamesCheckpoints(t *testing.T) {
	at := time.Date(2026, 12, 2, 8, 0, 0, 0, time.Local)
	saved := checkout.Saved{Domain: "desktop", Memory: syncengine.Sum([]byte("m")), SentBytes: 59_200_000, MemoryBytes: 190_000_000,
		Disks: map[string]checkout.SavedDisk{"vda": {Root: syncengine.Sum([]byte("d")), File: "desktop.qcow2"}}}
	st := &leasectl.State{Image: "desktop", Commits: []leasectl.Commit{
		{ID: "c1", Holder: "laptop", Epoch: 3, Time: at, Manifest: leasectl.Manifest{Root: "r", Meta: saved.Meta()}},
		{ID: "c2", Parent: "c1", Holder: "desk", Epoch: 4, Time: at.Add(time.Minute), Manifest: leasectl.Manifest{Root: "files"}},
	}, Log: []leasectl.Event{{Time: at, Kind: "steal", Holder: "desk", Epoch: 4, Detail: "laptop lost"}}}
	l := logOf(st)
	if len(l.Commits) != 2 || l.Commits[0].Kind != "checkpoint" || l.Commits[0].SentBytes != saved.SentBytes || l.Commits[0].MemoryBytes != saved.MemoryBytes || l.Commits[1].Kind != "commit" {
		t.Fatalf("log %+v", l)
	}
	var out bytes.Buffer
	if err := printLease(&out, "log", l); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"commits of desktop (2):", "c1  laptop       epoch 3   checkpoint 59.2 MB sent, memory 190.0 MB", "c2  desk         epoch 4   commit     -", "steal    desk         epoch 4   laptop lost"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the log lacks %q:\n%s", want, out.String())
		}
	}
}
