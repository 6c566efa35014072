package libvirt

import (
	"errors"
	"net/url"
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

func TestConnectHintNamesWhatToCheck(t *testing.T) {
	for _, tc := range []struct {
		uri, err, want string
	}{
		{"qemu+unix:///session?socket=/run/x/libvirt-sock", "dial unix /run/x/libvirt-sock: connect: no such file or directory", "no libvirt daemon listens on /run/x/libvirt-sock"},
		{"qemu+unix:///session?socket=/run/x/libvirt-sock", "dial unix /run/x/libvirt-sock: connect: connection refused", "/run/x/libvirt-sock is there but no libvirt daemon accepts on it"},
		{"qemu:///system", "dial unix /var/run/libvirt/libvirt-sock: connect: connection refused", "is libvirtd running?"},
		{"qemu+tcp://server:16509/system", "dial tcp 192.0.2.1:16509: connect: connection refused", "is server:16509 reachable"},
		{"qemu+ssh://me@server/system", "ssh: handshake failed: ssh: unable to authenticate", "ssh-agent"},
	} {
		u, err := url.Parse(tc.uri)
		if err != nil {
			t.Fatal(err)
		}
		if got := connectHint(u, errors.New(tc.err)); !strings.Contains(got, tc.want) {
			t.Errorf("%s, %q: hint %q, want one with %q", tc.uri, tc.err, got, tc.want)
		}
	}
}
