package checkout

import (
	"strings"
	"testing"

	"github.com/handoff-dev/handoff/syncengine"
)

func TestWithDiskSources(t *testing.T) {
	const in = `<domain type='qemu'>
  <name>desk</name>
  <metadata><app:x xmlns:app="urn:x">keep me</app:x></metadata>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/srv/img/desk.h1.qcow2' index='2'/>
      <backingStore type='file' index='1'>
        <format type='qcow2'/>
        <source file='/srv/img/desk.qcow2'/>
        <backingStore/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/a&amp;b.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/srv/img/data.qcow2'/>
      <backingStore/>
      <target dev='vdb'/>
    </disk>
  </devices>
</domain>`
	out, err := withDiskSources(in, map[string]string{"vda": "/ws/img/desk.h1.qcow2", "vdb": "/ws/it's.qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`<source file='/ws/img/desk.h1.qcow2'/>`,
		`<source file='/ws/it&apos;s.qcow2'/>`,
		`<source file='/iso/a&amp;b.iso'/>`, // not asked for: as it was
		`<app:x xmlns:app="urn:x">keep me</app:x>`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %s:\n%s", want, out)
		}
	}
	for _, gone := range []string{"/srv/img", "backingStore", "index="} {
		if strings.Contains(out, gone) {
			t.Errorf("output still has %q:\n%s", gone, out)
		}
	}
	if strings.Count(out, "<disk ") != 3 || strings.Count(out, "</disk>") != 3 {
		t.Errorf("disks lost or doubled:\n%s", out)
	}
}

func TestSameChain(t *testing.T) {
	a, b := syncengine.Hash{1}, syncengine.Hash{2}
	tests := []struct {
		name         string
		server, here []syncengine.ChainMember
		ok           bool
	}{
		{"the same file", []syncengine.ChainMember{{Name: "d.qcow2", Root: a}}, []syncengine.ChainMember{{Path: "/ws/d.qcow2", Root: a}}, true},
		{"a base that differs", []syncengine.ChainMember{{Root: a}, {Root: b}}, []syncengine.ChainMember{{Root: b}, {Root: b}}, false},
		{"a file missing", []syncengine.ChainMember{{Root: a}, {Root: b}}, []syncengine.ChainMember{{Root: b}}, false},
	}
	for _, tt := range tests {
		if err := sameChain(tt.server, tt.here); (err == nil) != tt.ok {
			t.Errorf("%s: sameChain = %v, want ok %v", tt.name, err, tt.ok)
		}
	}
}
