package leasectl

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// ServeConfig configures the home server's daemon.
type ServeConfig struct {
	Data     string // state directory: store, tokens, TLS key
	Listen   string // host:port
	Store    string // "" for bbolt under Data, or etcd://host:2379,...
	Progress io.Writer
	// Ready, if set, receives the listening address once the server
	// accepts connections.
	Ready func(addr string)
	// Mounts are more APIs served on the same listener behind the same
	// tokens, by path prefix (the chunk store: "/v1/chunks/").
	Mounts map[string]http.Handler
}

// Serve runs the lease API over TLS with token auth until ctx ends.
func Serve(ctx context.Context, cfg ServeConfig) error {
	say := func(format string, a ...any) {
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, format+"\n", a...)
		}
	}
	if err := os.MkdirAll(cfg.Data, 0o700); err != nil {
		return fmt.Errorf("make server directory %s: %w", cfg.Data, err)
	}
	store, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer store.Close()
	cert, fp, _, err := ServerCert(cfg.Data)
	if err != nil {
		return err
	}
	tokens, err := LoadTokens(cfg.Data)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	defer ln.Close()
	if len(tokens) == 0 {
		token, err := AddToken(cfg.Data, "first-device")
		if err != nil {
			return err
		}
		host, _ := os.Hostname()
		url := fmt.Sprintf("https://%s:%d", host, ln.Addr().(*net.TCPAddr).Port)
		say("first start: a token for your first device (shown only now):\n  %s", token)
		say("on that device run (with this server's name or address for %s):\n  handoff lease login --server %s --token %s --fingerprint %s", host, url, token, fp)
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/images/", Handler(&Service{Store: store}))
	for prefix, h := range cfg.Mounts {
		if !strings.HasPrefix(prefix, "/v1/") || !strings.HasSuffix(prefix, "/") || strings.HasPrefix(prefix, "/v1/images/") {
			return fmt.Errorf("mount %q: an API mounts under its own /v1/NAME/ prefix, not /v1/images/", prefix)
		}
		mux.Handle(prefix, h)
	}
	srv := &http.Server{
		Handler:           RequireToken(TokenFile(cfg.Data), mux),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13},
		ReadHeaderTimeout: 10 * time.Second,
	}
	say("handoff serve: https://%s, certificate fingerprint %s", ln.Addr(), fp)
	if cfg.Ready != nil {
		cfg.Ready(ln.Addr().String())
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	})
	err = srv.ServeTLS(ln, "", "")
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func openStore(ctx context.Context, cfg ServeConfig) (Store, error) {
	if endpoints, ok := strings.CutPrefix(cfg.Store, "etcd://"); ok {
		return OpenEtcd(ctx, endpoints)
	}
	if cfg.Store != "" {
		return nil, fmt.Errorf("unknown store %q: leave it out for the built-in one, or give etcd://host:2379,...", cfg.Store)
	}
	return OpenBolt(filepath.Join(cfg.Data, "leases.db"))
}

// TokenFile checks tokens against the file in a server directory, read
// anew each time, so a device added while the server runs is let in.
type TokenFile string

func (dir TokenFile) Device(token string) (string, bool) {
	t, err := LoadTokens(string(dir))
	if err != nil {
		return "", false
	}
	return t.Device(token)
}

func tokensPath(dir string) string { return filepath.Join(dir, "tokens.json") }

// LoadTokens reads the devices' token hashes from dir.
func LoadTokens(dir string) (Tokens, error) {
	b, err := os.ReadFile(tokensPath(dir))
	if errors.Is(err, os.ErrNotExist) {
		return Tokens{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read tokens: %w", err)
	}
	t := Tokens{}
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("tokens file %s is damaged: %w", tokensPath(dir), err)
	}
	return t, nil
}

// AddToken makes a token for a device and stores only its hash.
func AddToken(dir, device string) (string, error) {
	if device == "" {
		return "", fmt.Errorf("%w: name the device", ErrBadInput)
	}
	t, err := LoadTokens(dir)
	if err != nil {
		return "", err
	}
	var b [24]byte
	rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	t[HashToken(token)] = device
	raw, _ := json.MarshalIndent(t, "", "  ")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	tmp := tokensPath(dir) + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return "", err
	}
	return token, os.Rename(tmp, tokensPath(dir))
}
