// Package vmdk turns hosted sparse VMDK images (monolithicSparse and
// streamOptimized, both "KDMV" files) into the flat disk they describe,
// reading the image once, front to back, as it arrives from the image
// service.
//
// Layouts follow VMware's "Virtual Disk Format 5.0" specification and what
// qemu-img and VMware products write:
//
//   - monolithicSparse: header, embedded descriptor, (redundant) grain
//     directory and grain tables, then the grains. All metadata precedes the
//     grains, so the grain tables are read into memory first (4 bytes per
//     grain of capacity, bounded by Limits.MaxMetadata) and the grains are
//     then copied in file order. When the grains lie in the file in disk
//     order, which is how qemu-img and VMware write them, the flat disk is
//     produced as a stream; otherwise the caller must give a random-access
//     destination (see Image.Ordered).
//   - streamOptimized: header, descriptor, then deflate-compressed grains,
//     each prefixed by its disk address, interleaved with markers for grain
//     tables, the grain directory, the footer and the end of stream. The
//     grain tables are not needed since every grain carries its address; the
//     image is decoded strictly sequentially. A grain whose address lies
//     before one already written cannot be streamed (ErrOutOfOrder).
//
// Zero and unallocated grains are never materialised: a stream gets them
// from one shared zero buffer, a file is left with holes.
package vmdk

