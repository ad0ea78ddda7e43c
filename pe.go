package main

// PE/COFF parsing for Authenticode: just enough of the format to compute the
// image hash, to find an existing certificate table, and to write a copy of
// the image with a signature appended to that table. Everything streams from
// an io.ReaderAt through one reused buffer, so memory does not grow with the
// size of the image.

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

const (
	peMagic32     = 0x10b
	peMagic32Plus = 0x20b

	// Offsets inside the optional header.
	peOptSizeOfHeaders = 60
	peOptCheckSum      = 64

	peCoffHeaderSize   = 20
	peSectionEntrySize = 40
	peCertDirIndex     = 4 // IMAGE_DIRECTORY_ENTRY_SECURITY

	winCertRevision2     = 0x0200
	winCertTypePKCS7     = 0x0002
	winCertHeaderSize    = 8
	peCopyBufferSize     = 2 << 20 // a chunk of a large file, big enough to share between two cores (pestream.go)
	peMaxSections        = 96      // the Windows loader's limit; real EFI images have a handful
	peCertTableAlignment = 8
)

// peSection is the file extent of one section's raw data.
type peSection struct {
	offset, size int64
}

// peFile is a parsed PE image: the offsets Authenticode needs, all checked
// against the file size so that the hashing and copying code can trust them.
type peFile struct {
	r    io.ReaderAt
	size int64

	checksumOffset int64 // file offset of the 4-byte CheckSum
	certDirOffset  int64 // file offset of the 8-byte certificate table directory entry
	sizeOfHeaders  int64
	sections       []peSection // SizeOfRawData > 0 only, sorted by file offset

	// certOffset and certSize describe an existing certificate table
	// (certSize 0: unsigned). When present it ends exactly at the end of the
	// file, so the image proper is [0, certOffset).
	certOffset, certSize int64
	signatures           int // WIN_CERTIFICATE entries in the existing table
}

// imageEnd is where the image proper ends: the start of the certificate
// table, or the end of the file.
func (p *peFile) imageEnd() int64 {
	if p.certSize > 0 {
		return p.certOffset
	}
	return p.size
}

// hashPadding is the number of zero bytes Authenticode hashes after the
// image: signers pad an unsigned image to a multiple of 8 before appending
// the certificate table, and those zeros are covered by the hash.
func (p *peFile) hashPadding() int64 {
	return alignUp8(p.imageEnd()) - p.imageEnd()
}

func alignUp8(n int64) int64 { return (n + 7) &^ 7 }

// readAt reads exactly len(b) bytes at off, turning a short file into a
// message about what was being read.
func readAt(r io.ReaderAt, b []byte, off int64, what string) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return fmt.Errorf("truncated %s at offset %d", what, off)
	}
	return fmt.Errorf("reading %s: %w", what, err)
}

// parsePE checks the structure of a PE image of the given size, including
// the entries of an existing certificate table. Errors say what is wrong
// but not which file; callers add the file name.
func parsePE(r io.ReaderAt, size int64) (*peFile, error) {
	p, err := parsePEHeaders(r, size)
	if err != nil {
		return nil, err
	}
	if p.certSize > 0 {
		c := &certWalker{table: p.certOffset, size: p.certSize}
		if err := copyRange(c, r, p.certOffset, p.certSize, make([]byte, 4096)); err != nil {
			return nil, err
		}
		p.signatures = c.entries
	}
	return p, nil
}

