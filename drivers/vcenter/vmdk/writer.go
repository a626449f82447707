package vmdk

import (
	"bytes"
	"compress/zlib"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Layout of the streamOptimized images StreamOptimizedWriter writes: what
// VMware's exporters write (64 KiB grains, 512 entries per grain table).
const (
	writeGrainSectors = 128
	writeGTEsPerGT    = 512
)

// StreamOptions describe the disk a streamOptimized image is written for.
type StreamOptions struct {
	// AdapterType is the descriptor's ddb.adapterType ("lsilogic",
	// "buslogic", "ide", "legacyESX"); empty means "lsilogic".
	AdapterType string
	// ExtentName is the file name the descriptor's extent line gives;
	// empty means "disk.vmdk".
	ExtentName string
}

// WriteStreamOptimized writes the flat disk read from r as a
// streamOptimized VMDK to w, front to back (w need not seek), the way
// VMware's exporters lay it out: header with GD_AT_END, embedded
// descriptor, zlib-compressed grains each prefixed by its disk address, a
// grain table marker and table after each table's grains, then the grain
// directory, the footer and the end-of-stream marker. capacity is the
// disk's size in bytes (rounded up to whole sectors); when r ends before
// capacity the rest of the disk reads as zeros, and data past capacity is
// an error. All-zero grains are left unallocated. It returns the number of
// bytes written.
func WriteStreamOptimized(ctx context.Context, w io.Writer, r io.Reader, capacity int64, opts StreamOptions) (int64, error) {
	if capacity <= 0 {
		return 0, fmt.Errorf("%w: capacity %d", ErrInvalid, capacity)
	}
	sw := &streamWriter{w: w}
	capSectors := uint64((capacity + SectorSize - 1) / SectorSize)
	desc := streamDescriptor(capSectors, opts)
	descSectors := uint64((len(desc) + SectorSize - 1) / SectorSize)
	h := writeHeader{capacity: capSectors, descOffset: 1, descSize: descSectors, overHead: 1 + descSectors, gdOffset: gdAtEnd}
	if err := sw.write(h.encode()); err != nil {
		return sw.n, err
	}
	if err := sw.write(desc); err != nil {
		return sw.n, err
	}
	if err := sw.pad(); err != nil {
		return sw.n, err
	}

	grainBytes := int64(writeGrainSectors * SectorSize)
	nGrains := (int64(capSectors) + writeGrainSectors - 1) / writeGrainSectors
	nGTs := (nGrains + writeGTEsPerGT - 1) / writeGTEsPerGT
	gd := make([]byte, (nGTs*4+SectorSize-1)/SectorSize*SectorSize)
	gt := make([]byte, writeGTEsPerGT*4)
	buf := make([]byte, grainBytes)
	var comp bytes.Buffer
	zw, _ := zlib.NewWriterLevel(&comp, zlib.BestSpeed)
	le := binary.LittleEndian
	eof := false
	for t := range nGTs {
		clear(gt)
		for i := range int64(writeGTEsPerGT) {
			g := t*writeGTEsPerGT + i
			if g >= nGrains {
				break
			}
			if err := ctx.Err(); err != nil {
				return sw.n, err
			}
			want := min(grainBytes, int64(capSectors)*SectorSize-g*grainBytes)
			data := buf[:want]
			n := 0
			if !eof {
				var err error
				n, err = io.ReadFull(r, data)
				switch {
				case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
					eof = true
				case err != nil:
					return sw.n, fmt.Errorf("reading the disk at byte %d: %w", g*grainBytes, err)
				}
			}
			clear(data[n:])
			if isZero(data) {
				continue
			}
			comp.Reset()
			zw.Reset(&comp)
			if _, err := zw.Write(data); err != nil {
				return sw.n, err
			}
			if err := zw.Close(); err != nil {
				return sw.n, err
			}
			le.PutUint32(gt[4*i:], uint32(sw.n/SectorSize))
			var gh [12]byte
			le.PutUint64(gh[:], uint64(g*writeGrainSectors))
			le.PutUint32(gh[8:], uint32(comp.Len()))
			if err := sw.write(gh[:]); err != nil {
				return sw.n, err
			}
			if err := sw.write(comp.Bytes()); err != nil {
				return sw.n, err
			}
			if err := sw.pad(); err != nil {
				return sw.n, err
			}
		}
		if err := sw.marker(uint64(len(gt)/SectorSize), markerGT); err != nil {
			return sw.n, err
		}
		le.PutUint32(gd[4*t:], uint32(sw.n/SectorSize))
		if err := sw.write(gt); err != nil {
			return sw.n, err
		}
	}
	if !eof {
		var one [1]byte
		if n, _ := io.ReadFull(r, one[:]); n > 0 {
			return sw.n, fmt.Errorf("%w: the disk holds more than its capacity of %d bytes", ErrInvalid, capacity)
		}
	}
	if err := sw.marker(uint64(len(gd)/SectorSize), markerGD); err != nil {
		return sw.n, err
	}
	h.gdOffset = uint64(sw.n / SectorSize)
	if err := sw.write(gd); err != nil {
		return sw.n, err
	}
	if err := sw.marker(1, markerFooter); err != nil {
		return sw.n, err
	}
	if err := sw.write(h.encode()); err != nil {
		return sw.n, err
	}
	return sw.n, sw.marker(0, markerEOS)
}

// streamDescriptor is the embedded descriptor of a streamOptimized image.
func streamDescriptor(capSectors uint64, opts StreamOptions) []byte {
	adapter := opts.AdapterType
	if adapter == "" {
		adapter = "lsilogic"
	}
	name := opts.ExtentName
	if name == "" {
		name = "disk.vmdk"
	}
	name = strings.ReplaceAll(name, `"`, "")
	cylinders := max(capSectors/(255*63), 1)
	var b strings.Builder
	fmt.Fprintf(&b, "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\n")
	fmt.Fprintf(&b, "# Extent description\nRDONLY %d SPARSE \"%s\"\n\n", capSectors, name)
	fmt.Fprintf(&b, "# The Disk Data Base\n#DDB\n\nddb.adapterType = \"%s\"\nddb.geometry.cylinders = \"%d\"\nddb.geometry.heads = \"255\"\nddb.geometry.sectors = \"63\"\nddb.virtualHWVersion = \"4\"\n",
		strings.ReplaceAll(adapter, `"`, ""), cylinders)
	return []byte(b.String())
}

// isZero reports whether p holds only zero bytes.
func isZero(p []byte) bool {
	for len(p) >= len(zeros) {
		if !bytes.Equal(p[:len(zeros)], zeros) {
			return false
		}
		p = p[len(zeros):]
	}
	return bytes.Equal(p, zeros[:len(p)])
}

// writeHeader is the sparse extent header of a streamOptimized image.
type writeHeader struct {
	capacity, descOffset, descSize, overHead, gdOffset uint64
}

func (h writeHeader) encode() []byte {
	b := make([]byte, SectorSize)
	le := binary.LittleEndian
	le.PutUint32(b, magicKDMV)
	le.PutUint32(b[4:], 3)
	le.PutUint32(b[8:], flagNewlineTest|flagCompressed|flagMarkers)
	le.PutUint64(b[12:], h.capacity)
	le.PutUint64(b[20:], writeGrainSectors)
	le.PutUint64(b[28:], h.descOffset)
	le.PutUint64(b[36:], h.descSize)
	le.PutUint32(b[44:], writeGTEsPerGT)
	le.PutUint64(b[48:], 0)
	le.PutUint64(b[56:], h.gdOffset)
	le.PutUint64(b[64:], h.overHead)
	copy(b[73:], "\n \r\n")
	le.PutUint16(b[77:], compressDeflate)
	return b
}

// streamWriter counts what it writes, for the sector addresses.
type streamWriter struct {
	w io.Writer
	n int64
}

func (s *streamWriter) write(p []byte) error {
	n, err := s.w.Write(p)
	s.n += int64(n)
	if err != nil {
		return fmt.Errorf("writing the streamOptimized image: %w", err)
	}
	return nil
}

// pad fills up to the next sector boundary.
func (s *streamWriter) pad() error {
	if r := s.n % SectorSize; r != 0 {
		return s.write(zeros[:SectorSize-r])
	}
	return nil
}

// marker writes a metadata marker sector.
func (s *streamWriter) marker(val uint64, typ uint32) error {
	m := make([]byte, SectorSize)
	binary.LittleEndian.PutUint64(m, val)
	binary.LittleEndian.PutUint32(m[12:], typ)
	return s.write(m)
}
