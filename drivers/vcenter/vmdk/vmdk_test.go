package vmdk

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	"github.com/vcagent/vcagent/drivers/vcenter/vmdk/vmdktest"
)

var (
	rawDisk       = vmdktest.Raw
	qemuImage     = vmdktest.Qemu
	buildSparse   = vmdktest.Sparse
	buildStream   = vmdktest.Stream
	nonZeroGrains = vmdktest.NonZeroGrains
)

// memFile is an in-memory WriterAt that refuses writes outside size.
type memFile struct {
	b      []byte
	limit  int64
	writes int
}

func (m *memFile) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > m.limit {
		return 0, errors.New("write outside the disk")
	}
	m.writes++
	if end := int(off) + len(p); end > len(m.b) {
		m.b = append(m.b, make([]byte, end-len(m.b))...)
	}
	return copy(m.b[off:], p), nil
}

func (m *memFile) Truncate(n int64) error {
	if n > m.limit {
		return errors.New("truncate beyond the disk")
	}
	m.b = append(m.b[:min(int64(len(m.b)), n)], make([]byte, max(0, n-int64(len(m.b))))...)
	return nil
}

// streamed converts img as a stream.
func streamed(t *testing.T, img []byte) ([]byte, *Image, error) {
	t.Helper()
	im, err := Open(bytes.NewReader(img), int64(len(img)), DefaultLimits)
	if err != nil {
		return nil, nil, err
	}
	var out bytes.Buffer
	err = im.Convert(t.Context(), &out)
	if err == nil && int64(out.Len()) != im.Size() {
		t.Errorf("stream has %d bytes, Size says %d", out.Len(), im.Size())
	}
	return out.Bytes(), im, err
}

// spooled converts img into a random-access destination.
func spooled(t *testing.T, img []byte) ([]byte, error) {
	t.Helper()
	im, err := Open(bytes.NewReader(img), int64(len(img)), DefaultLimits)
	if err != nil {
		return nil, err
	}
	f := &memFile{limit: im.Size()}
	err = im.ConvertAt(t.Context(), f)
	return f.b, err
}

