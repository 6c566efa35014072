package syncbench

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/handoff-dev/handoff/leasectl"
	"github.com/handoff-dev/handoff/syncengine"
)

// This file is the bench's only contact with the sync engine.

// rootHash names an image version in the store.
type rootHash = syncengine.Hash

// chunkServer is the home server's chunk store over HTTPS on 127.0.0.1 as
// 'handoff serve' runs it: TLS 1.3 with a self-signed certificate the
// client pins, the store under /v1/chunks/ behind the device tokens file.
// It runs in this process (startChunkServer) or is a real 'handoff serve'
// of its own (startServeProcess), whose CPU time can then be told apart
// from the workstation's.
type chunkServer struct {
	Addr        string
	client      *tls.Config
	token       string
	fingerprint string // the certificate's, for 'handoff lease login'
	// bin is the handoff binary running as the server; the workstation's
	// pulls then run as 'BIN sync pull' processes too, as a user's would.
	bin  string
	stop func()
	// cpu is the server's CPU time so far; nil when the server runs in
	// this process and its CPU time is counted with the workstation's.
	cpu func() (time.Duration, error)
}

// serverIdentity makes the server directory's certificate and a token for
// the bench's workstation, as 'handoff serve' and 'serve token add' do.
func serverIdentity(dataDir string) (cert tls.Certificate, fingerprint, token string, err error) {
	cert, fingerprint, _, err = leasectl.ServerCert(dataDir)
	if err != nil {
		return cert, "", "", fmt.Errorf("start the chunk server: %w", err)
	}
	token, err = leasectl.AddToken(dataDir, "syncbench")
	if err != nil {
		return cert, "", "", fmt.Errorf("start the chunk server: add a device token: %w", err)
	}
	return cert, fingerprint, token, nil
}

// storeDir is where the server in dataDir keeps its chunks, as
// 'handoff serve --data' does.
func storeDir(dataDir string) string { return filepath.Join(dataDir, "chunks") }

// startChunkServer serves dataDir's store in this process.
func startChunkServer(ctx context.Context, dataDir string) (*chunkServer, error) {
	cert, fp, token, err := serverIdentity(dataDir)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/chunks/", http.StripPrefix("/v1/chunks", syncengine.Handler(syncengine.DirStore{Dir: storeDir(dataDir)}, syncengine.NewCodec())))
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("start the chunk server: %w", err)
	}
	srv := &http.Server{
		Handler:           leasectl.RequireToken(leasectl.TokenFile(dataDir), mux),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13},
		ReadHeaderTimeout: 10 * time.Second,
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.ServeTLS(ln, "", "")
	}()
	return &chunkServer{Addr: ln.Addr().String(), client: leasectl.PinnedTLS(fp), token: token, fingerprint: fp,
		stop: func() { srv.Close(); <-served }}, nil
}

// close stops the server, cutting its connections, and waits for it.
func (s *chunkServer) close() { s.stop() }

// remote is the workstation's view of the server's store, reached at addr
// (the counting proxy), with its own connections.
func (s *chunkServer) remote(addr string) (syncengine.HTTPStore, *http.Transport) {
	c := syncengine.NewHTTPClient(s.client.Clone())
	return syncengine.HTTPStore{Base: "https://" + addr + "/v1/chunks", Token: s.token, Client: c}, c.Transport.(*http.Transport)
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
func pushLocal(ctx context.Context, image, dataDir, cacheDir string) (rootHash, error) {
	c := &syncengine.Client{Remote: syncengine.DirStore{Dir: storeDir(dataDir)}, Cache: syncengine.DirStore{Dir: cacheDir}, Codec: syncengine.NewCodec()}
	root, _, err := c.Push(ctx, image)
	if err != nil {
		return root, fmt.Errorf("push %s into the server's store: %w", image, err)
	}
	return root, nil
}

// pullRemote pulls root to image on the workstation through addr (the
// counting proxy, or the server), with cacheDir as the workstation's chunk
// cache, and returns the workstation's CPU time: the client's and this
// process's (the proxy's, and the server's too when it runs in this
// process).
func pullRemote(ctx context.Context, s *chunkServer, addr string, root rootHash, cacheDir, image string) (engineStats, time.Duration, error) {
	if s.bin != "" {
		return pullProcess(ctx, s, addr, root, cacheDir, image)
	}
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

// pullProcess is pullRemote by 'BIN sync pull', logged in to addr with a
// configuration of its own beside cacheDir.
func pullProcess(ctx context.Context, s *chunkServer, addr string, root rootHash, cacheDir, image string) (engineStats, time.Duration, error) {
	env := append(os.Environ(), "XDG_CONFIG_HOME="+filepath.Join(filepath.Dir(cacheDir), "ws-config"))
	login := command(ctx, s.bin, "lease", "login", "--server", "https://"+addr, "--token", s.token, "--fingerprint", s.fingerprint)
	login.Env = env
	if err := runQuiet(login); err != nil {
		return engineStats{}, 0, err
	}
	cpu0 := selfCPU()
	pull := command(ctx, s.bin, "sync", "pull", "--cache", cacheDir, "--json", root.String(), image)
	pull.Env = env
	var out bytes.Buffer
	pull.Stdout = &out
	if err := runQuiet(pull); err != nil {
		return engineStats{}, 0, err
	}
	cpu := selfCPU() - cpu0 + cpuOf(pull)
	var st struct {
		Chunks    int   `json:"chunks"`
		Sent      int   `json:"sent"`
		Patched   int   `json:"patched"`
		FromCache int   `json:"from_cache"`
		WireBytes int64 `json:"wire_bytes"`
	}
	if err := json.Unmarshal(out.Bytes(), &st); err != nil {
		return engineStats{}, 0, fmt.Errorf("%s sync pull printed %q: %w", s.bin, out.String(), err)
	}
	return engineStats(st), cpu, nil
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
