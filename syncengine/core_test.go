package syncengine

import (
	"bufio"
	"bytes"
	"errors"
	"testing"
)

func TestPatchRebuildsTheTargetAndStaysSmall(t *testing.T) {
	base := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	with := func(edit func(b []byte) []byte) []byte { return edit(append([]byte(nil), base...)) }
	cases := []struct {
		name      string
		target    []byte
		maxPatch  int  // largest acceptable patch
		wantWhole bool // a patch would not be smaller
	}{
		{"unchanged", with(func(b []byte) []byte { return b }), 8, false},
		{"one byte", with(func(b []byte) []byte { b[1000] = 'x'; return b }), patchUnit + 8, false},
		{"one 4 KiB block", with(func(b []byte) []byte { copy(b[8192:], bytes.Repeat([]byte{7}, 4096)); return b }), 4096 + 8, false},
		{"two distant bytes", with(func(b []byte) []byte { b[10] ^= 1; b[60000] ^= 1; return b }), 2*patchUnit + 12, false},
		{"the last, short unit", with(func(b []byte) []byte { return append(b[:len(b)-5], "tail!"...) }), patchUnit + 8, false},
		{"longer than the base", with(func(b []byte) []byte { return append(b, "more"...) }), 16, false},
		{"shorter than the base", with(func(b []byte) []byte { return b[:1000] }), 8, false},
		{"all changed", bytes.Repeat([]byte{9}, len(base)), 0, true},
		{"empty", nil, 8, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := makePatch(base, c.target)
			if c.wantWhole {
				if p != nil {
					t.Fatalf("a %d-byte patch for a wholly changed object: it should go whole", len(p))
				}
				return
			}
			if p == nil || len(p) > c.maxPatch {
				t.Fatalf("patch of %d bytes, want at most %d", len(p), c.maxPatch)
			}
			got, err := applyPatch(base, p, nil)
			if err != nil || !bytes.Equal(got, c.target) {
				t.Fatalf("the patch does not rebuild the target: %v", err)
			}
		})
	}
}

