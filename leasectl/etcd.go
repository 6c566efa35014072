package leasectl

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// EtcdStore keeps states in etcd, for users with several home servers:
// each change is a transaction that compares the key's revision with the
// one read, so two servers never both win a change to the same image.
type EtcdStore struct {
	c      *clientv3.Client
	prefix string
}

// OpenEtcd connects to etcd at endpoints ("host:2379,host2:2379").
func OpenEtcd(ctx context.Context, endpoints string) (*EtcdStore, error) {
	c, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(endpoints, ","), DialTimeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("connect etcd %s: %w", endpoints, err)
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := c.Status(sctx, c.Endpoints()[0]); err != nil {
		c.Close()
		return nil, fmt.Errorf("connect etcd %s: %w (is it running?)", endpoints, err)
	}
	return &EtcdStore{c: c, prefix: "/handoff/images/"}, nil
}

func (e *EtcdStore) key(image string) string { return e.prefix + image }

// stateOps writes what a change appended to the history, each record
// under its own key, and the head record.
func (e *EtcdStore) stateOps(s *State) ([]clientv3.Op, error) {
	head, commits, events := s.split()
	var ops []clientv3.Op
	put := func(key string, v any) error {
		raw, err := json.Marshal(v)
		ops = append(ops, clientv3.OpPut(key, string(raw)))
		return err
	}
	for i, c := range commits {
		if err := put(e.historyKey(s.Image, 'c', s.NCommits+i), c); err != nil {
			return nil, err
		}
	}
	for i, ev := range events {
		if err := put(e.historyKey(s.Image, 'e', s.NEvents+i), ev); err != nil {
			return nil, err
		}
	}
	return ops, put(e.key(s.Image), head)
}

func (e *EtcdStore) historyKey(image string, kind byte, seq int) string {
	return fmt.Sprintf("%s/%c/%016x", e.key(image), kind, seq)
}

func (e *EtcdStore) Create(ctx context.Context, s *State) error {
	image := s.Image
	ops, err := e.stateOps(s)
	if err != nil {
		return err
	}
	resp, err := e.c.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(e.key(image)), "=", 0)).
		Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("create %s in etcd: %w", image, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w: %s", ErrExists, image)
	}
	return nil
}

func (e *EtcdStore) Update(ctx context.Context, image string, fn func(*State) error) error {
	for {
		s, rev, err := e.get(ctx, image)
		if err != nil {
			return err
		}
		before := s.Lease
		if before != nil {
			copied := *before
			before = &copied
		}
		if err := fn(s); err != nil {
			return err
		}
		writes, err := e.stateOps(s)
		if err != nil {
			return err
		}
		ops, granted, err := e.leaseOps(ctx, image, before, s.Lease)
		if err != nil {
			return err
		}
		resp, err := e.c.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(e.key(image)), "=", rev)).
			Then(append(ops, writes...)...).Commit()
		if err != nil || !resp.Succeeded {
			if granted != clientv3.NoLease {
				e.c.Revoke(context.WithoutCancel(ctx), granted)
			}
		}
		if err != nil {
			return fmt.Errorf("update %s in etcd: %w", image, err)
		}
		if resp.Succeeded {
			return nil
		}
		// Another server changed the image between our read and write:
		// decide again on what it wrote.
	}
}

func (e *EtcdStore) leaseKey(image string) string { return e.prefix + image + "/lease" }

