package lab

import "testing"

func TestQEMUMajor(t *testing.T) {
	for _, c := range []struct {
		out   string
		major int
		ok    bool
	}{
		{"QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022 Fabrice Bellard\n", 7, true},
		{"QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n", 10, true},
		{"qemu-system-x86_64: command not found", 0, false},
	} {
		major, ok := qemuMajor(c.out)
		if major != c.major || ok != c.ok {
			t.Errorf("qemuMajor(%q) = %d, %v; want %d, %v", c.out, major, ok, c.major, c.ok)
		}
	}
}
