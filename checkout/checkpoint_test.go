package checkout

import (
	"strings"
	"testing"

	"github.com/handoff-dev/handoff/syncengine"
)

func TestSavedRoundTrip(t *testing.T) {
	s := Saved{Domain: "desktop", Memory: syncengine.Sum([]byte("memory")), MemoryRecipe: syncengine.Sum([]byte("recipe")), Disks: map[string]SavedDisk{
		"vda": {Root: syncengine.Sum([]byte("vda")), File: "desktop.qcow2"},
		"vdb": {Root: syncengine.Sum([]byte("vdb")), File: "data.qcow2"},
	}, SentBytes: 12345, MemoryBytes: 1 << 28}
	back, err := SavedFromMeta(s.Meta())
	if err != nil {
		t.Fatal(err)
	}
	if back.Domain != s.Domain || back.Memory != s.Memory || back.MemoryRecipe != s.MemoryRecipe || back.SentBytes != s.SentBytes || back.MemoryBytes != s.MemoryBytes || len(back.Disks) != 2 || back.Disks["vda"] != s.Disks["vda"] || back.Disks["vdb"] != s.Disks["vdb"] {
		t.Fatalf("read back %+v, want %+v", back, s)
	}
	if got := strings.Join(back.targets(), " "); got != "vda vdb" {
		t.Errorf("targets %q, want them sorted", got)
	}
}

func TestSavedFromMetaRefuses(t *testing.T) {
	good := Saved{Domain: "desktop", Memory: syncengine.Sum([]byte("m")), Disks: map[string]SavedDisk{"vda": {Root: syncengine.Sum([]byte("d")), File: "d.qcow2"}}}.Meta()
	for _, tc := range []struct {
		name   string
		change func(map[string]string)
		want   string
	}{
		{"a commit of files, not of a VM", func(m map[string]string) { delete(m, metaMemory) }, "no checkpoint"},
		{"no domain", func(m map[string]string) { delete(m, metaDomain) }, "no checkpoint"},
		{"a disk file outside the folder", func(m map[string]string) { m[metaDiskFile+"vda"] = "../etc/passwd" }, "named badly"},
		{"a disk without its file", func(m map[string]string) { delete(m, metaDiskFile+"vda") }, "named badly"},
		{"a disk root that is no hash", func(m map[string]string) { m[metaDisk+"vda"] = "xyz" }, "named badly"},
		{"a memory recipe that is no hash", func(m map[string]string) { m[metaRecipe] = "xyz" }, "recipe is named badly"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := map[string]string{}
			for k, v := range good {
				m[k] = v
			}
			tc.change(m)
			if _, err := SavedFromMeta(m); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}

func TestParseFlush(t *testing.T) {
	for in, want := range map[string]Flush{"sync": FlushSync, "drop": FlushDrop, "none": FlushNone} {
		if got, err := ParseFlush(in); err != nil || got != want {
			t.Errorf("ParseFlush(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseFlush("freeze"); err == nil || !strings.Contains(err.Error(), "sync") {
		t.Errorf("ParseFlush(freeze): %v, want an error that names the choices", err)
	}
}