// leaseOps mirrors the image's lease onto an etcd lease with the same time
// to live, so that in etcd the holder's key vanishes on its own when the
// lease runs out, for every server and watcher to see. A renewal is a
// keep-alive of that etcd lease; a new grant gets a new one. Fencing does
// not rely on it: the revision compare in Update does that.
func (e *EtcdStore) leaseOps(ctx context.Context, image string, before, after *Lease) ([]clientv3.Op, clientv3.LeaseID, error) {
	switch {
	case after == nil && before == nil:
		return nil, clientv3.NoLease, nil
	case after == nil:
		return []clientv3.Op{clientv3.OpDelete(e.leaseKey(image))}, clientv3.NoLease, nil
	case before != nil && *before == *after:
		return nil, clientv3.NoLease, nil
	}
	ttl := int64(math.Ceil(time.Until(after.Expires).Seconds()))
	ttl = max(1, min(ttl, int64((24*time.Hour).Seconds())))
	if before != nil && before.ID == after.ID {
		if id, granted, ok := e.etcdLease(ctx, image); ok && granted == ttl {
			if _, err := e.c.KeepAliveOnce(ctx, id); err == nil {
				return nil, clientv3.NoLease, nil
			}
		}
	}
	g, err := e.c.Grant(ctx, ttl)
	if err != nil {
		return nil, clientv3.NoLease, fmt.Errorf("grant an etcd lease for %s: %w", image, err)
	}
	raw, _ := json.Marshal(after)
	return []clientv3.Op{clientv3.OpPut(e.leaseKey(image), string(raw), clientv3.WithLease(g.ID))}, g.ID, nil
}

// etcdLease finds the etcd lease behind an image's lease key and the TTL
// it was granted with.
func (e *EtcdStore) etcdLease(ctx context.Context, image string) (clientv3.LeaseID, int64, bool) {
	resp, err := e.c.Get(ctx, e.leaseKey(image))
	if err != nil || len(resp.Kvs) == 0 || resp.Kvs[0].Lease == 0 {
		return clientv3.NoLease, 0, false
	}
	id := clientv3.LeaseID(resp.Kvs[0].Lease)
	ttl, err := e.c.TimeToLive(ctx, id)
	if err != nil || ttl.TTL <= 0 {
		return clientv3.NoLease, 0, false
	}
	return id, ttl.GrantedTTL, true
}

func (e *EtcdStore) View(ctx context.Context, image string) (*State, error) {
	// One transaction reads the head record and its history as of the
	// same revision.
	sorted := clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)
	resp, err := e.c.Txn(ctx).Then(
		clientv3.OpGet(e.key(image)),
		clientv3.OpGet(e.historyKey(image, 'c', 0), clientv3.WithRange(e.historyKey(image, 'c', math.MaxInt64)), sorted),
		clientv3.OpGet(e.historyKey(image, 'e', 0), clientv3.WithRange(e.historyKey(image, 'e', math.MaxInt64)), sorted),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("read %s from etcd: %w", image, err)
	}
	head := resp.Responses[0].GetResponseRange().Kvs
	if len(head) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrNoImage, image)
	}
	var s State
	if err := json.Unmarshal(head[0].Value, &s); err != nil {
		return nil, fmt.Errorf("image %s is stored damaged in etcd: %w", image, err)
	}
	if s.Commits, err = decodeRecords[Commit](image, resp.Responses[1].GetResponseRange().Kvs, s.NCommits); err != nil {
		return nil, err
	}
	if s.Log, err = decodeRecords[Event](image, resp.Responses[2].GetResponseRange().Kvs, s.NEvents); err != nil {
		return nil, err
	}
	return &s, nil
}

func decodeRecords[T any](image string, kvs []*mvccpb.KeyValue, n int) ([]T, error) {
	if len(kvs) != n {
		return nil, fmt.Errorf("image %s: etcd holds %d history records where the head counts %d", image, len(kvs), n)
	}
	out := make([]T, n)
	for i, kv := range kvs {
		if err := json.Unmarshal(kv.Value, &out[i]); err != nil {
			return nil, fmt.Errorf("image %s: history record %s is damaged: %w", image, kv.Key, err)
		}
	}
	return out, nil
}

func (e *EtcdStore) get(ctx context.Context, image string) (*State, int64, error) {
	resp, err := e.c.Get(ctx, e.key(image))
	if err != nil {
		return nil, 0, fmt.Errorf("read %s from etcd: %w", image, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, fmt.Errorf("%w: %s", ErrNoImage, image)
	}
	var s State
	if err := json.Unmarshal(resp.Kvs[0].Value, &s); err != nil {
		return nil, 0, fmt.Errorf("image %s is stored damaged in etcd: %w", image, err)
	}
	return &s, resp.Kvs[0].ModRevision, nil
}

func (e *EtcdStore) Close() error { return e.c.Close() }