func TestDamagedPatchesAreRefused(t *testing.T) {
	base := bytes.Repeat([]byte("abcd"), 1024)
	target := append([]byte(nil), base...)
	target[100] = 'z'
	p := makePatch(base, target)
	for name, bad := range map[string][]byte{
		"empty":            {},
		"run past the end": append(append([]byte(nil), p[:len(p)-1]...), 0xff, 0xff, 0x7f),
		"truncated data":   p[:len(p)-3],
		"huge length":      {0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
	} {
		if _, err := applyPatch(base, bad, nil); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
	}
}

func TestTreeRoundTripsAndRejectsDamage(t *testing.T) {
	a, b := Sum([]byte("a")), Sum([]byte("b"))
	for _, n := range []int{0, 1, fanout - 1, fanout, fanout + 1, 3*fanout + 7} {
		m := &Manifest{Size: int64(n) * 4096, ChunkSize: 4096, Chunks: make([]Hash, n)}
		for i := range m.Chunks {
			if i%3 != 0 && i < fanout || i >= 2*fanout {
				m.Chunks[i] = [2]Hash{a, b}[i%2]
			}
		}
		tr := m.tree()
		got, err := buildTree(tr.root, tr.rootRaw, tr.nodeRaw)
		if err != nil || got.Size != m.Size || len(got.Chunks) != n || got.Root() != tr.root {
			t.Fatalf("%d chunks: rebuilt %v chunks, %v", n, len(got.Chunks), err)
		}
		for i := range m.Chunks {
			if got.Chunks[i] != m.Chunks[i] {
				t.Fatalf("%d chunks: chunk %d differs after the round trip", n, i)
			}
		}
		if n > fanout && (!tr.nodes[1].IsZero() || tr.nodeRaw[1] != nil) {
			t.Errorf("%d chunks: an all-zero node was stored", n)
		}
	}
	m := &Manifest{Size: 3 * 4096, ChunkSize: 4096, Chunks: []Hash{a, b, a}}
	tr := m.tree()
	for name, raw := range map[string][]byte{
		"not a root":       []byte("nonsense"),
		"one node missing": tr.rootRaw[:len(tr.rootRaw)-32],
		"node name extra":  append(append([]byte(nil), tr.rootRaw...), make([]byte, 32)...),
		"chunk size zero":  append(append([]byte(nil), rootMagic...), 1, 0),
	} {
		if _, _, _, err := parseRoot(raw); !errors.Is(err, ErrCorrupt) {
			t.Errorf("root %s: %v, want ErrCorrupt", name, err)
		}
	}
	if _, err := parseNode(tr.nodeRaw[0], 4); !errors.Is(err, ErrCorrupt) {
		t.Errorf("a node read for more chunks than it has: %v", err)
	}
}

func TestDiffListsChangedRanges(t *testing.T) {
	a, b, c := Sum([]byte("a")), Sum([]byte("b")), Sum([]byte("c"))
	cases := []struct {
		name     string
		old, new *Manifest
		want     []Range
	}{
		{"same", &Manifest{10, 4, []Hash{a, b, c}}, &Manifest{10, 4, []Hash{a, b, c}}, nil},
		{"adjacent changes merge", &Manifest{10, 4, []Hash{a, {}, b}}, &Manifest{10, 4, []Hash{a, c, c}}, []Range{{4, 6}}},
		{"grown", &Manifest{4, 4, []Hash{a}}, &Manifest{10, 4, []Hash{a, b, c}}, []Range{{4, 6}}},
		{"shrunk", &Manifest{10, 4, []Hash{a, b, c}}, &Manifest{4, 4, []Hash{a}}, []Range{{4, 6}}},
		{"apart", &Manifest{12, 4, []Hash{a, b, c}}, &Manifest{12, 4, []Hash{b, b, a}}, []Range{{0, 4}, {8, 4}}},
	}
	for _, tc := range cases {
		got, err := Diff(tc.old, tc.new)
		if err != nil || len(got) != len(tc.want) {
			t.Errorf("%s: Diff = %v, %v; want %v", tc.name, got, err, tc.want)
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("%s: Diff = %v, want %v", tc.name, got, tc.want)
			}
		}
	}
	if _, err := Diff(&Manifest{ChunkSize: 4}, &Manifest{ChunkSize: 8}); err == nil {
		t.Error("a diff across chunk sizes was accepted")
	}
}

func TestPositionsRoundTripAndRefuseDisorder(t *testing.T) {
	want := []int{0, 1, 5, 1000, 1 << 20}
	got, err := readPositions(bufio.NewReader(bytes.NewReader(appendPositions(nil, want))), 10)
	if err != nil || len(got) != len(want) {
		t.Fatalf("positions: %v, %v", got, err)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("positions: %v, want %v", got, want)
		}
	}
	// A repeated position (delta 0 after the first) and too many positions.
	for name, b := range map[string][]byte{"repeat": {2, 3, 0}, "over the limit": appendPositions(nil, want)} {
		limit := 10
		if name == "over the limit" {
			limit = 2
		}
		if _, err := readPositions(bufio.NewReader(bytes.NewReader(b)), limit); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	bits := []bool{true, false, false, true, true, false, true, false, true}
	back, err := unbitmap(bitmap(bits), len(bits))
	if err != nil || len(back) != len(bits) {
		t.Fatalf("bitmap: %v", err)
	}
	for i := range bits {
		if back[i] != bits[i] {
			t.Fatalf("bitmap bit %d lost", i)
		}
	}
}

func FuzzApplyPatch(f *testing.F) {
	f.Add([]byte("base"), []byte{4, 0, 1, 'x'})
	f.Fuzz(func(t *testing.T, base, patch []byte) {
		out, err := applyPatch(base, patch, nil)
		if err == nil && len(out) > maxObject {
			t.Fatalf("a patch built %d bytes", len(out))
		}
	})
}
