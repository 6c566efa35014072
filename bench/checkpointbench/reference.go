package checkpointbench

import (
	"context"
	"fmt"
	"io"
	"sort"

	"github.com/handoff-dev/handoff/bench/diskbench"
	"github.com/handoff-dev/handoff/checkout"
	"github.com/handoff-dev/handoff/syncengine"
)

// Reference is the yardstick for a checkpoint's bytes: what the guest
// changed since the checkpoint before, its memory pages and its disk's
// blocks of 4 KiB that differ, laid end to end and compressed by zstd -3.
// Pages are compared as the memory's page image holds them (each page at
// its guest address), disks as their files.
type Reference struct {
	Pages, Blocks int64
	Zstd          int64
}

// References reads each checkpoint's memory and disks from the lab
// server's chunk store and figures each one's Reference against the one
// before; the first has none (-1), nor has one whose memory went whole
// (QEMU's stream, its pages not lined up, cannot be compared page by page).
func References(ctx context.Context, store syncengine.DirStore, cps []Checkpoint) error {
	codec := syncengine.NewCodec()
	for i := range cps {
		cps[i].Reference = Reference{Zstd: -1}
		if i == 0 {
			continue
		}
		prev, cur := cps[i-1].Saved, cps[i].Saved
		if prev == nil || cur == nil || prev.MemoryRecipe.IsZero() || cur.MemoryRecipe.IsZero() {
			continue
		}
		pairs := [][2]syncengine.Hash{{prev.Memory, cur.Memory}}
		var targets []string
		for target := range cur.Disks {
			targets = append(targets, target)
		}
		sort.Strings(targets)
		for _, target := range targets {
			before, ok := prev.Disks[target]
			if !ok {
				return fmt.Errorf("checkpoint %d has disk %s, the one before it has not", i+1, target)
			}
			a, err := topFile(ctx, store, codec, before.Root)
			if err != nil {
				return err
			}
			b, err := topFile(ctx, store, codec, cur.Disks[target].Root)
			if err != nil {
				return err
			}
			pairs = append(pairs, [2]syncengine.Hash{a, b})
		}
		var ref Reference
		var err error
		ref.Zstd, err = diskbench.ZstdSize(ctx, func(w io.Writer) error {
			for k, p := range pairs {
				n, err := changed(ctx, store, codec, p[0], p[1], w)
				if err != nil {
					return err
				}
				if k == 0 {
					ref.Pages += n
				} else {
					ref.Blocks += n
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("the reference of checkpoint %d: %w", i+1, err)
		}
		cps[i].Reference = ref
	}
	return nil
}

// topFile is the file a chain's root names last (the disk as the guest
// wrote it), or root itself when it names a plain file.
func topFile(ctx context.Context, store syncengine.DirStore, codec *syncengine.Codec, root syncengine.Hash) (syncengine.Hash, error) {
	members, err := syncengine.StoredChain(ctx, store, codec, root)
	if err != nil {
		return syncengine.Hash{}, err
	}
	if len(members) == 0 {
		return root, nil
	}
	return members[len(members)-1].Root, nil
}

// changed writes to w the blocks of the stored file after that differ
// from before's, and counts them.
func changed(ctx context.Context, store syncengine.DirStore, codec *syncengine.Codec, before, after syncengine.Hash, w io.Writer) (int64, error) {
	a, err := syncengine.OpenStored(ctx, store, codec, before)
	if err != nil {
		return 0, err
	}
	b, err := syncengine.OpenStored(ctx, store, codec, after)
	if err != nil {
		return 0, err
	}
	return diskbench.WriteChanged(w, io.NewSectionReader(a, 0, a.Size()), io.NewSectionReader(b, 0, b.Size()), diskbench.BlockSize)
}

// savedOf is the checkpoint a commit's manifest names.
func savedOf(meta map[string]string) (*checkout.Saved, error) {
	s, err := checkout.SavedFromMeta(meta)
	if err != nil {
		return nil, err
	}
	return &s, nil
}