// parsePEHeaders is parsePE up to the certificate table's bounds: it reads
// only the headers and the section table, at the start of the file.
func parsePEHeaders(r io.ReaderAt, size int64) (*peFile, error) {
	var dos [64]byte
	if size < int64(len(dos)) {
		return nil, errors.New("not a PE image: too short for an MZ header")
	}
	if err := readAt(r, dos[:], 0, "MZ header"); err != nil {
		return nil, err
	}
	if dos[0] != 'M' || dos[1] != 'Z' {
		return nil, errors.New("not a PE image: no MZ signature")
	}
	e := int64(binary.LittleEndian.Uint32(dos[0x3c:]))

	// PE signature, COFF header and the optional header up to the end of
	// the certificate table entry (offset 152 in PE32+, the larger).
	var hdr [4 + peCoffHeaderSize + 152]byte
	if e >= size {
		return nil, fmt.Errorf("not a PE image: PE header offset %d is past the end of the file", e)
	}
	if e+int64(len(hdr)) > size {
		return nil, fmt.Errorf("truncated PE header at offset %d (the file has %d bytes)", e, size)
	}
	if err := readAt(r, hdr[:], e, "PE header"); err != nil {
		return nil, err
	}
	if string(hdr[:4]) != "PE\x00\x00" {
		return nil, errors.New("not a PE image: no PE signature")
	}
	coff := hdr[4:]
	numSections := int64(binary.LittleEndian.Uint16(coff[2:]))
	sizeOfOpt := int64(binary.LittleEndian.Uint16(coff[16:]))
	opt := hdr[4+peCoffHeaderSize:]
	optOffset := e + 4 + peCoffHeaderSize

	var numDirsAt, dirsAt int64
	switch magic := binary.LittleEndian.Uint16(opt); magic {
	case peMagic32:
		numDirsAt, dirsAt = 92, 96
	case peMagic32Plus:
		numDirsAt, dirsAt = 108, 112
	default:
		return nil, fmt.Errorf("unknown optional header magic %#x", magic)
	}
	numDirs := int64(binary.LittleEndian.Uint32(opt[numDirsAt:]))
	if numDirs <= peCertDirIndex {
		return nil, fmt.Errorf("optional header has %d data directories, no certificate table entry", numDirs)
	}
	certDirAt := dirsAt + peCertDirIndex*8
	if sizeOfOpt < certDirAt+8 {
		return nil, fmt.Errorf("optional header size %d too small for the certificate table entry", sizeOfOpt)
	}

	p := &peFile{
		r:              r,
		size:           size,
		checksumOffset: optOffset + peOptCheckSum,
		certDirOffset:  optOffset + certDirAt,
		sizeOfHeaders:  int64(binary.LittleEndian.Uint32(opt[peOptSizeOfHeaders:])),
	}
	sectionTable := optOffset + sizeOfOpt
	sectionTableEnd := sectionTable + numSections*peSectionEntrySize
	if numSections > peMaxSections {
		return nil, fmt.Errorf("%d sections (at most %d supported)", numSections, peMaxSections)
	}
	if sectionTableEnd > size {
		return nil, fmt.Errorf("section table (%d sections at offset %d) past the end of the file", numSections, sectionTable)
	}
	if p.sizeOfHeaders > size {
		return nil, fmt.Errorf("SizeOfHeaders %d is past the end of the file (%d bytes)", p.sizeOfHeaders, size)
	}
	if sectionTableEnd > p.sizeOfHeaders {
		return nil, fmt.Errorf("section table ends at %d, after SizeOfHeaders %d", sectionTableEnd, p.sizeOfHeaders)
	}

	dir := opt[certDirAt : certDirAt+8]
	p.certOffset = int64(binary.LittleEndian.Uint32(dir))
	p.certSize = int64(binary.LittleEndian.Uint32(dir[4:]))
	if p.certSize > 0 {
		if err := p.checkCertTableBounds(); err != nil {
			return nil, err
		}
	}

	table := make([]byte, numSections*peSectionEntrySize)
	if err := readAt(r, table, sectionTable, "section table"); err != nil {
		return nil, err
	}
	for i := range numSections {
		s := table[i*peSectionEntrySize:]
		sec := peSection{
			size:   int64(binary.LittleEndian.Uint32(s[16:])),
			offset: int64(binary.LittleEndian.Uint32(s[20:])),
		}
		if sec.size == 0 {
			continue
		}
		name := sectionName(s[:8])
		if sec.offset < p.sizeOfHeaders {
			return nil, fmt.Errorf("section %s at offset %d overlaps the headers (SizeOfHeaders %d)", name, sec.offset, p.sizeOfHeaders)
		}
		if sec.offset+sec.size > p.imageEnd() {
			return nil, fmt.Errorf("section %s (offset %d, size %d) past the end of the image (%d bytes)", name, sec.offset, sec.size, p.imageEnd())
		}
		p.sections = append(p.sections, sec)
	}
	slices.SortFunc(p.sections, func(a, b peSection) int { return cmp.Compare(a.offset, b.offset) })
	for i := 1; i < len(p.sections); i++ {
		prev, cur := p.sections[i-1], p.sections[i]
		if prev.offset+prev.size > cur.offset {
			return nil, fmt.Errorf("sections overlap: [%d, %d) and [%d, %d)", prev.offset, prev.offset+prev.size, cur.offset, cur.offset+cur.size)
		}
	}
	return p, nil
}

func sectionName(b []byte) string {
	n := 0
	for n < len(b) && b[n] != 0 {
		n++
	}
	return fmt.Sprintf("%q", b[:n])
}

// checkCertTableBounds checks where an existing certificate table lies:
// it must be the last thing in the file, 8-byte aligned, after the
// headers. Bytes after the table would not be covered by any signature
// (MS13-098), so they are refused. Its entries are checked by certWalker.
func (p *peFile) checkCertTableBounds() error {
	end := p.certOffset + p.certSize
	switch {
	case end < p.size:
		return fmt.Errorf("certificate table [%d, %d) is not at the end of the file (%d bytes): %d bytes follow it", p.certOffset, end, p.size, p.size-end)
	case end > p.size:
		return fmt.Errorf("certificate table [%d, %d) past the end of the file (%d bytes)", p.certOffset, end, p.size)
	case p.certOffset < p.sizeOfHeaders:
		return fmt.Errorf("certificate table at offset %d overlaps the headers", p.certOffset)
	case p.certOffset%peCertTableAlignment != 0:
		return fmt.Errorf("certificate table offset %d is not 8-byte aligned", p.certOffset)
	}
	return nil
}