func TestVMDKConvert(t *testing.T) {
	t.Parallel()
	raw := rawDisk(6<<20 + 192<<10) // not a whole number of 64 KiB grains
	small := rawDisk(40 << 10)      // smaller than a grain
	big := rawDisk(48 << 20)        // more than one grain table (32 MiB)
	for _, tc := range []struct {
		name    string
		raw     []byte
		img     func(t *testing.T, raw []byte) []byte
		format  Format
		ordered bool // whether Convert streams it
	}{
		{"qemu monolithicSparse", raw, func(t *testing.T, r []byte) []byte { return qemuImage(t, r, "monolithicSparse") }, MonolithicSparse, true},
		{"qemu streamOptimized", raw, func(t *testing.T, r []byte) []byte { return qemuImage(t, r, "streamOptimized") }, StreamOptimized, true},
		{"qemu monolithicSparse, two grain tables", big, func(t *testing.T, r []byte) []byte { return qemuImage(t, r, "monolithicSparse") }, MonolithicSparse, true},
		{"qemu streamOptimized, two grain tables", big, func(t *testing.T, r []byte) []byte { return qemuImage(t, r, "streamOptimized") }, StreamOptimized, true},
		{"qemu monolithicSparse, partial grain", small, func(t *testing.T, r []byte) []byte { return qemuImage(t, r, "monolithicSparse") }, MonolithicSparse, true},
		{"qemu streamOptimized, partial grain", small, func(t *testing.T, r []byte) []byte { return qemuImage(t, r, "streamOptimized") }, StreamOptimized, true},
		{"qemu monolithicSparse, last grain stored partially", small, func(t *testing.T, r []byte) []byte {
			return qemuImage(t, r, "monolithicSparse")[:128*SectorSize+len(r)]
		}, MonolithicSparse, true},
		{"sparse, primary directory first", raw, func(_ *testing.T, r []byte) []byte { return buildSparse(r, 128, 512, false) }, MonolithicSparse, true},
		{"sparse, grains in reverse order", raw, func(_ *testing.T, r []byte) []byte { return buildSparse(r, 16, 64, true) }, MonolithicSparse, false},
		{"stream, directory at end, zlib", big, func(_ *testing.T, r []byte) []byte { return buildStream(r, 128, false, false) }, StreamOptimized, true},
		{"stream, directory at end, raw deflate", raw, func(_ *testing.T, r []byte) []byte { return buildStream(r, 8, false, true) }, StreamOptimized, true},
		{"stream, tables in reverse order", big, func(_ *testing.T, r []byte) []byte { return buildStream(r, 128, true, false) }, StreamOptimized, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			img := tc.img(t, tc.raw)
			out, im, err := streamed(t, img)
			if im != nil && (im.Format() != tc.format || im.Size() != int64(len(tc.raw))) {
				t.Errorf("format %s size %d, want %s %d", im.Format(), im.Size(), tc.format, len(tc.raw))
			}
			switch {
			case tc.ordered && err != nil:
				t.Fatalf("Convert: %v", err)
			case tc.ordered && !bytes.Equal(out, tc.raw):
				t.Errorf("streamed flat disk differs from the raw input (%d bytes, want %d)", len(out), len(tc.raw))
			case !tc.ordered && !errors.Is(err, ErrOutOfOrder):
				t.Errorf("Convert of out-of-order grains: %v, want ErrOutOfOrder", err)
			}
			if im != nil && im.Format() == MonolithicSparse && im.Ordered() != tc.ordered {
				t.Errorf("Ordered() = %v, want %v", im.Ordered(), tc.ordered)
			}
			out, err = spooled(t, img)
			if err != nil || !bytes.Equal(out, tc.raw) {
				t.Errorf("ConvertAt: %v; flat disk equal to the raw input: %v", err, bytes.Equal(out, tc.raw))
			}
			t.Logf("%d-byte image, %d-byte disk", len(img), len(tc.raw))
		})
	}
}

// TestVMDKZeroGrainsNotWritten checks that a random-access conversion
// writes only the grains holding data, so a spool file keeps its holes.
func TestVMDKZeroGrainsNotWritten(t *testing.T) {
	t.Parallel()
	raw := rawDisk(6<<20 + 192<<10)
	want := len(nonZeroGrains(raw, 64<<10))
	for _, sub := range []string{"monolithicSparse", "streamOptimized"} {
		im, err := Open(bytes.NewReader(qemuImage(t, raw, sub)), 0, DefaultLimits)
		if err != nil {
			t.Fatal(err)
		}
		f := &memFile{limit: im.Size()}
		if err := im.ConvertAt(t.Context(), f); err != nil {
			t.Fatal(err)
		}
		if f.writes != want {
			t.Errorf("%s: %d writes, want one per non-zero grain (%d)", sub, f.writes, want)
		}
	}
}

// checkWriter checks a flat disk as it is written: data at offsets listed
// in want, zeros everywhere else.
type checkWriter struct {
	want map[int64][]byte
	pos  int64
	bad  int64 // first wrong offset + 1
}

func (c *checkWriter) Write(p []byte) (int, error) {
	for i := 0; i < len(p); {
		off := c.pos + int64(i)
		if d, ok := c.want[off]; ok {
			n := min(len(d), len(p)-i)
			if !bytes.Equal(p[i:i+n], d[:n]) && c.bad == 0 {
				c.bad = off + 1
			}
			if n < len(d) {
				c.want[off+int64(n)] = d[n:]
			}
			i += n
			continue
		}
		// Up to the next data offset, or the end of p, must be zero.
		end := len(p)
		for o := range c.want {
			if o > off && o < c.pos+int64(end) {
				end = int(o - c.pos)
			}
		}
		for j := i; j < end; j += len(zeros) {
			if k := min(end, j+len(zeros)); !bytes.Equal(p[j:k], zeros[:k-j]) && c.bad == 0 {
				c.bad = c.pos + int64(j) + 1
			}
		}
		i = end
	}
	c.pos += int64(len(p))
	return len(p), nil
}

