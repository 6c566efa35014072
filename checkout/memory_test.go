package checkout

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMemoryThatIsNoSaveFileGoesWhole(t *testing.T) {
	dir := t.TempDir()
	m := memoryFiles{file: filepath.Join(dir, "vm.checkpoint.memory")}
	if err := os.WriteFile(m.file, []byte("not a save file at all"), 0o600); err != nil {
		t.Fatal(err)
	}
	m.split()
	if m.image != "" || !strings.Contains(m.whole, "line the memory's pages up") || m.size != 22 {
		t.Fatalf("split of a file that is no save file: %+v", m)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 1 || left[0] != m.file {
		t.Fatalf("files after the split gave up: %v, want the memory file alone", left)
	}
	for _, leftover := range []string{m.file + ".image", m.file + ".recipe"} {
		os.WriteFile(leftover, nil, 0o600)
	}
	if err := m.remove(); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 0 {
		t.Fatalf("remove left %v", left)
	}
}
