package libvirt

import (
	"errors"
	"reflect"
	"testing"
)

func TestDisksFromXML(t *testing.T) {
	const chain = `<domain><devices>
  <disk type='file' device='disk'>
    <driver name='qemu' type='qcow2'/>
    <source file='/img/desk.ovl.qcow2' index='2'/>
    <backingStore type='file' index='1'>
      <format type='qcow2'/>
      <source file='/img/desk.qcow2'/>
      <backingStore type='file'><format type='raw'/><source file='/img/base.raw'/><backingStore/></backingStore>
    </backingStore>
    <target dev='vda' bus='virtio'/>
    <alias name='virtio-disk0'/>
  </disk>
  <disk type='file' device='cdrom'><source file='/iso/debian.iso'/><target dev='sda'/><readonly/></disk>
  <disk type='file' device='disk'><source file='/img/data.raw'/><target dev='vdb'/></disk>
  <disk type='file' device='disk'><driver type='raw'/><source file='/img/ro.raw'/><target dev='vdc'/><readonly/></disk>
</devices></domain>`
	tests := []struct {
		name string
		xml  string
		want []Disk
		err  error
	}{
		{"a chain, a CD-ROM, a raw disk, a read-only disk", chain, []Disk{
			{Target: "vda", Alias: "virtio-disk0", Chain: []Layer{{"/img/desk.ovl.qcow2", "qcow2"}, {"/img/desk.qcow2", "qcow2"}, {"/img/base.raw", "raw"}}},
			{Target: "vdb", Chain: []Layer{{"/img/data.raw", "raw"}}},
		}, nil},
		{"no disks", `<domain><devices><graphics type='vnc'/></devices></domain>`, nil, nil},
		{"a block device", `<domain><devices><disk type='block' device='disk'><source dev='/dev/sdb'/><target dev='vda'/></disk></devices></domain>`, nil, ErrUnmovableDisk},
		{"a network disk", `<domain><devices><disk type='network' device='disk'><source protocol='nbd' name='x'/><target dev='vda'/></disk></devices></domain>`, nil, ErrUnmovableDisk},
		{"a shareable disk", `<domain><devices><disk type='file' device='disk'><source file='/x'/><target dev='vda'/><shareable/></disk></devices></domain>`, nil, ErrUnmovableDisk},
		{"an empty drive", `<domain><devices><disk type='file' device='disk'><target dev='vda'/></disk></devices></domain>`, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := disksFromXML(tt.xml)
			if !errors.Is(err, tt.err) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
			// libvirt's migration exports a disk by its drive alias.
			if len(got) > 0 && got[0].Alias == "virtio-disk0" && got[0].NBDExport() != "drive-virtio-disk0" {
				t.Errorf("%s is exported as %q, want drive-virtio-disk0", got[0].Target, got[0].NBDExport())
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestOverlayPath(t *testing.T) {
	for top, want := range map[string]string{
		"/img/desk.qcow2":           "/img/desk.h1.qcow2",
		"/img/desk.raw":             "/img/desk.h1.qcow2",
		"/img/noext":                "/img/noext.h1.qcow2",
		"/var/lib/images/a.b.qcow2": "/var/lib/images/a.b.h1.qcow2",
	} {
		if got := OverlayPath(top, "h1"); got != want {
			t.Errorf("OverlayPath(%q) = %q, want %q", top, got, want)
		}
	}
}