// TestVMDKLargeDiskSmallMemory converts 2 GiB disks holding three pieces of
// data: the memory allocated stays a small fraction of the disk, so
// neither the image nor its zero grains are held in memory. Not parallel:
// the allocation count is the whole process's.
func TestVMDKLargeDiskSmallMemory(t *testing.T) {
	const size = 2 << 30
	in := filepath.Join(t.TempDir(), "raw")
	f, err := os.Create(in)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int64][]byte{0: rawDisk(1 << 20), 1<<30 + 4096: []byte("in the middle"), size - 512: bytes.Repeat([]byte{0xee}, 512)}
	for off, d := range want {
		if _, err := f.WriteAt(d, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	for _, sub := range []string{"monolithicSparse", "streamOptimized"} {
		t.Run(sub, func(t *testing.T) {
			img, err := os.Open(vmdktest.QemuFile(t, in, sub))
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = img.Close() }()
			st, _ := img.Stat()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			im, err := Open(img, st.Size(), DefaultLimits)
			if err != nil {
				t.Fatal(err)
			}
			w := &checkWriter{want: maps.Clone(want)}
			if err := im.Convert(t.Context(), w); err != nil {
				t.Fatal(err)
			}
			runtime.ReadMemStats(&after)
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("%d-byte image to a %d-byte disk: %d bytes allocated", st.Size(), w.pos, alloc)
			if w.pos != size || w.bad != 0 {
				t.Errorf("flat disk: %d bytes, first wrong byte at %d", w.pos, w.bad-1)
			}
			if alloc > 8<<20 {
				t.Errorf("allocated %d bytes converting a %d-byte disk", alloc, size)
			}
		})
	}
}

// mutate returns a copy of img changed by f.
func mutate(img []byte, f func(b []byte) []byte) []byte { return f(slices.Clone(img)) }

