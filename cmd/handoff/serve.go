package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"

	"github.com/handoff-dev/handoff/leasectl"
	"github.com/handoff-dev/handoff/relay"
	"github.com/handoff-dev/handoff/syncengine"
)

func defaultServeDir() string {
	if dir, err := os.UserConfigDir(); err == nil {
		return filepath.Join(dir, "handoff", "server")
	}
	return "handoff-server"
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "token" {
		return runServeToken(args[1:], stdout, stderr)
	}
	fs := newFlagSet("serve", "[--data DIR] [--listen ADDR] [--store etcd://HOST:2379,...] [--images DIR]...", `
Run the home server's daemon: leases, commits and the chunk store of VM
images over HTTPS, one bearer token per device. On first start it makes a
self-signed certificate and a token for your first device, and prints how to
log in with them. 'handoff serve token add NAME' adds a device. Stop it with
Ctrl-C; every acknowledged change is on disk.

A device that moves a VM carries its memory stream through the server's
relay (/v1/relay/, compressed with zstd): the server's QEMU talks to it on
127.0.0.1, and the device opens every connection, so it may sit behind NAT.

A device may ask the server to index an image on the server's own disk into
its store ('handoff sync index PATH'), or to write an image from its store to
its disk ('handoff sync checkout ROOT PATH'): only inside the --images folders.`, stdout, stderr)
	data := fs.String("data", defaultServeDir(), "state directory (store, tokens, TLS key)")
	listen := fs.String("listen", ":7443", "address to listen on")
	store := fs.String("store", "", "etcd://host:2379,... to keep state in etcd (several servers); default: a bbolt file in --data")
	var images []string
	fs.Func("images", "a folder of VM images devices may index and check out (repeat for more; default "+syncengine.DefaultImageDir+")", func(dir string) error {
		abs, err := filepath.Abs(dir)
		images = append(images, abs)
		return err
	})
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if len(images) == 0 {
		images = []string{syncengine.DefaultImageDir}
	}
	chunkStore, codec := syncengine.DirStore{Dir: filepath.Join(*data, "chunks")}, syncengine.NewCodec()
	disks := &syncengine.Images{Store: chunkStore, Codec: codec, Dirs: images}
	return leasectl.Serve(ctx, leasectl.ServeConfig{Data: *data, Listen: *listen, Store: *store, Progress: stdout,
		Mounts: map[string]http.Handler{
			"/v1/chunks/": http.StripPrefix("/v1/chunks", syncengine.Handler(chunkStore, codec)),
			"/v1/disks/":  http.StripPrefix("/v1/disks", disks.Handler()),
			"/v1/relay/":  http.StripPrefix("/v1/relay", relay.Handler(ctx, relay.Loopback())),
		}})
}

func runServeToken(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("serve token add", "NAME [--data DIR]", "Make a token for another device; it is shown only once.", stdout, stderr)
	data := fs.String("data", defaultServeDir(), "the server's state directory")
	if len(args) == 0 || args[0] != "add" {
		return fmt.Errorf("%w: usage: handoff serve token add NAME", errUsage)
	}
	if err := parseFlags(fs, args[1:], stdout); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: name the device: handoff serve token add NAME", errUsage)
	}
	token, err := leasectl.AddToken(*data, fs.Arg(0))
	if err != nil {
		return err
	}
	_, fp, _, err := leasectl.ServerCert(*data)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "token for %s (shown only now): %s\non that device run:\n  handoff lease login --server https://HOST:PORT --token %s --fingerprint %s\n", fs.Arg(0), token, token, fp)
	return nil
}