import (
	"bufio"
	"bytes"
	"cmp"
	"compress/flate"
	"compress/zlib"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// Errors of this package; the returned errors wrap one of them.
var (
	// ErrInvalid reports a malformed, truncated or hostile image: retrying
	// with the same bytes cannot succeed.
	ErrInvalid = errors.New("vmdk: invalid image")
	// ErrUnsupported reports a well-formed image of a variant this package
	// does not convert (another compression, compressed grains without
	// markers, an ESX "COWD" sparse file, sizes above Limits).
	ErrUnsupported = errors.New("vmdk: unsupported image")
	// ErrOutOfOrder reports a grain that precedes one already streamed.
	// The image is valid: convert it again into a random-access
	// destination (Image.ConvertAt).
	ErrOutOfOrder = errors.New("vmdk: grains out of disk order, cannot stream")
)

// SectorSize is the VMDK sector, the unit of every offset in the format.
const SectorSize = 512

// Format is the kind of sparse image.
type Format string

// Formats, named as the descriptor's createType names them.
const (
	MonolithicSparse Format = "monolithicSparse"
	StreamOptimized  Format = "streamOptimized"
)

// Limits bound what an image may make this package allocate or read.
type Limits struct {
	// MaxCapacity is the largest virtual disk accepted, in bytes.
	MaxCapacity int64
	// MaxMetadata bounds the grain tables held in memory (4 bytes per
	// grain of capacity, monolithicSparse) and any metadata block skipped
	// (streamOptimized), in bytes.
	MaxMetadata int64
}

// DefaultLimits accept what the hosted sparse format can address (2 TiB)
// with the usual 64 KiB grains: 128 MiB of grain tables at most.
var DefaultLimits = Limits{MaxCapacity: 2 << 40, MaxMetadata: 128 << 20}

// Header flags.
const (
	flagNewlineTest = 1 << 0
	flagRedundantGD = 1 << 1
	flagZeroGrain   = 1 << 2
	flagCompressed  = 1 << 16
	flagMarkers     = 1 << 17
	knownFlags      = flagNewlineTest | flagRedundantGD | flagZeroGrain | flagCompressed | flagMarkers

	compressNone    = 0
	compressDeflate = 1

	gdAtEnd = ^uint64(0)

	magicKDMV = 0x564d444b // "KDMV" read little-endian
	magicCOWD = 0x44574f43 // "COWD", ESX's older sparse format

	maxGrainSectors = 2048 // 1 MiB; VMware writes 128, qemu allows up to 2048
	maxGTEsPerGT    = 4096
)

// Marker types of streamOptimized images.
const (
	markerEOS    = 0
	markerGT     = 1
	markerGD     = 2
	markerFooter = 3
)

// Header is a validated sparse extent header.
type Header struct {
	Version          uint32
	Flags            uint32
	Capacity         uint64 // sectors
	GrainSize        uint64 // sectors
	DescriptorOffset uint64 // sectors
	DescriptorSize   uint64 // sectors
	NumGTEsPerGT     uint32
	RGDOffset        uint64 // sectors
	GDOffset         uint64 // sectors, gdAtEnd in streamOptimized headers
	OverHead         uint64 // sectors of metadata before the first grain
	CompressAlgo     uint16
}

// Format returns the image variant the header describes.
func (h *Header) Format() Format {
	if h.Flags&flagCompressed != 0 {
		return StreamOptimized
	}
	return MonolithicSparse
}

// grainBytes is the size of one grain in bytes.
func (h *Header) grainBytes() int64 { return int64(h.GrainSize) * SectorSize }

// numGrains is the number of grains covering the capacity.
func (h *Header) numGrains() int64 {
	return int64((h.Capacity + h.GrainSize - 1) / h.GrainSize)
}

// ParseHeader decodes and validates the 512-byte header at the start of a
// sparse extent against lim. Errors wrap ErrInvalid or ErrUnsupported.
func ParseHeader(b []byte, lim Limits) (Header, error) {
	if len(b) < SectorSize {
		return Header{}, fmt.Errorf("%w: header has %d bytes, want %d", ErrInvalid, len(b), SectorSize)
	}
	le := binary.LittleEndian
	switch m := le.Uint32(b); m {
	case magicKDMV:
	case magicCOWD:
		return Header{}, fmt.Errorf("%w: ESX sparse (COWD) extent", ErrUnsupported)
	default:
		return Header{}, fmt.Errorf("%w: magic %#08x is not a hosted sparse VMDK (KDMV)", ErrInvalid, m)
	}
	h := Header{
		Version:          le.Uint32(b[4:]),
		Flags:            le.Uint32(b[8:]),
		Capacity:         le.Uint64(b[12:]),
		GrainSize:        le.Uint64(b[20:]),
		DescriptorOffset: le.Uint64(b[28:]),
		DescriptorSize:   le.Uint64(b[36:]),
		NumGTEsPerGT:     le.Uint32(b[44:]),
		RGDOffset:        le.Uint64(b[48:]),
		GDOffset:         le.Uint64(b[56:]),
		OverHead:         le.Uint64(b[64:]),
		CompressAlgo:     le.Uint16(b[77:]),
	}
	if h.Version < 1 || h.Version > 3 {
		return Header{}, fmt.Errorf("%w: header version %d", ErrUnsupported, h.Version)
	}
	if h.Flags&^knownFlags != 0 {
		return Header{}, fmt.Errorf("%w: unknown header flags %#x", ErrUnsupported, h.Flags&^knownFlags)
	}
	// The newline characters catch images mangled by a text-mode transfer.
	if h.Flags&flagNewlineTest != 0 && !bytes.Equal(b[73:77], []byte("\n \r\n")) {
		return Header{}, fmt.Errorf("%w: newline check characters %q damaged (text-mode transfer?)", ErrInvalid, b[73:77])
	}
	if h.GrainSize == 0 || h.GrainSize > maxGrainSectors || h.GrainSize&(h.GrainSize-1) != 0 {
		return Header{}, fmt.Errorf("%w: grain size %d sectors", ErrInvalid, h.GrainSize)
	}
	if h.Capacity == 0 {
		return Header{}, fmt.Errorf("%w: capacity 0", ErrInvalid)
	}
	if h.Capacity > uint64(lim.MaxCapacity)/SectorSize {
		return Header{}, fmt.Errorf("%w: capacity %d sectors exceeds the limit of %d bytes", ErrUnsupported, h.Capacity, lim.MaxCapacity)
	}
	if h.OverHead == 0 || h.OverHead > uint64(1<<62)/SectorSize {
		return Header{}, fmt.Errorf("%w: overhead %d sectors", ErrInvalid, h.OverHead)
	}
	if h.DescriptorSize > 0 && (h.DescriptorOffset == 0 || h.DescriptorOffset+h.DescriptorSize > h.OverHead) {
		return Header{}, fmt.Errorf("%w: descriptor at sector %d (+%d) outside the metadata (%d sectors)", ErrInvalid, h.DescriptorOffset, h.DescriptorSize, h.OverHead)
	}
	if h.Flags&flagCompressed != 0 {
		if h.CompressAlgo != compressDeflate {
			return Header{}, fmt.Errorf("%w: compression algorithm %d", ErrUnsupported, h.CompressAlgo)
		}
		if h.Flags&flagMarkers == 0 {
			return Header{}, fmt.Errorf("%w: compressed grains without markers", ErrUnsupported)
		}
		return h, nil
	}
	if h.CompressAlgo != compressNone {
		return Header{}, fmt.Errorf("%w: compression algorithm %d on an uncompressed extent", ErrInvalid, h.CompressAlgo)
	}
	if h.Flags&flagMarkers != 0 {
		return Header{}, fmt.Errorf("%w: markers without compression", ErrUnsupported)
	}
	if h.NumGTEsPerGT == 0 || h.NumGTEsPerGT > maxGTEsPerGT || h.NumGTEsPerGT&(h.NumGTEsPerGT-1) != 0 {
		return Header{}, fmt.Errorf("%w: %d entries per grain table", ErrInvalid, h.NumGTEsPerGT)
	}
	if h.GDOffset == 0 || h.GDOffset == gdAtEnd || h.GDOffset >= h.OverHead {
		return Header{}, fmt.Errorf("%w: grain directory at sector %d, outside the metadata (%d sectors)", ErrInvalid, h.GDOffset, h.OverHead)
	}
	if uint64(h.numGrains())*4 > uint64(lim.MaxMetadata) {
		return Header{}, fmt.Errorf("%w: %d grains need more grain-table memory than the limit of %d bytes", ErrUnsupported, h.numGrains(), lim.MaxMetadata)
	}
	return h, nil
}

// Image is a sparse image being read from a stream. Open reads its header
// (and, for monolithicSparse, its grain tables); one of Convert or
// ConvertAt then reads the rest. An Image is not safe for concurrent use.
type Image struct {
	h    Header
	r    *offsetReader
	lim  Limits
	size int64 // of the image file, 0 when unknown

	// monolithicSparse only: the sector of each grain (0: zero), and
	// whether the grains lie in the file in disk order.
	grains  []uint32
	ordered bool

	buf  []byte // one grain
	used bool
}

// Open reads the header of the sparse image arriving on r and, for a
// monolithicSparse image, its grain directory and tables; it reads no
// grain. size is the length of the image file when known (0 otherwise),
// to reject grains said to lie past its end before anything is written.
// Errors wrap ErrInvalid or ErrUnsupported when the image is at fault;
// read errors are returned wrapped as they are.
func Open(r io.Reader, size int64, lim Limits) (*Image, error) {
	if lim.MaxCapacity <= 0 || lim.MaxMetadata <= 0 {
		lim = DefaultLimits
	}
	im := &Image{r: &offsetReader{r: bufio.NewReaderSize(r, 256<<10)}, lim: lim, size: max(size, 0)}
	hb := make([]byte, SectorSize)
	if err := im.r.readFull(hb, "header"); err != nil {
		return nil, err
	}
	h, err := ParseHeader(hb, lim)
	if err != nil {
		return nil, err
	}
	im.h = h
	if im.size > 0 && h.OverHead*SectorSize > uint64(im.size) {
		return nil, fmt.Errorf("%w: metadata (%d sectors) longer than the %d-byte image", ErrInvalid, h.OverHead, im.size)
	}
	if h.Format() == MonolithicSparse {
		if err := im.readTables(); err != nil {
			return nil, err
		}
	}
	im.buf = make([]byte, h.grainBytes())
	return im, nil
}

// Format returns the image's variant.
func (im *Image) Format() Format { return im.h.Format() }

// Header returns the image's header.
func (im *Image) Header() Header { return im.h }

// Size returns the size of the flat disk in bytes (the virtual capacity).
func (im *Image) Size() int64 { return int64(im.h.Capacity) * SectorSize }

// Ordered reports whether Convert can produce the flat disk as a stream.
// It is false for monolithicSparse images whose grains are not in disk
// order in the file; streamOptimized images only reveal that while being
// read (Convert then fails with ErrOutOfOrder).
func (im *Image) Ordered() bool { return im.h.Format() == StreamOptimized || im.ordered }

// readTables reads the grain directory and tables of a monolithicSparse
// image into im.grains, 4 bytes per grain. qemu-img and VMware write the
// redundant directory and its tables first, then the primary directory
// followed by its tables; only the primary ones are read, the redundant
// copy is skipped.
func (im *Image) readTables() error {
	h := &im.h
	le := binary.LittleEndian
	perGT := int64(h.NumGTEsPerGT)
	n := h.numGrains()
	numGTs := (n + perGT - 1) / perGT
	gdStart, metaEnd := int64(h.GDOffset)*SectorSize, int64(h.OverHead)*SectorSize
	gdEnd := gdStart + numGTs*4
	if gdEnd > metaEnd {
		return fmt.Errorf("%w: grain directory (%d entries) runs past the metadata", ErrInvalid, numGTs)
	}
	if err := im.r.skipTo(gdStart, "grain directory"); err != nil {
		return err
	}
	gd := make([]byte, numGTs*4)
	if err := im.r.readFull(gd, "grain directory"); err != nil {
		return err
	}
	type table struct{ index, at int64 }
	var tables []table
	for t := range numGTs {
		if sec := int64(le.Uint32(gd[4*t:])); sec != 0 {
			tables = append(tables, table{t, sec * SectorSize})
		}
	}
	slices.SortFunc(tables, func(a, b table) int { return cmp.Compare(a.at, b.at) })
	im.grains = make([]uint32, n)
	gt := make([]byte, perGT*4)
	for i, t := range tables {
		switch {
		case t.at+perGT*4 > metaEnd:
			return fmt.Errorf("%w: grain table %d at sector %d lies outside the metadata", ErrInvalid, t.index, t.at/SectorSize)
		case i > 0 && t.at < tables[i-1].at+perGT*4:
			return fmt.Errorf("%w: grain table %d at sector %d overlaps another", ErrInvalid, t.index, t.at/SectorSize)
		case t.at < gdEnd:
			// Reaching it would mean reading the image twice.
			return fmt.Errorf("%w: grain table %d at sector %d precedes the end of the grain directory", ErrUnsupported, t.index, t.at/SectorSize)
		}
		if err := im.r.skipTo(t.at, "grain table"); err != nil {
			return err
		}
		if err := im.r.readFull(gt, "grain table"); err != nil {
			return err
		}
		for j := range min(perGT, n-t.index*perGT) {
			im.grains[t.index*perGT+j] = le.Uint32(gt[4*j:])
		}
	}

	// Check every grain pointer before any data moves, so that a hostile
	// table fails the conversion before anything is written.
	im.ordered = true
	var last uint64
	for g, s := range im.grains {
		switch {
		case s == 0:
			continue
		case s == 1 && h.Flags&flagZeroGrain != 0:
			im.grains[g] = 0
			continue
		case uint64(s) < h.OverHead:
			return fmt.Errorf("%w: grain %d at sector %d lies inside the metadata", ErrInvalid, g, s)
		case im.size > 0 && int64(s)*SectorSize+im.grainLen(int64(g)) > im.size:
			return fmt.Errorf("%w: grain %d at sector %d lies past the end of the %d-byte image", ErrInvalid, g, s, im.size)
		}
		if last != 0 && uint64(s) < last+h.GrainSize {
			im.ordered = false
		}
		last = uint64(s)
	}
	if !im.ordered {
		if g, ok := im.overlap(); !ok {
			return fmt.Errorf("%w: grain %d overlaps another grain", ErrInvalid, g)
		}
	}
	return nil
}

// fileOrder returns the allocated grains sorted by their place in the file.
func (im *Image) fileOrder() []int {
	var idx []int
	for g, s := range im.grains {
		if s != 0 {
			idx = append(idx, g)
		}
	}
	slices.SortFunc(idx, func(a, b int) int { return cmp.Compare(im.grains[a], im.grains[b]) })
	return idx
}

// overlap checks that no two grains share file space; it returns a
// culprit and false if some do.
func (im *Image) overlap() (int, bool) {
	idx := im.fileOrder()
	for i := 1; i < len(idx); i++ {
		if uint64(im.grains[idx[i]]) < uint64(im.grains[idx[i-1]])+im.h.GrainSize {
			return idx[i], false
		}
	}
	return 0, true
}

// Convert writes the flat disk, Size bytes, to w while reading the rest of
// the image. It fails with ErrOutOfOrder, having written a prefix of the
// disk, when the grains are not in disk order (see Ordered). It may be
// called once.
func (im *Image) Convert(ctx context.Context, w io.Writer) error {
	s := &streamSink{w: w}
	if err := im.convert(ctx, s); err != nil {
		return err
	}
	return s.fill(im.Size())
}

// WriterAt is a random-access destination such as an *os.File.
type WriterAt interface {
	io.WriterAt
	Truncate(size int64) error
}

// ConvertAt writes the flat disk to w at its offsets, whatever the order of
// the grains, and truncates w to Size bytes; zero grains are not written,
// so a file gets holes. It may be called once.
func (im *Image) ConvertAt(ctx context.Context, w WriterAt) error {
	if err := w.Truncate(0); err != nil {
		return err
	}
	if err := im.convert(ctx, atSink{w}); err != nil {
		return err
	}
	return w.Truncate(im.Size())
}

// sink receives grains' data at their disk offsets.
type sink interface {
	put(p []byte, off int64) error
}

func (im *Image) convert(ctx context.Context, s sink) error {
	if im.used {
		return errors.New("vmdk: image already converted")
	}
	im.used = true
	if im.h.Format() == StreamOptimized {
		return im.convertStream(ctx, s)
	}
	return im.convertSparse(ctx, s)
}

// grainLen is the length of grain g within the capacity: the last grain
// may extend past it, and a writer need not store that part.
func (im *Image) grainLen(g int64) int64 {
	return min(im.h.grainBytes(), im.Size()-g*im.h.grainBytes())
}

func (im *Image) convertSparse(ctx context.Context, s sink) error {
	put := func(g int64) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := im.r.skipTo(int64(im.grains[g])*SectorSize, "grain"); err != nil {
			return err
		}
		p := im.buf[:im.grainLen(g)]
		if err := im.r.readFull(p, fmt.Sprintf("grain %d", g)); err != nil {
			return err
		}
		return s.put(p, g*im.h.grainBytes())
	}
	if im.ordered {
		for g, sec := range im.grains {
			if sec == 0 {
				continue
			}
			if err := put(int64(g)); err != nil {
				return err
			}
		}
		return nil
	}
	for _, g := range im.fileOrder() {
		if err := put(int64(g)); err != nil {
			return err
		}
	}
	return nil
}

