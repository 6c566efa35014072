package syncengine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// maxObject bounds one uploaded object: a packed chunk or a manifest.
const maxObject = 64 << 20

// Handler serves a store over HTTP, to be mounted under a prefix (the
// home server uses /v1/chunks/ behind its token check):
//
//	POST /has            JSON list of hashes -> JSON list of booleans
//	GET  /objects/HASH   the packed object
//	PUT  /objects/HASH   store a packed object; refused unless it verifies
func Handler(s Store, codec *Codec) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /has", func(w http.ResponseWriter, r *http.Request) {
		var hashes []Hash
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&hashes); err != nil {
			http.Error(w, "malformed hash list: "+err.Error(), http.StatusBadRequest)
			return
		}
		have, err := s.Has(r.Context(), hashes)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		json.NewEncoder(w).Encode(have)
	})
	mux.HandleFunc("GET /objects/{hash}", func(w http.ResponseWriter, r *http.Request) {
		h, err := ParseHash(r.PathValue("hash"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		b, err := s.Get(r.Context(), h)
		if errors.Is(err, ErrNotFound) {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(b)
	})
	mux.HandleFunc("PUT /objects/{hash}", func(w http.ResponseWriter, r *http.Request) {
		h, err := ParseHash(r.PathValue("hash"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxObject))
		if err != nil {
			http.Error(w, "read object: "+err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		// Never store what does not match its name.
		if _, err := codec.Decode(h, b); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := s.Put(r.Context(), h, b); err != nil {
			http.Error(w, err.Error(), http.StatusInsufficientStorage)
			return
		}
	})
	return mux
}

// HTTPStore is a remote store reached through Handler.
type HTTPStore struct {
	Base   string // e.g. https://server:7443/v1/chunks
	Token  string
	Client *http.Client
}

func (s HTTPStore) do(ctx context.Context, method, path string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(s.Base, "/")+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if s.Token != "" {
		req.Header.Set("Authorization", "Bearer "+s.Token)
	}
	c := s.Client
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reach the chunk store %s: %w", s.Base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxObject+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: connection cut: %w", method, path, err)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, fmt.Errorf("%s: %w", path, ErrNotFound)
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

func (s HTTPStore) Has(ctx context.Context, hashes []Hash) ([]bool, error) {
	body, _ := json.Marshal(hashes)
	b, err := s.do(ctx, http.MethodPost, "/has", body)
	if err != nil {
		return nil, err
	}
	var have []bool
	if err := json.Unmarshal(b, &have); err != nil || len(have) != len(hashes) {
		return nil, fmt.Errorf("has: the store answered %d for %d hashes (%v)", len(have), len(hashes), err)
	}
	return have, nil
}

func (s HTTPStore) Get(ctx context.Context, h Hash) ([]byte, error) {
	return s.do(ctx, http.MethodGet, "/objects/"+h.String(), nil)
}

func (s HTTPStore) Put(ctx context.Context, h Hash, packed []byte) error {
	_, err := s.do(ctx, http.MethodPut, "/objects/"+h.String(), packed)
	return err
}
