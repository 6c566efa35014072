package libvirt

import "testing"

func TestWithGenID(t *testing.T) {
	for _, tc := range []struct{ name, in, id, want string }{
		{"a value replaced", "<domain><name>d</name><genid>old</genid></domain>", "new", "<domain><name>d</name><genid>new</genid></domain>"},
		{"asked for, set", "<domain><name>d</name><genid/></domain>", "new", "<domain><name>d</name><genid>new</genid></domain>"},
		{"no device: none added", "<domain><name>d</name></domain>", "new", "<domain><name>d</name></domain>"},
		{"no new ID: as it was", "<domain><genid>old</genid></domain>", "", "<domain><genid>old</genid></domain>"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := withGenID(tc.in, tc.id); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
	if got := domainName("<domain type='qemu'>\n  <name>handoff-desktop</name><uuid>u</uuid>"); got != "handoff-desktop" {
		t.Errorf("domainName: %q", got)
	}
}