// maxCompressed bounds a compressed grain: deflate's worst case is a few
// bytes per 16 KiB block over the input.
func (im *Image) maxCompressed() int64 { return im.h.grainBytes() + im.h.grainBytes()/8 + 1024 }

func (im *Image) convertStream(ctx context.Context, s sink) error {
	h := &im.h
	if err := im.r.skipTo(int64(h.OverHead)*SectorSize, "first grain"); err != nil {
		return err
	}
	le := binary.LittleEndian
	sector := make([]byte, SectorSize)
	comp := make([]byte, 0, SectorSize)
	var zr io.ReadCloser
	fr := flate.NewReader(nil)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		at := im.r.off
		if err := im.r.readFull(sector, "grain or marker"); err != nil {
			return err
		}
		val, size := le.Uint64(sector), le.Uint32(sector[8:])
		if size == 0 {
			typ := le.Uint32(sector[12:])
			switch typ {
			case markerEOS:
				return nil
			case markerGT, markerGD, markerFooter:
			default:
				return fmt.Errorf("%w: unknown marker type %d at offset %d", ErrInvalid, typ, at)
			}
			if val > uint64(im.lim.MaxMetadata)/SectorSize {
				return fmt.Errorf("%w: marker at offset %d announces %d sectors of metadata", ErrInvalid, at, val)
			}
			if typ == markerFooter {
				if err := im.readFooter(val); err != nil {
					return err
				}
				continue
			}
			if err := im.r.skip(int64(val)*SectorSize, "grain table"); err != nil {
				return err
			}
			continue
		}

		if val%h.GrainSize != 0 || val >= h.Capacity {
			return fmt.Errorf("%w: grain at offset %d addresses sector %d (grain size %d, capacity %d)", ErrInvalid, at, val, h.GrainSize, h.Capacity)
		}
		if int64(size) > im.maxCompressed() {
			return fmt.Errorf("%w: compressed grain at offset %d has %d bytes, more than a %d-byte grain can need", ErrInvalid, at, size, h.grainBytes())
		}
		total := (12 + int64(size) + SectorSize - 1) / SectorSize * SectorSize
		comp = append(comp[:0], sector[12:]...)
		comp = slices.Grow(comp, int(total))[:total-12]
		if err := im.r.readFull(comp[SectorSize-12:], fmt.Sprintf("grain at offset %d", at)); err != nil {
			return err
		}
		data := comp[:size]
		var dec io.Reader
		if isZlib(data) {
			if zr == nil {
				var err error
				if zr, err = zlib.NewReader(bytes.NewReader(data)); err != nil {
					return fmt.Errorf("%w: grain at offset %d: %w", ErrInvalid, at, err)
				}
			} else if err := zr.(zlib.Resetter).Reset(bytes.NewReader(data), nil); err != nil {
				return fmt.Errorf("%w: grain at offset %d: %w", ErrInvalid, at, err)
			}
			dec = zr
		} else {
			_ = fr.(flate.Resetter).Reset(bytes.NewReader(data), nil)
			dec = fr
		}
		n, err := inflate(dec, im.buf)
		if err != nil {
			return fmt.Errorf("%w: grain at offset %d: %w", ErrInvalid, at, err)
		}
		g := int64(val / h.GrainSize)
		want := im.grainLen(g)
		if int64(n) != want && int64(n) != h.grainBytes() {
			return fmt.Errorf("%w: grain at offset %d inflates to %d bytes, want %d", ErrInvalid, at, n, want)
		}
		if err := s.put(im.buf[:want], g*h.grainBytes()); err != nil {
			return err
		}
	}
}

