package syncbench

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/handoff-dev/handoff/leasectl"
	"github.com/handoff-dev/handoff/syncengine"
)

// This file is the bench's only contact with the sync engine.

// rootHash names an image version in the store.
type rootHash = syncengine.Hash

// chunkServer is the home server's chunk store over HTTPS on 127.0.0.1,
// set up as 'handoff serve' does: TLS 1.3 with a self-signed certificate
// the client pins, the store under /v1/chunks/, a bearer token per request.
type chunkServer struct {
	Addr   string
	client *tls.Config
	token  string
	srv    *http.Server
	served chan struct{}
}

func startChunkServer(ctx context.Context, storeDir, certDir string) (*chunkServer, error) {
	cert, fp, _, err := leasectl.ServerCert(certDir)
	if err != nil {
		return nil, fmt.Errorf("start the chunk server: %w", err)
	}
	var b [24]byte
	rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	chunks := http.StripPrefix("/v1/chunks", syncengine.Handler(syncengine.DirStore{Dir: storeDir}, syncengine.NewCodec()))
	mux := http.NewServeMux()
	mux.Handle("/v1/chunks/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte("Bearer "+token)) != 1 {
			http.Error(w, "unknown device token", http.StatusUnauthorized)
			return
		}
		chunks.ServeHTTP(w, r)
	}))
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("start the chunk server: %w", err)
	}
	s := &chunkServer{
		Addr:   ln.Addr().String(),
		client: leasectl.PinnedTLS(fp),
		token:  token,
		srv: &http.Server{
			Handler:           mux,
			TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13},
			ReadHeaderTimeout: 10 * time.Second,
		},
		served: make(chan struct{}),
	}
	go func() {
		defer close(s.served)
		s.srv.ServeTLS(ln, "", "")
	}()
	return s, nil
}

// close stops the server, cutting its connections, and waits for it.
func (s *chunkServer) close() {
	s.srv.Close()
	<-s.served
}

// remote is the workstation's view of the server's store, reached at addr
// (the counting proxy), with its own connections.
func (s *chunkServer) remote(addr string) (syncengine.HTTPStore, *http.Transport) {
	tr := &http.Transport{TLSClientConfig: s.client.Clone()}
	return syncengine.HTTPStore{Base: "https://" + addr + "/v1/chunks", Token: s.token, Client: &http.Client{Transport: tr}}, tr
}

// engineStats is what the engine says it moved.
type engineStats struct {
	Chunks    int
	Sent      int   // chunks fetched
	Patched   int   // of those, fetched as their changes only
	FromCache int   // chunks taken from the local cache
	WireBytes int64 // request and answer bytes the engine counted, both ways
}

// pushLocal stores an image in the server's own store, as the server does
// when a VM's disk changed there: no network. cacheDir is the server-side
// client's cache, which remembers the last version pushed from image.
func pushLocal(ctx context.Context, image, storeDir, cacheDir string) (rootHash, error) {
	c := &syncengine.Client{Remote: syncengine.DirStore{Dir: storeDir}, Cache: syncengine.DirStore{Dir: cacheDir}, Codec: syncengine.NewCodec()}
	root, _, err := c.Push(ctx, image)
	if err != nil {
		return root, fmt.Errorf("push %s into the server's store: %w", image, err)
	}
	return root, nil
}

// pullRemote pulls root to image on the workstation through addr (the
// counting proxy), with cacheDir as the workstation's chunk cache. The
// CPU time is the whole process's: the workstation's client, but also the
// server's handlers and the proxy, which run in this process too.
func pullRemote(ctx context.Context, s *chunkServer, addr string, root syncengine.Hash, cacheDir, image string) (engineStats, time.Duration, error) {
	remote, tr := s.remote(addr)
	defer tr.CloseIdleConnections()
	cpu0 := selfCPU()
	ws := &syncengine.Client{Remote: remote, Cache: syncengine.DirStore{Dir: cacheDir}, Codec: syncengine.NewCodec()}
	st, err := ws.Pull(ctx, root, image)
	cpu := selfCPU() - cpu0
	if err != nil {
		return engineStats{}, 0, fmt.Errorf("pull %s: %w", root, err)
	}
	return engineStats{Chunks: st.Chunks, Sent: st.Sent, Patched: st.Patched, FromCache: st.FromCache, WireBytes: st.WireBytes}, cpu, nil
}

// indexRuns is how many times index reads the image: the best of a few
// runs is the engine's speed, not another process's moment on the CPU.
const indexRuns = 3

// index hashes an image without storing anything and returns the fastest
// run's time and CPU time.
func index(ctx context.Context, image string) (best, bestCPU time.Duration, err error) {
	for range indexRuns {
		cpu0, start := selfCPU(), time.Now()
		if _, err := syncengine.Index(ctx, image, 0); err != nil {
			return 0, 0, fmt.Errorf("index %s: %w", image, err)
		}
		if elapsed := time.Since(start); best == 0 || elapsed < best {
			best, bestCPU = elapsed, selfCPU()-cpu0
		}
	}
	return best, bestCPU, nil
}
