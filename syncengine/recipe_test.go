package syncengine

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// recipeOp is one step of a test's recipe: literal bytes, or a copy.
type recipeOp struct {
	lit     []byte
	off     int64
	n       int
	literal bool
}

func lit(s string) recipeOp              { return recipeOp{lit: []byte(s), literal: true} }
func cp(off int64, n int) recipeOp       { return recipeOp{off: off, n: n} }
func bigLit(n int, seed uint64) recipeOp { return recipeOp{lit: randomBytes(n, seed), literal: true} }

func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	rng := rand.New(rand.NewPCG(seed, 7))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// writeRecipe is the recipe of ops, and the file it should make of base.
func writeRecipe(t *testing.T, base []byte, ops []recipeOp) (recipe, want []byte) {
	t.Helper()
	var buf bytes.Buffer
	w := NewRecipeWriter(&buf)
	for _, op := range ops {
		var err error
		if op.literal {
			err = w.Literal(op.lit)
			want = append(want, op.lit...)
		} else {
			err = w.Copy(op.off, op.n)
			want = append(want, base[op.off:op.off+int64(op.n)]...)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if w.Size() != int64(len(want)) {
		t.Fatalf("the writer counts %d bytes, the ops make %d", w.Size(), len(want))
	}
	return buf.Bytes(), want
}

func TestARecipeMakesItsFile(t *testing.T) {
	base := randomBytes(3<<20, 1)
	for _, tc := range []struct {
		name string
		ops  []recipeOp
	}{
		{"nothing", nil},
		{"literals only, joined", []recipeOp{lit("QEVM"), lit(""), lit("\x00\x00\x00\x03")}},
		{"pages with headers", []recipeOp{lit("hdr1"), cp(0, 4096), lit("hdr2"), cp(4096, 4096), lit("hdr3"), cp(1<<20, 4096), lit("tail")}},
		{"a copy back to an earlier offset", []recipeOp{cp(2<<20, 100), cp(5, 10), cp(0, 1)}},
		{"a copy reaching the base's end", []recipeOp{cp(3<<20-10, 10)}},
		{"a copy across the assembler's buffer", []recipeOp{cp(12345, 1<<20+77)}},
		{"a literal longer than one run", []recipeOp{bigLit(2*maxRecipeLiteral+3, 2), cp(1, 2)}},
		{"an empty copy", []recipeOp{cp(100, 0), lit("x")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recipe, want := writeRecipe(t, base, tc.ops)
			var out bytes.Buffer
			n, err := Assemble(bytes.NewReader(recipe), bytes.NewReader(base), int64(len(base)), &out)
			if err != nil {
				t.Fatal(err)
			}
			if n != int64(len(want)) || !bytes.Equal(out.Bytes(), want) {
				t.Fatalf("assembled %d bytes, not the %d the recipe describes", n, len(want))
			}
		})
	}
}

func TestPagesCostAFewBytesEachInARecipe(t *testing.T) {
	var ops []recipeOp
	for p := range int64(1000) {
		ops = append(ops, lit("12345678"), cp(p*4096, 4096))
	}
	recipe, _ := writeRecipe(t, make([]byte, 1000*4096), ops)
	if per := (len(recipe) - len(recipeMagic)) / 1000; per > 8+6 {
		t.Errorf("a page with an 8-byte header costs %d bytes of recipe, want at most 14", per)
	}
}

func TestABadRecipeIsRefused(t *testing.T) {
	base := randomBytes(1<<16, 3)
	good, _ := writeRecipe(t, base, []recipeOp{lit("head"), cp(0, 4096), lit("tail")})
	outside, _ := writeRecipe(t, make([]byte, 1<<17), []recipeOp{cp(1<<16, 4096)})
	for _, tc := range []struct {
		name, want string
		recipe     []byte
	}{
		{"not a recipe", "does not start", []byte("QEVM\x00\x00\x00\x03")},
		{"cut short in a literal", "cut short", good[:len(recipeMagic)+4]},
		{"cut short before its end", "without saying so", good[:len(good)-3]}, // its end is three bytes: E and a varint of 4104
		{"a copy outside the base", "outside the base", outside},
		{"another length than it says", "says the file is", append(bytes.Clone(good[:len(good)-1]), good[len(good)-1]+1)},
		{"an unknown operation", "unknown operation", []byte(recipeMagic + "X")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Assemble(bytes.NewReader(tc.recipe), bytes.NewReader(base), int64(len(base)), &bytes.Buffer{})
			if !errors.Is(err, ErrBadRecipe) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrBadRecipe saying %q", err, tc.want)
			}
		})
	}
}

func TestTheServerAssemblesAFileFromItsStore(t *testing.T) {
	dir := t.TempDir()
	base := randomBytes(40*DefaultChunkSize, 4)
	copy(base[5*DefaultChunkSize:], make([]byte, 3*DefaultChunkSize)) // zero chunks too
	recipe, want := writeRecipe(t, base, []recipeOp{lit("start"), cp(5*DefaultChunkSize-100, 200), cp(4096, 3*DefaultChunkSize), lit("end")})
	for name, b := range map[string][]byte{"memory.image": base, "memory.recipe": recipe} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	im := &Images{Store: DirStore{Dir: t.TempDir()}, Codec: NewCodec(), Dirs: []string{dir}}
	ctx := context.Background()
	roots := map[string]Hash{}
	for _, name := range []string{"memory.image", "memory.recipe"} {
		res, err := im.Index(ctx, filepath.Join(dir, name), nil)
		if err != nil {
			t.Fatal(err)
		}
		roots[name] = res.Root
	}
	target := filepath.Join(dir, "restore.memory")
	if err := os.WriteFile(target, []byte("an older file"), 0o640); err != nil {
		t.Fatal(err)
	}
	var progressed int64
	res, err := im.Assemble(ctx, roots["memory.recipe"], roots["memory.image"], target, func(step string, done, total int64) { progressed = done })
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(target)
	if err != nil || !bytes.Equal(got, want) || res.Size != int64(len(want)) {
		t.Fatalf("the server wrote %d bytes (%v), not the %d the recipe makes", len(got), err, len(want))
	}
	if fi, _ := os.Stat(target); fi.Mode().Perm() != 0o640 {
		t.Errorf("the assembled file has mode %v, not the replaced file's 0640", fi.Mode().Perm())
	}
	if progressed == 0 {
		t.Error("no progress reported")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*assemble*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}

	_, err = im.Assemble(ctx, roots["memory.image"], roots["memory.image"], target, nil)
	if !errors.Is(err, ErrBadRecipe) {
		t.Fatalf("an image taken for a recipe: %v, want ErrBadRecipe", err)
	}
	if got, _ := os.ReadFile(target); !bytes.Equal(got, want) {
		t.Fatal("a failed assembly changed the file it would have replaced")
	}
	if _, err := im.Assemble(ctx, Sum([]byte("none")), roots["memory.image"], target, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a recipe the store lacks: %v, want ErrNotFound", err)
	}
	if _, err := im.Assemble(ctx, roots["memory.recipe"], roots["memory.image"], "/etc/handoff-restore", nil); !errors.Is(err, ErrOutsideImages) {
		t.Fatalf("a target outside the image folders: %v, want ErrOutsideImages", err)
	}
}
