package vmdk

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/vcagent/vcagent/drivers/vcenter/vmdk/vmdktest"
)

// writeStream writes raw (read up to its length) as a streamOptimized
// image of the given capacity.
func writeStream(t *testing.T, raw []byte, capacity int64) []byte {
	t.Helper()
	var img bytes.Buffer
	n, err := WriteStreamOptimized(context.Background(), &img, bytes.NewReader(raw), capacity, StreamOptions{AdapterType: "lsilogic", ExtentName: "x.vmdk"})
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(img.Len()) || n%SectorSize != 0 {
		t.Fatalf("wrote %d bytes, counted %d", img.Len(), n)
	}
	return img.Bytes()
}

func TestWriterRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name          string
		size, capSize int
	}{
		{"one grain", 64 << 10, 64 << 10},
		{"partial last grain", 3<<20 + 512, 3<<20 + 512},
		{"several grain tables", 40 << 20, 40 << 20},
		{"short data, larger capacity", 1 << 20, 8 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := vmdktest.Raw(tc.size)
			img := writeStream(t, raw, int64(tc.capSize))
			out, im, err := streamed(t, img)
			if err != nil {
				t.Fatal(err)
			}
			if im.Format() != StreamOptimized || im.Size() != int64(tc.capSize) {
				t.Fatalf("format %s size %d, want streamOptimized %d", im.Format(), im.Size(), tc.capSize)
			}
			want := append(bytes.Clone(raw), make([]byte, tc.capSize-tc.size)...)
			if !bytes.Equal(out, want) {
				t.Fatal("round trip changed the disk")
			}
			if len(img) >= tc.capSize && tc.capSize > 1<<20 {
				t.Fatalf("image of %d bytes for a mostly empty %d-byte disk: zero grains not skipped", len(img), tc.capSize)
			}
		})
	}
}

func TestWriterDescriptorAndFooter(t *testing.T) {
	img := writeStream(t, vmdktest.Raw(1<<20), 1<<20)
	h, err := ParseHeader(img, DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	if h.GDOffset != gdAtEnd || h.Format() != StreamOptimized || h.GrainSize != 128 {
		t.Fatalf("header %+v", h)
	}
	desc := img[h.DescriptorOffset*SectorSize : (h.DescriptorOffset+h.DescriptorSize)*SectorSize]
	for _, want := range []string{`createType="streamOptimized"`, `RDONLY 2048 SPARSE "x.vmdk"`, `ddb.adapterType = "lsilogic"`} {
		if !bytes.Contains(desc, []byte(want)) {
			t.Errorf("descriptor lacks %q:\n%s", want, desc)
		}
	}
	// The footer (second-last sector) locates the grain directory.
	f, err := ParseHeader(img[len(img)-2*SectorSize:], DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	if f.GDOffset == gdAtEnd || f.GDOffset*SectorSize >= uint64(len(img)) {
		t.Fatalf("footer grain directory at %d", f.GDOffset)
	}
}

func TestWriterRejects(t *testing.T) {
	var b bytes.Buffer
	if _, err := WriteStreamOptimized(context.Background(), &b, bytes.NewReader(make([]byte, 2048)), 1024, StreamOptions{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("data past capacity: %v", err)
	}
	if _, err := WriteStreamOptimized(context.Background(), &b, bytes.NewReader(nil), 0, StreamOptions{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("zero capacity: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := WriteStreamOptimized(ctx, &b, bytes.NewReader(make([]byte, 1<<20)), 1<<20, StreamOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}

// TestWriterQemuReads checks the image with qemu-img, an independent
// reader (qemu-utils, which integration/test.sh installs).
func TestWriterQemuReads(t *testing.T) {
	qemu, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Fatal("qemu-img not installed: apt-get install qemu-utils (integration/test.sh does)")
	}
	raw := vmdktest.Raw(2 << 20)
	dir := t.TempDir()
	in, out := filepath.Join(dir, "s.vmdk"), filepath.Join(dir, "s.raw")
	if err := os.WriteFile(in, writeStream(t, raw, int64(len(raw))), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command(qemu, "convert", "-f", "vmdk", "-O", "raw", in, out).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, b)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, raw) {
		t.Fatal("qemu-img reads other content")
	}
}
