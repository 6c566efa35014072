package leasectl

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"

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

func (e *EtcdStore) Create(ctx context.Context, image string) error {
	raw, _ := json.Marshal(&State{Image: image})
	resp, err := e.c.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(e.key(image)), "=", 0)).
		Then(clientv3.OpPut(e.key(image), string(raw))).Commit()
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
		raw, err := json.Marshal(s)
		if err != nil {
			return err
		}
		ops, granted, err := e.leaseOps(ctx, image, before, s.Lease)
		if err != nil {
			return err
		}
		resp, err := e.c.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(e.key(image)), "=", rev)).
			Then(append(ops, clientv3.OpPut(e.key(image), string(raw)))...).Commit()
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
	s, _, err := e.get(ctx, image)
	return s, err
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
