// Package vmdktest makes VMDK images for tests: with qemu-img, and in the
// layouts qemu-img does not write (VMware's streamOptimized with the grain
// directory at the end, grains out of disk order). It encodes the format on
// its own, independently of package vmdk, so each checks the other.
package vmdktest

import (
	"bytes"
	"compress/flate"
	"compress/zlib"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

const sector = 512

// Header flags and marker types of the format.
const (
	flagNewlineTest = 1 << 0
	flagRedundantGD = 1 << 1
	flagCompressed  = 1 << 16
	flagMarkers     = 1 << 17

	markerEOS    = 0
	markerGT     = 1
	markerGD     = 2
	markerFooter = 3

	gdAtEnd = ^uint64(0)
)

// Raw returns disk content of size bytes (a multiple of 512) that
// exercises a converter: random data at both ends, a run of text crossing
// grain boundaries, zero grains in between and a grain that is zero except
// for its last byte.
func Raw(size int) []byte {
	rng := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, size)
	for i := range min(5000, size) {
		b[i] = byte(rng.Uint32())
	}
	if size > 300<<10 {
		copy(b[200<<10-100:], bytes.Repeat([]byte("vcagent "), 12<<10))
		b[size/2+64<<10-1] = 0xff
	}
	for i := size - 512; i < size; i++ {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// Qemu converts raw with qemu-img into the given VMDK subformat
// ("monolithicSparse", "streamOptimized"). The test is skipped without
// qemu-img (Debian's qemu-utils, which integration/test.sh installs).
func Qemu(t testing.TB, raw []byte, subformat string) []byte {
	t.Helper()
	in := filepath.Join(t.TempDir(), "raw")
	if err := os.WriteFile(in, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	img, err := os.ReadFile(QemuFile(t, in, subformat))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// QemuFile converts the raw disk file in with qemu-img and returns the
// path of the VMDK, in a temporary folder of the test.
func QemuFile(t testing.TB, in, subformat string) string {
	t.Helper()
	qemu, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Fatal("qemu-img not installed: apt-get install qemu-utils (integration/test.sh does)")
	}
	out := filepath.Join(t.TempDir(), subformat+".vmdk")
	if b, err := exec.Command(qemu, "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat="+subformat, in, out).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, b)
	}
	return out
}

// header is a sparse extent header.
type header struct {
	version, flags                            uint32
	capacity, grainSize, descOffset, descSize uint64
	perGT                                     uint32
	rgdOffset, gdOffset, overHead             uint64
	compress                                  uint16
}

func (h header) encode() []byte {
	b := make([]byte, sector)
	le := binary.LittleEndian
	copy(b, "KDMV")
	le.PutUint32(b[4:], h.version)
	le.PutUint32(b[8:], h.flags)
	le.PutUint64(b[12:], h.capacity)
	le.PutUint64(b[20:], h.grainSize)
	le.PutUint64(b[28:], h.descOffset)
	le.PutUint64(b[36:], h.descSize)
	le.PutUint32(b[44:], h.perGT)
	le.PutUint64(b[48:], h.rgdOffset)
	le.PutUint64(b[56:], h.gdOffset)
	le.PutUint64(b[64:], h.overHead)
	copy(b[73:], "\n \r\n")
	le.PutUint16(b[77:], h.compress)
	return b
}

func sectors(n int) int { return (n + sector - 1) / sector }

// NonZeroGrains lists the grains of raw holding data.
func NonZeroGrains(raw []byte, grain int) []int {
	var gs []int
	for g := 0; g*grain < len(raw); g++ {
		if slices.ContainsFunc(raw[g*grain:min(len(raw), (g+1)*grain)], func(c byte) bool { return c != 0 }) {
			gs = append(gs, g)
		}
	}
	return gs
}

// Sparse writes raw as a monolithicSparse image of a layout qemu-img does
// not produce: the primary grain directory before the redundant one, and
// with reverse the grains in reverse disk order.
func Sparse(raw []byte, grainSectors, perGT int, reverse bool) []byte {
	grain := grainSectors * sector
	nGrains := (len(raw) + grain - 1) / grain
	nGTs := (nGrains + perGT - 1) / perGT
	gdSectors, gtSectors := sectors(nGTs*4), sectors(perGT*4)
	gd := 2 // after the header and the descriptor
	rgd := gd + gdSectors + nGTs*gtSectors
	over := rgd + gdSectors + nGTs*gtSectors
	over = (over + grainSectors - 1) / grainSectors * grainSectors
	h := header{version: 1, flags: flagNewlineTest | flagRedundantGD, capacity: uint64(len(raw) / sector), grainSize: uint64(grainSectors),
		descOffset: 1, descSize: 1, perGT: uint32(perGT), rgdOffset: uint64(rgd), gdOffset: uint64(gd), overHead: uint64(over)}
	gs := NonZeroGrains(raw, grain)
	order := slices.Clone(gs)
	if reverse {
		slices.Reverse(order)
	}
	img := make([]byte, over*sector+len(gs)*grain)
	copy(img, h.encode())
	copy(img[sector:], "# Disk DescriptorFile\ncreateType=\"monolithicSparse\"\n")
	le := binary.LittleEndian
	for _, dir := range []int{gd, rgd} {
		for t := range nGTs {
			le.PutUint32(img[dir*sector+4*t:], uint32(dir+gdSectors+t*gtSectors))
		}
	}
	for i, g := range order {
		at := over + i*grainSectors
		copy(img[at*sector:], raw[g*grain:min(len(raw), (g+1)*grain)])
		for _, dir := range []int{gd, rgd} {
			le.PutUint32(img[(dir+gdSectors+g/perGT*gtSectors)*sector+4*(g%perGT):], uint32(at))
		}
	}
	return img
}

// Stream writes raw as a streamOptimized image the way VMware's exporters
// do, unlike qemu-img: the grain directory at the end (GD_AT_END in the
// header, its place in the footer), a grain table marker after each
// table's grains. With reverse the tables go in reverse disk order; with
// rawDeflate the grains are raw deflate instead of zlib.
func Stream(raw []byte, grainSectors int, reverse, rawDeflate bool) []byte {
	const perGT = 512
	grain := grainSectors * sector
	nGrains := (len(raw) + grain - 1) / grain
	nGTs := (nGrains + perGT - 1) / perGT
	h := header{version: 3, flags: flagNewlineTest | flagCompressed | flagMarkers, capacity: uint64(len(raw) / sector), grainSize: uint64(grainSectors),
		descOffset: 1, descSize: 1, perGT: perGT, gdOffset: gdAtEnd, overHead: 2, compress: 1}
	var img bytes.Buffer
	img.Write(h.encode())
	desc := make([]byte, sector)
	copy(desc, "# Disk DescriptorFile\ncreateType=\"streamOptimized\"\n")
	img.Write(desc)
	pad := func() { img.Write(make([]byte, (sector-img.Len()%sector)%sector)) }
	le := binary.LittleEndian
	marker := func(val uint64, typ uint32) {
		m := make([]byte, sector)
		le.PutUint64(m, val)
		le.PutUint32(m[12:], typ)
		img.Write(m)
	}
	gd := make([]byte, sectors(nGTs*4)*sector)
	tables := make([]int, nGTs)
	for t := range tables {
		tables[t] = t
	}
	if reverse {
		slices.Reverse(tables)
	}
	for _, t := range tables {
		gt := make([]byte, perGT*4)
		for i := range perGT {
			g := t*perGT + i
			if g >= nGrains {
				break
			}
			data := raw[g*grain : min(len(raw), (g+1)*grain)]
			if !slices.ContainsFunc(data, func(c byte) bool { return c != 0 }) {
				continue
			}
			var c bytes.Buffer
			var w io.WriteCloser
			if rawDeflate {
				w, _ = flate.NewWriter(&c, flate.BestSpeed)
			} else {
				w = zlib.NewWriter(&c)
			}
			_, _ = w.Write(data)
			_ = w.Close()
			le.PutUint32(gt[4*i:], uint32(img.Len()/sector))
			var gh [12]byte
			le.PutUint64(gh[:], uint64(g*grainSectors))
			le.PutUint32(gh[8:], uint32(c.Len()))
			img.Write(gh[:])
			img.Write(c.Bytes())
			pad()
		}
		marker(uint64(sectors(len(gt))), markerGT)
		le.PutUint32(gd[4*t:], uint32(img.Len()/sector))
		img.Write(gt)
	}
	marker(uint64(len(gd)/sector), markerGD)
	h.gdOffset = uint64(img.Len() / sector)
	img.Write(gd)
	marker(1, markerFooter)
	img.Write(h.encode())
	marker(0, markerEOS)
	return img.Bytes()
}
