package syncengine

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestImagesOverHTTPReportAndCancel runs the image operations through
// their handler and client: progress arrives, errors keep their kind, and
// a request whose client gives up stops the work on the server, leaving a
// store that a second index completes and a target file as it was.
func TestImagesOverHTTPReportAndCancel(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.raw")
	data := randomImage(t, 3000*DefaultChunkSize)
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	store := DirStore{Dir: t.TempDir()}
	im := &Images{Store: store, Codec: NewCodec(), Dirs: []string{dir}}
	srv := httptest.NewServer(im.Handler())
	t.Cleanup(srv.Close)
	client := ImagesClient{Base: srv.URL, Client: srv.Client()}

	t.Run("a refusal keeps its kind", func(t *testing.T) {
		_, err := client.Index(context.Background(), "/etc/passwd")
		if !errors.Is(err, ErrOutsideImages) || !strings.Contains(err.Error(), "--images") {
			t.Fatalf("index of /etc/passwd: %v; want ErrOutsideImages naming --images", err)
		}
		_, err = client.Checkout(context.Background(), Sum([]byte("no such image")), filepath.Join(dir, "x.raw"))
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("checkout of a root the store lacks: %v; want ErrNotFound", err)
		}
	})

	// Cancelled once the server says it stores: the index stops there.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var storing atomic.Int64
	c := client
	c.Progress = func(step string, done, total int64) {
		if step == "store" {
			storing.Store(done)
			cancel()
		}
	}
	if _, err := c.Index(ctx, img); !errors.Is(err, context.Canceled) {
		t.Fatalf("an index cancelled mid-way: %v, want context.Canceled", err)
	}
	if storing.Load() == 0 {
		t.Fatal("the server reported no store progress before the index ended")
	}
	// The server's work ends too: the file is free again soon.
	deadline := time.Now().Add(10 * time.Second)
	for {
		release, err := im.claim(img)
		if err == nil {
			release()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after the client gave up the server still works on %s", img)
		}
		time.Sleep(10 * time.Millisecond)
	}
	root := mustManifest(t, img).Root()
	if have, _ := store.Has(context.Background(), []Hash{root}); have[0] {
		t.Fatal("a cancelled index stored the image's tree: the store names chunks it may lack")
	}
	var steps []string
	c.Progress = func(step string, done, total int64) {
		if len(steps) == 0 || steps[len(steps)-1] != step {
			steps = append(steps, step)
		}
	}
	res, err := c.Index(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	if res.Root != root || res.Stats.Sent == 0 || res.Stats.Sent >= 3000 {
		t.Errorf("the index after a cancelled one: root %s (want %s), stored %d of 3000 chunks; want the rest only", res.Root, root, res.Stats.Sent)
	}
	if strings.Join(steps, ",") != "read,store" {
		t.Errorf("the index reported the steps %v, want read then store", steps)
	}

	// A checkout cancelled mid-way leaves the old file and nothing beside it.
	old := filepath.Join(dir, "old.raw")
	if err := os.WriteFile(old, []byte("the old image"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	c.Progress = func(step string, done, total int64) {
		if step == "write" && done > 0 {
			cancel()
		}
	}
	if _, err := c.Checkout(ctx, root, old); !errors.Is(err, context.Canceled) {
		t.Fatalf("a checkout cancelled mid-way: %v, want context.Canceled", err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		release, err := im.claim(old)
		if err == nil {
			release()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after the client gave up the server still writes %s", old)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if b, err := os.ReadFile(old); err != nil || string(b) != "the old image" {
		t.Errorf("a cancelled checkout changed the old file (%v)", err)
	}
	for _, e := range entries(t, dir) {
		if e != "disk.raw" && e != "old.raw" {
			t.Errorf("a cancelled checkout left %s beside its target", e)
		}
	}
}

func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}
