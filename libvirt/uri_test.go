package libvirt

import (
	"strings"
	"testing"
)

func TestParseURI(t *testing.T) {
	tests := []struct {
		uri     string
		wantErr string // empty: valid
	}{
		{"qemu:///system", ""},
		{"qemu:///session", ""},
		{"qemu+unix:///session?socket=/run/x/libvirt-sock", ""},
		{"qemu+ssh://me@server/system", ""},
		{"qemu+ssh://me@server:2222/system?keyfile=/k", ""},
		{"qemu+tcp://server:16509/system", ""},
		{"qemu+tls://server/system", ""},
		{"qemu://server/system", ""},
		{"", "empty libvirt URI"},
		{"xen:///system", `driver "xen" is not supported`},
		{"qemu+carrier-pigeon://x/system", `unknown transport "carrier-pigeon"`},
		{"qemu:///sistem", `path must be /system or /session`},
		{"qemu+ssh:///system", "needs a host"},
		{"qemu+unix://server/system", "a unix socket is local"},
		{"qemu+ssh://a b/system", "invalid character"},
	}
	for _, tt := range tests {
		t.Run(tt.uri, func(t *testing.T) {
			_, err := ParseURI(tt.uri)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ParseURI(%q) = %v, want no error", tt.uri, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ParseURI(%q) = %v, want an error containing %q", tt.uri, err, tt.wantErr)
			}
		})
	}
}