func TestVMDKRejects(t *testing.T) {
	t.Parallel()
	raw := rawDisk(1 << 20)
	sparse := qemuImage(t, raw, "monolithicSparse")
	stream := qemuImage(t, raw, "streamOptimized")
	vmw := buildStream(raw, 128, false, false)
	many := buildSparse(raw, 8, 16, false) // many grain tables, directory at sector 2
	le := binary.LittleEndian
	// Where qemu-img put things in these images.
	gt := int(le.Uint32(sparse[le.Uint64(sparse[56:])*SectorSize:])) * SectorSize
	over := int(le.Uint64(sparse[64:])) * SectorSize
	firstGrain := int(le.Uint64(stream[64:])) * SectorSize

	for _, tc := range []struct {
		name string
		img  []byte
		want error
	}{
		{"empty", nil, ErrInvalid},
		{"short header", sparse[:100], ErrInvalid},
		{"not a VMDK", bytes.Repeat([]byte("qcow"), 256), ErrInvalid},
		{"descriptor file", []byte("# Disk DescriptorFile\nversion=1\n" + string(make([]byte, 600))), ErrInvalid},
		{"COWD", mutate(sparse, func(b []byte) []byte { copy(b, "COWD"); return b }), ErrUnsupported},
		{"version 4", mutate(sparse, func(b []byte) []byte { b[4] = 4; return b }), ErrUnsupported},
		{"unknown flag", mutate(sparse, func(b []byte) []byte { b[10] = 0x80; return b }), ErrUnsupported},
		{"text-mode transfer", mutate(sparse, func(b []byte) []byte { b[75] = '\n'; return b }), ErrInvalid},
		{"grain size 3", mutate(sparse, func(b []byte) []byte { le.PutUint64(b[20:], 3); return b }), ErrInvalid},
		{"grain size 1 GiB", mutate(sparse, func(b []byte) []byte { le.PutUint64(b[20:], 1<<21); return b }), ErrInvalid},
		{"capacity 0", mutate(sparse, func(b []byte) []byte { le.PutUint64(b[12:], 0); return b }), ErrInvalid},
		{"capacity 1 PiB", mutate(sparse, func(b []byte) []byte { le.PutUint64(b[12:], 1<<41); return b }), ErrUnsupported},
		{"capacity past the grain tables", mutate(sparse, func(b []byte) []byte { le.PutUint64(b[12:], 1<<30); return b }), ErrInvalid},
		{"overhead past the end", mutate(sparse, func(b []byte) []byte { le.PutUint64(b[64:], 1<<40); return b }), ErrInvalid},
		{"directory past the metadata", mutate(sparse, func(b []byte) []byte { le.PutUint64(b[56:], 1<<20); return b }), ErrInvalid},
		{"directory at end in a sparse image", mutate(sparse, func(b []byte) []byte { le.PutUint64(b[56:], gdAtEnd); return b }), ErrInvalid},
		{"descriptor past the metadata", mutate(sparse, func(b []byte) []byte { le.PutUint64(b[36:], 1<<20); return b }), ErrInvalid},
		{"zero entries per table", mutate(sparse, func(b []byte) []byte { le.PutUint32(b[44:], 0); return b }), ErrInvalid},
		{"compressed without markers", mutate(sparse, func(b []byte) []byte { b[10] = 1; b[77] = 1; return b }), ErrUnsupported},
		{"lzma", mutate(stream, func(b []byte) []byte { b[77] = 2; return b }), ErrUnsupported},
		{"truncated in the grain tables", sparse[:gt+100], ErrInvalid},
		{"truncated in the grains", sparse[:over+100], ErrInvalid},
		{"grain table outside the metadata", mutate(sparse, func(b []byte) []byte {
			le.PutUint32(b[le.Uint64(b[56:])*SectorSize:], uint32(over/SectorSize)+8)
			return b
		}), ErrInvalid},
		{"grain table before the directory", mutate(sparse, func(b []byte) []byte {
			le.PutUint32(b[le.Uint64(b[56:])*SectorSize:], uint32(le.Uint64(b[48:])+1))
			return b
		}), ErrUnsupported},
		{"two grain tables in one place", mutate(many, func(b []byte) []byte { copy(b[2*SectorSize+4:], b[2*SectorSize:2*SectorSize+4]); return b }), ErrInvalid},
		{"grain inside the metadata", mutate(sparse, func(b []byte) []byte { le.PutUint32(b[gt:], 2); return b }), ErrInvalid},
		{"grain past the end", mutate(sparse, func(b []byte) []byte { le.PutUint32(b[gt:], 1<<30); return b }), ErrInvalid},
		{"two grains in one place", mutate(sparse, func(b []byte) []byte { copy(b[gt+4:gt+8], b[gt:gt+4]); return b }), ErrInvalid},
		{"stream without end marker", vmw[:len(vmw)-SectorSize], ErrInvalid},
		{"stream cut in a grain", stream[:firstGrain+100], ErrInvalid},
		{"stream with corrupt deflate data", mutate(stream, func(b []byte) []byte {
			for i := firstGrain + 20; i < firstGrain+400; i++ {
				b[i] ^= 0x5a
			}
			return b
		}), ErrInvalid},
		{"stream with a bad checksum", mutate(stream, func(b []byte) []byte {
			n := int(le.Uint32(b[firstGrain+8:]))
			b[firstGrain+12+n-1] ^= 1
			return b
		}), ErrInvalid},
		{"stream grain past the capacity", mutate(stream, func(b []byte) []byte { le.PutUint64(b[firstGrain:], 1<<30); return b }), ErrInvalid},
		{"stream grain not on a grain boundary", mutate(stream, func(b []byte) []byte { le.PutUint64(b[firstGrain:], 3); return b }), ErrInvalid},
		{"stream grain of 1 GiB", mutate(stream, func(b []byte) []byte { le.PutUint32(b[firstGrain+8:], 1<<30); return b }), ErrInvalid},
		{"stream unknown marker", mutate(stream, func(b []byte) []byte { clear(b[firstGrain : firstGrain+16]); b[firstGrain+12] = 9; return b }), ErrInvalid},
		{"stream huge table marker", mutate(stream, func(b []byte) []byte {
			clear(b[firstGrain : firstGrain+16])
			le.PutUint64(b[firstGrain:], 1<<40)
			b[firstGrain+12] = markerGT
			return b
		}), ErrInvalid},
		{"stream footer contradicting the header", mutate(vmw, func(b []byte) []byte {
			le.PutUint64(b[len(b)-2*SectorSize+12:], 7)
			return b
		}), ErrInvalid},
		{"stream truncated before the footer", vmw[:len(vmw)-3*SectorSize], ErrInvalid},
		{"zip bomb grain", func() []byte {
			// A grain that inflates far beyond the grain size.
			var c bytes.Buffer
			w := zlib.NewWriter(&c)
			_, _ = w.Write(make([]byte, 4<<20))
			_ = w.Close()
			b := slices.Clone(stream[:firstGrain])
			var gh [12]byte
			le.PutUint32(gh[8:], uint32(c.Len()))
			b = append(append(b, gh[:]...), c.Bytes()...)
			return append(b, make([]byte, 2*SectorSize)...)
		}(), ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, _, serr := streamed(t, tc.img)
			_, aerr := spooled(t, tc.img)
			for _, err := range []error{serr, aerr} {
				if !errors.Is(err, tc.want) {
					t.Errorf("got %v, want %v", err, tc.want)
				}
			}
			t.Log(serr)
		})
	}
}

