package syncengine

// Recipes
//
// Some files are better stored as two: a base whose content stays at fixed
// offsets from one version to the next, so that fixed chunks line up and
// only what changed is sent, and a small recipe that says how the file is
// made of the base: literal bytes, and ranges copied from the base. A
// checkpoint's memory is one (package saveimage splits QEMU's save stream
// into its pages at their guest addresses and the rest); the engine knows
// nothing of that format, only how to put such a file back together,
// which the server does where the file is needed (Images.Assemble).
//
// A recipe's bytes: the line "handoff-recipe/1\n", then operations, each a
// tag byte and its fields as varints:
//
//	'L' n, then n bytes      the next n bytes of the file, as they are
//	'C' n, d                 n bytes of the base, from the offset where the
//	                         last copy ended plus d (d may be negative)
//	'E' size                 the end; the file is size bytes long
//
// Copies of consecutive ranges cost a few bytes each, so a recipe of a
// memory image's pages is small and compresses well.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

const recipeMagic = "handoff-recipe/1\n"

// Recipe operation tags.
const (
	recipeLiteral = 'L'
	recipeCopy    = 'C'
	recipeEnd     = 'E'
)

// maxRecipeLiteral bounds one literal run in memory while assembling.
const maxRecipeLiteral = 1 << 20

// RecipeWriter writes a recipe. Literal bytes given in many calls go as
// one run; Close ends it.
type RecipeWriter struct {
	w        *bufio.Writer
	lit      []byte
	nextCopy int64 // where the last copy ended in the base
	size     int64 // the file's bytes so far
	err      error
}

// NewRecipeWriter starts a recipe on w.
func NewRecipeWriter(w io.Writer) *RecipeWriter {
	r := &RecipeWriter{w: bufio.NewWriterSize(w, 256<<10)}
	_, r.err = r.w.WriteString(recipeMagic)
	return r
}

// Literal adds p to the file as it is.
func (r *RecipeWriter) Literal(p []byte) error {
	if r.err != nil {
		return r.err
	}
	r.lit = append(r.lit, p...)
	r.size += int64(len(p))
	if len(r.lit) >= maxRecipeLiteral {
		r.flushLiteral()
	}
	return r.err
}

// Copy adds n bytes of the base, from off.
func (r *RecipeWriter) Copy(off int64, n int) error {
	if r.err != nil {
		return r.err
	}
	if off < 0 || n < 0 {
		return fmt.Errorf("recipe: a copy of %d bytes from %d of the base", n, off)
	}
	r.flushLiteral()
	var b [1 + 2*binary.MaxVarintLen64]byte
	b[0] = recipeCopy
	k := 1 + binary.PutUvarint(b[1:], uint64(n))
	k += binary.PutVarint(b[k:], off-r.nextCopy)
	r.write(b[:k])
	r.nextCopy = off + int64(n)
	r.size += int64(n)
	return r.err
}

// Close ends the recipe and flushes it to its writer (which it does not
// close).
func (r *RecipeWriter) Close() error {
	r.flushLiteral()
	var b [1 + binary.MaxVarintLen64]byte
	b[0] = recipeEnd
	r.write(b[:1+binary.PutUvarint(b[1:], uint64(r.size))])
	if r.err == nil {
		r.err = r.w.Flush()
	}
	return r.err
}

// Size is the length of the file the recipe makes, so far.
func (r *RecipeWriter) Size() int64 { return r.size }

func (r *RecipeWriter) flushLiteral() {
	if len(r.lit) == 0 {
		return
	}
	for lit := r.lit; len(lit) > 0; {
		run := lit[:min(len(lit), maxRecipeLiteral)]
		var b [1 + binary.MaxVarintLen64]byte
		b[0] = recipeLiteral
		r.write(b[:1+binary.PutUvarint(b[1:], uint64(len(run)))])
		r.write(run)
		lit = lit[len(run):]
	}
	r.lit = r.lit[:0]
}

func (r *RecipeWriter) write(p []byte) {
	if r.err == nil {
		_, r.err = r.w.Write(p)
	}
}

// ErrBadRecipe means a recipe is not one, or does not fit its base.
var ErrBadRecipe = errors.New("not a recipe this handoff can follow")

// Assemble writes the file recipe describes, copying from base, whose
// size is baseSize, to out, and returns its length. A recipe that is
// malformed, cut short, reaches outside the base or whose length differs
// from what it says is an error wrapping ErrBadRecipe.
func Assemble(recipe io.Reader, base io.ReaderAt, baseSize int64, out io.Writer) (int64, error) {
	in := bufio.NewReaderSize(recipe, 256<<10)
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrBadRecipe, fmt.Sprintf(format, a...))
	}
	magic := make([]byte, len(recipeMagic))
	if _, err := io.ReadFull(in, magic); err != nil || string(magic) != recipeMagic {
		return 0, bad("it does not start with %q", recipeMagic)
	}
	var written, nextCopy int64
	buf := make([]byte, 256<<10)
	for {
		tag, err := in.ReadByte()
		if err != nil {
			return written, bad("it ends after %d bytes of the file without saying so", written)
		}
		switch tag {
		case recipeLiteral:
			n, err := binary.ReadUvarint(in)
			if err != nil || n > maxRecipeLiteral {
				return written, bad("a literal at byte %d of the file is malformed", written)
			}
			if _, err := io.CopyN(out, in, int64(n)); err != nil {
				if errors.Is(err, io.EOF) {
					return written, bad("a literal at byte %d of the file is cut short", written)
				}
				return written, err
			}
			written += int64(n)
		case recipeCopy:
			n, err1 := binary.ReadUvarint(in)
			d, err2 := binary.ReadVarint(in)
			off := nextCopy + d
			if err1 != nil || err2 != nil || off < 0 || n > uint64(baseSize) || off > baseSize-int64(n) {
				return written, bad("a copy at byte %d of the file reaches outside the base of %d bytes", written, baseSize)
			}
			for left := int64(n); left > 0; {
				chunk := buf[:min(left, int64(len(buf)))]
				if _, err := base.ReadAt(chunk, off); err != nil && !(errors.Is(err, io.EOF) && off+int64(len(chunk)) == baseSize) {
					return written, fmt.Errorf("read the base at %d: %w", off, err)
				}
				if _, err := out.Write(chunk); err != nil {
					return written, err
				}
				off += int64(len(chunk))
				left -= int64(len(chunk))
				written += int64(len(chunk))
			}
			nextCopy = off
		case recipeEnd:
			size, err := binary.ReadUvarint(in)
			if err != nil || int64(size) != written {
				return written, bad("it says the file is %d bytes, and makes %d", size, written)
			}
			return written, nil
		default:
			return written, bad("an unknown operation %q at byte %d of the file", tag, written)
		}
	}
}
