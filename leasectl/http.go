package leasectl

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// maxBody bounds every request: a manifest is a root hash and a little
// metadata.
const maxBody = 64 << 10

// TokenChecker says which device a bearer token belongs to.
type TokenChecker interface {
	Device(token string) (string, bool)
}

// Tokens maps the SHA-256 of each device's token to the device's name:
// the server never keeps a token itself.
type Tokens map[string]string

func HashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

func (t Tokens) Device(token string) (string, bool) {
	want := HashToken(token)
	for hash, name := range t {
		if subtle.ConstantTimeCompare([]byte(hash), []byte(want)) == 1 {
			return name, true
		}
	}
	return "", false
}

// RequireToken lets through only requests with a known device's bearer
// token; every API the server offers (leases, chunks) mounts behind it.
func RequireToken(tokens TokenChecker, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || token == "" {
			writeError(w, http.StatusUnauthorized, "missing bearer token: log in with handoff lease login --token TOKEN")
			return
		}
		if _, known := tokens.Device(token); !known {
			writeError(w, http.StatusUnauthorized, "unknown token: add this device on the server with handoff serve token add NAME")
			return
		}
		next.ServeHTTP(w, r)
	})
}

type apiError struct {
	Error   string    `json:"error"`
	Code    string    `json:"code,omitempty"`
	Holder  string    `json:"holder,omitempty"`
	Expires time.Time `json:"expires,omitzero"`
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, apiError{Error: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// errorCodes name the state machine's refusals on the wire.
var errorCodes = []struct {
	err    error
	code   string
	status int
}{
	{ErrBadInput, "bad_input", http.StatusBadRequest},
	{ErrNoImage, "no_image", http.StatusNotFound},
	{ErrExists, "exists", http.StatusConflict},
	{ErrHeld, "held", http.StatusConflict},
	{ErrExpired, "expired", http.StatusGone},
	{ErrOrphaned, "orphaned", http.StatusGone},
	{ErrNotHead, "not_head", http.StatusPreconditionFailed},
	{ErrRefused, "refused", http.StatusConflict},
}

func writeErr(w http.ResponseWriter, err error) {
	for _, e := range errorCodes {
		if errors.Is(err, e.err) {
			body := apiError{Error: err.Error(), Code: e.code}
			var held *HeldError
			if errors.As(err, &held) {
				body.Holder, body.Expires = held.Holder, held.Expires
			}
			writeJSON(w, e.status, body)
			return
		}
	}
	writeJSON(w, http.StatusInternalServerError, apiError{Error: err.Error()})
}

// request is every body the API takes; each call uses its part.
type request struct {
	Holder     string   `json:"holder"`
	TTLSeconds float64  `json:"ttl_seconds"`
	LeaseID    string   `json:"lease_id"`
	Reason     string   `json:"reason"`
	Parent     string   `json:"parent"`
	Manifest   Manifest `json:"manifest"`
	NewImage   string   `json:"new_image"`
}

func (q request) ttl() time.Duration { return time.Duration(q.TTLSeconds * float64(time.Second)) }

func (q request) commit() CommitRequest {
	return CommitRequest{Parent: q.Parent, LeaseID: q.LeaseID, Holder: q.Holder, Manifest: q.Manifest}
}

// Handler serves the lease API under /v1/images/.
func Handler(sv *Service) http.Handler {
	mux := http.NewServeMux()
	op := func(fn func(r *http.Request, q request) (any, error)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			var q request
			if r.Method == http.MethodPost {
				r.Body = http.MaxBytesReader(w, r.Body, maxBody)
				dec := json.NewDecoder(r.Body)
				dec.DisallowUnknownFields()
				if err := dec.Decode(&q); err != nil {
					var tooBig *http.MaxBytesError
					if errors.As(err, &tooBig) {
						writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body over %d bytes", maxBody))
						return
					}
					writeErr(w, fmt.Errorf("%w: malformed JSON: %v", ErrBadInput, err))
					return
				}
			}
			v, err := fn(r, q)
			if err != nil {
				writeErr(w, err)
				return
			}
			writeJSON(w, http.StatusOK, v)
		}
	}
	img := func(r *http.Request) string { return r.PathValue("image") }
	mux.HandleFunc("POST /v1/images/{image}", op(func(r *http.Request, q request) (any, error) {
		return map[string]string{"image": img(r)}, sv.Create(r.Context(), img(r))
	}))
	mux.HandleFunc("GET /v1/images/{image}", op(func(r *http.Request, q request) (any, error) {
		return sv.Status(r.Context(), img(r))
	}))
	mux.HandleFunc("POST /v1/images/{image}/acquire", op(func(r *http.Request, q request) (any, error) {
		return sv.Acquire(r.Context(), img(r), q.Holder, q.ttl())
	}))
	mux.HandleFunc("POST /v1/images/{image}/renew", op(func(r *http.Request, q request) (any, error) {
		return sv.Renew(r.Context(), img(r), q.LeaseID, q.ttl())
	}))
	mux.HandleFunc("POST /v1/images/{image}/release", op(func(r *http.Request, q request) (any, error) {
		return map[string]string{}, sv.Release(r.Context(), img(r), q.LeaseID)
	}))
	mux.HandleFunc("POST /v1/images/{image}/steal", op(func(r *http.Request, q request) (any, error) {
		return sv.Steal(r.Context(), img(r), q.Holder, q.Reason, q.ttl())
	}))
	mux.HandleFunc("POST /v1/images/{image}/checkout", op(func(r *http.Request, q request) (any, error) {
		return sv.Checkout(r.Context(), img(r))
	}))
	mux.HandleFunc("POST /v1/images/{image}/commits", op(func(r *http.Request, q request) (any, error) {
		return sv.Commit(r.Context(), img(r), q.commit())
	}))
	mux.HandleFunc("POST /v1/images/{image}/branch", op(func(r *http.Request, q request) (any, error) {
		return sv.Branch(r.Context(), img(r), q.NewImage, q.commit())
	}))
	return mux
}
