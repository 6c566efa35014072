package syncbench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// blockSize is ext4's block and the unit ChangeBlocks overwrites.
const blockSize = 4096

// fillFraction is how much of the image the copied files take, counted in
// whole blocks; ext4's journal and inode tables take a few percent more,
// so the filesystem ends up 85-90% full, like a desktop's disk.
const fillFraction = 0.82

// defaultSources are where the image's files and the changed blocks' new
// contents come from: binaries, libraries and text, as on a desktop disk.
func defaultSources() []string {
	return []string{"/usr/bin", "/usr/lib", "/usr/share"}
}

// srcFile is a file that may go into the image.
type srcFile struct {
	path string // where it is on this machine
	rel  string // where it goes under the tree: the source root's name, then its path there
	size int64
}

// ImageInfo describes an image MakeImage made.
type ImageInfo struct {
	Size      int64 // bytes of the image file
	Files     int   // files copied into it
	FileBytes int64 // their bytes
	Used      float64
}

// MakeImage makes a raw ext4 image of size bytes at path, filled to about
// 85% with real files from this machine (/usr/bin, /usr/lib, /usr/share)
// by mkfs.ext4 -d. Progress lines go to progress.
func MakeImage(ctx context.Context, path string, size int64, progress io.Writer) error {
	_, err := makeImage(ctx, path, size, defaultSources(), progress)
	return err
}