// peRange is a byte range of the input file.
type peRange struct{ offset, size int64 }

// hashedRanges lists, in hashing order, the file ranges covered by the
// Authenticode image hash (Microsoft's Authenticode PE specification,
// steps 3-14): the headers without the checksum and the certificate table
// entry, the sections sorted by file offset, then whatever follows the
// sections, up to the certificate table. Counting the trailing data from
// SizeOfHeaders plus the section sizes (rather than from the end of the last
// section) is what the specification, sbsign, EDK2 and shim do; it differs
// from osslsigncode's linear hash only when there are gaps between sections.
func (p *peFile) hashedRanges() []peRange {
	rs := []peRange{
		{0, p.checksumOffset},
		{p.checksumOffset + 4, p.certDirOffset - p.checksumOffset - 4},
		{p.certDirOffset + 8, p.sizeOfHeaders - p.certDirOffset - 8},
	}
	sum := p.sizeOfHeaders
	for _, s := range p.sections {
		rs = append(rs, peRange(s))
		sum += s.size
	}
	if end := p.imageEnd(); sum < end {
		rs = append(rs, peRange{sum, end - sum})
	}
	return rs
}

// copyRange copies [off, off+n) of r to w through buf.
func copyRange(w io.Writer, r io.ReaderAt, off, n int64, buf []byte) error {
	_, err := io.CopyBuffer(writerOnly{w}, io.NewSectionReader(r, off, n), buf)
	return err
}

// A file under peSmallFile bytes is read peSmallChunk bytes at a time and
// hashed on one core. Most inputs are that small (EFI binaries, modules),
// most calls sign one of them, and there what costs is not hashing but
// touching memory: every page of a fresh buffer is a page fault, and
// handing a chunk to a second core wakes a sleeping thread. The large
// buffer's unused pages are never touched, so they cost nothing.
const (
	peSmallFile  = 8 << 20
	peSmallChunk = 64 << 10
)

// chunkBuffer returns the part of buf to read a file of size bytes through.
func chunkBuffer(buf []byte, size int64) []byte {
	if size < peSmallFile {
		return buf[:min(len(buf), peSmallChunk)]
	}
	return buf
}

// writerOnly hides any ReaderFrom of the destination so that io.CopyBuffer
// really uses the caller's buffer instead of allocating its own.
type writerOnly struct{ io.Writer }

// peChecksum computes the PE optional-header CheckSum: the 16-bit
// one's-complement sum of the file (with the CheckSum field read as zero)
// plus the file length. Summing 32-bit little-endian words into a 64-bit
// accumulator and folding at the end gives the same value as adding 16-bit
// words with end-around carry, because 2^16 ≡ 1 (mod 2^16 - 1).
type peChecksum struct {
	sum     uint64
	n       int64
	pending [4]byte
	npend   int
}

func (c *peChecksum) Write(b []byte) (int, error) {
	total := len(b)
	c.n += int64(total)
	for c.npend > 0 && len(b) > 0 {
		c.pending[c.npend] = b[0]
		c.npend++
		b = b[1:]
		if c.npend == 4 {
			c.sum += uint64(binary.LittleEndian.Uint32(c.pending[:]))
			c.npend = 0
		}
	}
	if len(b) == 0 {
		return total, nil
	}
	for len(b) >= 4 {
		c.sum += uint64(binary.LittleEndian.Uint32(b))
		b = b[4:]
	}
	c.npend = copy(c.pending[:], b)
	return total, nil
}

// addAt adds to the sum the bytes b as if they had been written at offset
// off (where zeros were written): the sum is linear in the file's bytes.
func (c *peChecksum) addAt(off int64, b []byte) {
	for i, v := range b {
		c.sum += uint64(v) << (8 * ((off + int64(i)) % 4))
	}
}

func (c *peChecksum) Sum32() uint32 {
	s := c.sum
	if c.npend > 0 {
		var last [4]byte
		copy(last[:], c.pending[:c.npend])
		s += uint64(binary.LittleEndian.Uint32(last[:]))
	}
	for s > 0xffff {
		s = (s & 0xffff) + (s >> 16)
	}
	return uint32(s) + uint32(c.n)
}

// patch overwrites the part of chunk (which holds file bytes from chunkOff)
// that overlaps the field at fieldOff.
func patch(chunk []byte, chunkOff, fieldOff int64, field []byte) {
	for i, b := range field {
		if at := fieldOff + int64(i) - chunkOff; at >= 0 && at < int64(len(chunk)) {
			chunk[at] = b
		}
	}
}