// readFooter checks the footer, a copy of the header that knows where the
// grain directory ended up, against the header the conversion started
// from.
func (im *Image) readFooter(sectors uint64) error {
	if sectors != 1 {
		return fmt.Errorf("%w: footer marker announces %d sectors", ErrInvalid, sectors)
	}
	b := make([]byte, SectorSize)
	if err := im.r.readFull(b, "footer"); err != nil {
		return err
	}
	f, err := ParseHeader(b, im.lim)
	if err != nil {
		return fmt.Errorf("footer: %w", err)
	}
	if f.Capacity != im.h.Capacity || f.GrainSize != im.h.GrainSize || f.Format() != StreamOptimized {
		return fmt.Errorf("%w: footer (capacity %d, grain %d) contradicts the header (capacity %d, grain %d)",
			ErrInvalid, f.Capacity, f.GrainSize, im.h.Capacity, im.h.GrainSize)
	}
	if f.GDOffset == gdAtEnd || f.GDOffset == 0 {
		return fmt.Errorf("%w: footer does not locate the grain directory", ErrInvalid)
	}
	return nil
}

// isZlib reports whether p starts with a zlib (RFC 1950) header rather than
// raw deflate: VMware's specification says deflate, writers use zlib.
func isZlib(p []byte) bool {
	return len(p) >= 2 && p[0]&0x0f == 8 && p[0]>>4 <= 7 && (uint16(p[0])<<8|uint16(p[1]))%31 == 0
}

