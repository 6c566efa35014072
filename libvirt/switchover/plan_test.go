package switchover

import "testing"

func TestChoosePlan(t *testing.T) {
	tests := []struct {
		name             string
		dirty, link      float64
		postCopyAllowed  bool
		compress, postcp bool
	}{
		{"quiet guest on a slow link compresses", 0.2e6, 2.5e6, true, true, false},
		{"busy guest on a slow link keeps post-copy", 4e6, 2.5e6, true, false, true},
		{"borderline guest keeps post-copy", 1.5e6, 2.5e6, true, false, true},
		{"unknown link keeps post-copy", 0.1e6, 0, true, false, true},
		{"no post-copy on the host: compress", 4e6, 2.5e6, false, true, false},
		{"no post-copy, unknown link: compress", 0, 0, false, true, false},
		{"fast link: compression would slow it", 0.2e6, 125e6, true, false, true},
	}
	for _, tt := range tests {
		p := ChoosePlan(tt.dirty, tt.link, tt.postCopyAllowed)
		if p.Compress != tt.compress || p.PostCopy != tt.postcp || p.Reason == "" {
			t.Errorf("%s: ChoosePlan = %+v, want compress %v post-copy %v", tt.name, p, tt.compress, tt.postcp)
		}
		if p.Compress && p.PostCopy {
			t.Errorf("%s: plan %+v turns on post-copy with compression, which QEMU refuses", tt.name, p)
		}
	}
}
