package switchover

import "testing"

func TestChoosePlan(t *testing.T) {
	tests := []struct {
		name             string
		link             float64
		postCopyAllowed  bool
		compress, postcp bool
	}{
		{"post-copy allowed: always ready", 2.5e6, true, false, true},
		{"post-copy allowed, unknown link", 0, true, false, true},
		{"no post-copy, slow link: compress", 2.5e6, false, true, false},
		{"no post-copy, fast link: plain", 125e6, false, false, false},
		{"no post-copy, unknown link: plain", 0, false, false, false},
	}
	for _, tt := range tests {
		p := ChoosePlan(tt.link, tt.postCopyAllowed)
		if p.Compress != tt.compress || p.PostCopy != tt.postcp || p.Reason == "" {
			t.Errorf("%s: ChoosePlan = %+v, want compress %v post-copy %v", tt.name, p, tt.compress, tt.postcp)
		}
		if p.Compress && p.PostCopy {
			t.Errorf("%s: plan %+v turns on post-copy with compression, which QEMU refuses", tt.name, p)
		}
	}
}