// inflate decompresses r into buf, failing if the data does not fit or
// is corrupt (the checksum is checked at the end of the stream).
func inflate(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
	var one [1]byte
	for {
		m, err := r.Read(one[:])
		if m > 0 {
			return n, fmt.Errorf("inflates to more than a grain (%d bytes)", len(buf))
		}
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// offsetReader reads forward and knows where it is.
type offsetReader struct {
	r   *bufio.Reader
	off int64
}

// readFull fills p; running out of bytes means the image is truncated.
func (o *offsetReader) readFull(p []byte, what string) error {
	n, err := io.ReadFull(o.r, p)
	o.off += int64(n)
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: truncated at offset %d reading %s: %w", ErrInvalid, o.off, what, io.ErrUnexpectedEOF)
	}
	if err != nil {
		return fmt.Errorf("vmdk: read %s at offset %d: %w", what, o.off, err)
	}
	return nil
}

// skip discards n bytes.
func (o *offsetReader) skip(n int64, what string) error {
	m, err := io.CopyN(io.Discard, o.r, n)
	o.off += m
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: truncated at offset %d skipping to %s: %w", ErrInvalid, o.off, what, io.ErrUnexpectedEOF)
	}
	if err != nil {
		return fmt.Errorf("vmdk: read up to %s at offset %d: %w", what, o.off, err)
	}
	return nil
}