func makeImage(ctx context.Context, path string, size int64, sources []string, progress io.Writer) (ImageInfo, error) {
	if err := needTools("mkfs.ext4", "dumpe2fs"); err != nil {
		return ImageInfo{}, err
	}
	if size < 16<<20 {
		return ImageInfo{}, fmt.Errorf("make image: %d bytes is too small for ext4 with a journal; give at least 16 MiB", size)
	}
	lists := make([][]srcFile, len(sources))
	for i, root := range sources {
		l, err := listFiles(ctx, root, filepath.Base(root))
		if err != nil {
			return ImageInfo{}, err
		}
		lists[i] = l
	}
	budget := int64(float64(size) * fillFraction)
	picked := pickFiles(lists, budget, size/16)
	if len(picked) == 0 {
		return ImageInfo{}, fmt.Errorf("make image: no readable files under %s", strings.Join(sources, ", "))
	}
	info := ImageInfo{Size: size, Files: len(picked)}
	for _, f := range picked {
		info.FileBytes += f.size
	}
	tree, err := os.MkdirTemp(filepath.Dir(path), ".tree-")
	if err != nil {
		return info, fmt.Errorf("make image: %w", err)
	}
	defer os.RemoveAll(tree)
	fmt.Fprintf(progress, "image: %d files (%s) from %s\n", len(picked), formatBytes(info.FileBytes), strings.Join(sources, ", "))
	dirs, err := populate(ctx, tree, picked)
	if err != nil {
		return info, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return info, fmt.Errorf("make image: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		return info, fmt.Errorf("make image: %w", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return info, fmt.Errorf("make image: size %s: %w", path, err)
	}
	// Enough inodes for the files, however small they are, and no more:
	// the default ratio would run out on /usr/share's small files.
	inodes := (len(picked)+dirs)*5/4 + 1024
	fmt.Fprintf(progress, "image: mkfs.ext4 -d, %s\n", formatBytes(size))
	mkfs := command(ctx, "mkfs.ext4", "-q", "-F", "-b", strconv.Itoa(blockSize), "-m", "0",
		"-N", strconv.Itoa(inodes), "-d", tree, path)
	if err := runQuiet(mkfs); err != nil {
		return info, fmt.Errorf("make image: %w", err)
	}
	// On disk now, so that the first push's syncs do not pay for mkfs.
	if err := syncFile(path); err != nil {
		return info, fmt.Errorf("make image: sync %s: %w", path, err)
	}
	if info.Used, err = usedFraction(ctx, path); err != nil {
		return info, err
	}
	fmt.Fprintf(progress, "image: %.0f%% of the filesystem used\n", 100*info.Used)
	return info, nil
}

// listFiles lists the regular files under root in lexical order.
func listFiles(ctx context.Context, root, name string) ([]srcFile, error) {
	var out []srcFile
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == root {
				return err
			}
			return nil // an unreadable corner of /usr is skipped, not fatal
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		out = append(out, srcFile{path: p, rel: filepath.Join(name, rel), size: fi.Size()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list the files under %s: %w", root, err)
	}
	return out, nil
}

// pickFiles chooses files until their sizes, in whole blocks, reach budget.
// It takes from each source in turn, so binaries and text mix, and within
// a source spreads its picks over all of it (every k-th file first), so a
// small image is not all of /usr/bin/a*. Files over maxFile are left out:
// one big library should not be most of a small image.
func pickFiles(lists [][]srcFile, budget, maxFile int64) []srcFile {
	share := budget / int64(max(1, len(lists)))
	orders := make([][]srcFile, len(lists))
	for i, l := range lists {
		var eligible []srcFile
		var bytes int64
		for _, f := range l {
			if f.size <= maxFile {
				eligible = append(eligible, f)
				bytes += blocks(f.size)
			}
		}
		stride := 1
		if share > 0 && bytes > share {
			stride = int(bytes / share)
		}
		// Every stride-th file first, then the rest, in case this source
		// must make up for a smaller one.
		for k := 0; k < stride; k++ {
			for j := k; j < len(eligible); j += stride {
				orders[i] = append(orders[i], eligible[j])
			}
		}
	}
	var out []srcFile
	var used int64
	// Each directory a file brings takes a block too: on a small image
	// of /usr's many folders they filled it past 95%.
	dirs := map[string]bool{}
	cost := func(f srcFile) (n int64, newDirs []string) {
		for d := filepath.Dir(f.rel); d != "." && d != "/" && !dirs[d]; d = filepath.Dir(d) {
			newDirs = append(newDirs, d)
		}
		return blocks(f.size) + int64(len(newDirs))*blockSize, newDirs
	}
	for next := 0; ; next++ {
		took := false
		for _, o := range orders {
			if next >= len(o) {
				continue
			}
			n, newDirs := cost(o[next])
			if used+n > budget {
				return out
			}
			out = append(out, o[next])
			used += n
			for _, d := range newDirs {
				dirs[d] = true
			}
			took = true
		}
		if !took {
			return out
		}
	}
}

// blocks is a file's size rounded up to whole blocks, as ext4 stores it.
func blocks(size int64) int64 {
	return (size + blockSize - 1) / blockSize * blockSize
}

// populate links (or, across filesystems, copies) the picked files into
// tree and returns how many directories it made. Links cost no time and no
// space; mkfs.ext4 reads the contents either way.
func populate(ctx context.Context, tree string, picked []srcFile) (int, error) {
	made := map[string]bool{}
	for _, f := range picked {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		dst := filepath.Join(tree, f.rel)
		dir := filepath.Dir(dst)
		for d := dir; d != tree && !made[d]; d = filepath.Dir(d) {
			made[d] = true
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return 0, fmt.Errorf("make image: %w", err)
		}
		if err := os.Link(f.path, dst); err == nil {
			continue
		}
		if err := copyFile(ctx, f.path, dst); err != nil {
			return 0, fmt.Errorf("make image: copy %s: %w", f.path, err)
		}
	}
	return len(made), nil
}

// copyFile copies src to a new file dst.
func copyFile(ctx context.Context, src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, ctxReader{ctx, in})
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// ctxReader stops a long copy when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// usedFraction reads how full an ext4 image is from its superblock.
func usedFraction(ctx context.Context, path string) (float64, error) {
	cmd := command(ctx, "dumpe2fs", "-h", path)
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("read the image's superblock with dumpe2fs: %w", err)
	}
	return parseUsed(string(out))
}

// parseUsed takes the used fraction from dumpe2fs -h output.
func parseUsed(out string) (float64, error) {
	var total, free float64
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			continue
		}
		switch k {
		case "Block count":
			total = n
		case "Free blocks":
			free = n
		}
	}
	if total == 0 {
		return 0, fmt.Errorf("dumpe2fs printed no block count")
	}
	return (total - free) / total, nil
}
