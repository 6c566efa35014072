package syncengine

import (
	"bytes"
	"context"
	"fmt"
	"syscall"
	"testing"
)

// TestPackKeepsBatchesAndReadsThemBack keeps a pull's kind of batch (one
// aligned buffer, written directly where the filesystem allows) between
// batches of scattered objects (through the page cache), and reads every
// object back from a cache opened afresh.
func TestPackKeepsBatchesAndReadsThemBack(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c := &packCache{dir: dir}
	want := map[Hash][]byte{}
	object := func(i int) Object {
		b := bytes.Repeat([]byte(fmt.Sprintf("object %d;", i)), 100+i%7)
		h := Sum(b)
		want[h] = b
		return Object{h, b}
	}
	scattered := func(from int) []Object { return []Object{object(from), object(from + 1)} }
	batch := func(from int) []Object {
		arena := alignedBuffer(1 << 20)[:0]
		var objs []Object
		for i := from; i < from+50; i++ {
			o := object(i)
			arena = append(arena, o.Packed...)
			objs = append(objs, Object{o.Hash, arena[len(arena)-len(o.Packed):]})
		}
		return objs
	}
	for _, objs := range [][]Object{scattered(0), batch(100), scattered(200), batch(300), batch(400)} {
		if err := c.keep(ctx, objs); err != nil {
			t.Fatal(err)
		}
	}
	var fs syscall.Statfs_t
	if syscall.Statfs(dir, &fs) == nil && fs.Type == 0xEF53 && (c.wd == nil || c.wOff%directAlign != 0) {
		t.Errorf("on ext4 the last batch should have gone directly, ending aligned: direct %v, at %d", c.wd != nil, c.wOff)
	}
	if err := c.close(); err != nil {
		t.Fatal(err)
	}
	again := &packCache{dir: dir}
	defer again.close()
	for h, b := range want {
		got, err := again.Get(ctx, h)
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("object %s read back as %d bytes (%v), want %d", h, len(got), err, len(b))
		}
	}
}
