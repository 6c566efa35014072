package libvirt

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"

	golibvirt "github.com/digitalocean/go-libvirt"
)

// Pool is a directory where a host's libvirt daemon keeps images, owned by
// that daemon: files made through it are the daemon's to open, on a local
// host and on one reached over SSH alike.
type Pool struct {
	conn *Conn
	pool golibvirt.StoragePool
	Name string
	Dir  string
}

// EnsurePool returns the running pool whose directory is dir, defining
// and starting one when the daemon has none there.
func (c *Conn) EnsurePool(dir string) (*Pool, error) {
	dir = filepath.Clean(dir)
	p, err := c.lv.StoragePoolLookupByTargetPath(dir)
	if err != nil {
		// Pool names are unique per daemon: one per directory.
		sum := sha256.Sum256([]byte(dir))
		name := "handoff-" + hex.EncodeToString(sum[:4])
		def := fmt.Sprintf("<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>", name, xmlText(dir))
		if p, err = c.lv.StoragePoolDefineXML(def, 0); err != nil {
			return nil, fmt.Errorf("define a storage pool for %s on %s: %w", dir, c.uri, err)
		}
	}
	if state, _, _, _, err := c.lv.StoragePoolGetInfo(p); err == nil && golibvirt.StoragePoolState(state) != golibvirt.StoragePoolRunning {
		if err := c.lv.StoragePoolCreate(p, 0); err != nil {
			return nil, fmt.Errorf("start storage pool %s (%s) on %s: %w", p.Name, dir, c.uri, err)
		}
	}
	return &Pool{conn: c, pool: p, Name: p.Name, Dir: dir}, nil
}

// Refresh makes the pool see files put into its directory from outside.
func (p *Pool) Refresh() error {
	if err := p.conn.lv.StoragePoolRefresh(p.pool, 0); err != nil {
		return fmt.Errorf("refresh pool %s on %s: %w", p.Name, p.conn.uri, err)
	}
	return nil
}

// overlayCluster is the cluster size of the overlays a move starts: a
// desktop writes 4 KiB blocks here and there, and the disk mirror copies
// whole clusters, so at qcow2's default 64 KiB a scattered 4 KiB write cost
// 64 KiB on the link (measured by the disk bench). Overlays live for one
// move, so their larger tables cost nothing that lasts.
const overlayCluster = 4096

// CreateOverlay makes an empty qcow2 (v3) file name in the pool, of the
// given virtual size, on top of backing; it returns its path.
func (p *Pool) CreateOverlay(name string, backing Layer, size uint64) (string, error) {
	def := fmt.Sprintf(`<volume><name>%s</name><capacity unit='bytes'>%d</capacity>`+
		`<target><format type='qcow2'/><compat>1.1</compat><clusterSize unit='B'>%d</clusterSize></target>`+
		`<backingStore><path>%s</path><format type='%s'/></backingStore></volume>`,
		xmlText(name), size, overlayCluster, xmlText(backing.Path), xmlText(backing.Format))
	v, err := p.conn.lv.StorageVolCreateXML(p.pool, def, 0)
	if err != nil {
		return "", fmt.Errorf("create overlay %s on %s in %s: %w", name, backing.Path, p.Dir, err)
	}
	path, err := p.conn.lv.StorageVolGetPath(v)
	if err != nil {
		return "", fmt.Errorf("path of new volume %s: %w", name, err)
	}
	return path, nil
}

// VirtualSize is the size the guest sees of the image at path, which must
// lie in a pool of the daemon's.
func (c *Conn) VirtualSize(path string) (uint64, error) {
	v, err := c.volume(path)
	if err != nil {
		return 0, err
	}
	_, capacity, _, err := c.lv.StorageVolGetInfo(v)
	if err != nil {
		return 0, fmt.Errorf("size of %s on %s: %w", path, c.uri, err)
	}
	return capacity, nil
}

// DeleteVolume removes the image file at path through its host's daemon;
// a file that is already gone is not an error.
func (c *Conn) DeleteVolume(path string) error {
	v, err := c.volume(path)
	if errors.Is(err, errNoVolume) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := c.lv.StorageVolDelete(v, 0); err != nil && !golibvirt.IsNotFound(err) {
		return fmt.Errorf("delete %s on %s: %w", path, c.uri, err)
	}
	return nil
}

var errNoVolume = errors.New("no such volume")

// volume finds the image at path, making its directory a pool first when
// no pool has it yet: a domain's disks need not lie in a pool.
func (c *Conn) volume(path string) (golibvirt.StorageVol, error) {
	v, err := c.lv.StorageVolLookupByPath(path)
	if err == nil {
		return v, nil
	}
	p, perr := c.EnsurePool(filepath.Dir(path))
	if perr != nil {
		return v, perr
	}
	if err := p.Refresh(); err != nil {
		return v, err
	}
	if v, err = c.lv.StorageVolLookupByPath(path); err != nil {
		if golibvirt.IsNotFound(err) {
			return v, fmt.Errorf("%w: %s on %s", errNoVolume, path, c.uri)
		}
		return v, fmt.Errorf("look up %s on %s: %w", path, c.uri, err)
	}
	return v, nil
}