// TestVMDKReadErrors checks that a failing image stream is reported as
// such, not as a bad image.
func TestVMDKReadErrors(t *testing.T) {
	t.Parallel()
	img := qemuImage(t, rawDisk(1<<20), "streamOptimized")
	boom := errors.New("connection reset")
	im, err := Open(io.MultiReader(bytes.NewReader(img[:len(img)/2]), iotestErr{boom}), 0, DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	err = im.Convert(t.Context(), io.Discard)
	if !errors.Is(err, boom) || errors.Is(err, ErrInvalid) {
		t.Errorf("Convert over a broken stream: %v, want %v and not ErrInvalid", err, boom)
	}
	if err := im.Convert(t.Context(), io.Discard); err == nil {
		t.Error("a second Convert succeeded")
	}
}

type iotestErr struct{ err error }

func (r iotestErr) Read([]byte) (int, error) { return 0, r.err }

// FuzzVMDK feeds arbitrary images to the header and grain parsers: they
// must fail cleanly, never write outside the disk and stay within Limits.
func FuzzVMDK(f *testing.F) {
	raw := rawDisk(24 << 10)
	f.Add(buildSparse(raw, 8, 16, false))
	f.Add(buildSparse(raw, 8, 16, true))
	f.Add(buildStream(raw, 8, false, false))
	f.Add(buildStream(raw, 8, true, true))
	// qemu-img's images are no seeds: its 64 KiB of metadata slow the
	// fuzzer down more than their layout adds.
	lim := Limits{MaxCapacity: 16 << 20, MaxMetadata: 1 << 20}
	f.Fuzz(func(t *testing.T, img []byte) {
		if h, err := ParseHeader(img, lim); err == nil && h.Capacity*SectorSize > uint64(lim.MaxCapacity) {
			t.Fatalf("header accepted capacity %d sectors", h.Capacity)
		}
		for _, size := range []int64{int64(len(img)), 0} {
			im, err := Open(bytes.NewReader(img), size, lim)
			if err != nil {
				if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrUnsupported) {
					t.Fatalf("Open: untyped error %v", err)
				}
				continue
			}
			f := &memFile{limit: im.Size()}
			if err := im.ConvertAt(t.Context(), f); err != nil && !errors.Is(err, ErrInvalid) {
				t.Fatalf("ConvertAt: untyped error %v", err)
			}
		}
	})
}