// skipTo discards up to offset off, which must not lie behind.
func (o *offsetReader) skipTo(off int64, what string) error {
	if off < o.off {
		return fmt.Errorf("%w: %s at offset %d lies behind offset %d already read", ErrInvalid, what, off, o.off)
	}
	return o.skip(off-o.off, what)
}

// zeros is shared by every stream for the holes between grains.
var zeros = make([]byte, 256<<10)

// streamSink writes a flat disk front to back, zeros in the gaps.
type streamSink struct {
	w   io.Writer
	pos int64
}

func (s *streamSink) put(p []byte, off int64) error {
	if off < s.pos {
		return fmt.Errorf("%w: grain at disk offset %d after offset %d", ErrOutOfOrder, off, s.pos)
	}
	if err := s.fill(off); err != nil {
		return err
	}
	n, err := s.w.Write(p)
	s.pos += int64(n)
	return err
}

// fill writes zeros up to offset end.
func (s *streamSink) fill(end int64) error {
	for s.pos < end {
		n, err := s.w.Write(zeros[:min(int64(len(zeros)), end-s.pos)])
		s.pos += int64(n)
		if err != nil {
			return err
		}
	}
	return nil
}

type atSink struct{ w io.WriterAt }

func (s atSink) put(p []byte, off int64) error {
	_, err := s.w.WriteAt(p, off)
	return err
}
