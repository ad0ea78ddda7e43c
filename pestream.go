package main

// One read per signature. A PE image is read once, front to back, and
// every byte read goes at the same moment to the three things that must
// agree: the Authenticode image hash that is signed, the SHA-256 of the
// whole file that is audited, and (attached mode) the signed image being
// written. A file changed while it is being signed can then give a
// signature over bytes nobody will see, but never a signature, an audit
// row and an output that disagree. Memory stays constant: the headers are
// parsed from the bytes already read, and the rare image whose trailing
// data overlaps its sections (gaps between sections; see hashedRanges) has
// the overlapping bytes kept in a private, already unlinked temporary file
// until the hash reaches them.

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"
)

// peMaxHeaderPrefix bounds what is read ahead to parse the headers: the
// MZ header, the PE header and the section table must lie in the first
// MiB (real images use the first few KiB).
const peMaxHeaderPrefix = 1 << 20

// prefixReader is an io.ReaderAt over the start of a sequential reader:
// reading at an offset not read yet reads on up to it, and keeps it.
type prefixReader struct {
	r     io.Reader
	buf   []byte
	limit int64 // never read past this
	size  int64
}

func (p *prefixReader) ReadAt(b []byte, off int64) (int, error) {
	end := off + int64(len(b))
	if end > p.limit && p.limit < p.size {
		return 0, fmt.Errorf("PE headers extend past the first %d bytes, more than this reads ahead", peMaxHeaderPrefix)
	}
	if have := int64(len(p.buf)); end > have {
		want := min(end, p.limit)
		grown := append(p.buf, make([]byte, want-have)...)
		n, err := io.ReadFull(p.r, grown[have:])
		p.buf = grown[:have+int64(n)]
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			return 0, err
		}
	}
	if off >= int64(len(p.buf)) {
		return 0, io.EOF
	}
	n := copy(b, p.buf[off:])
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

// certWalker checks the WIN_CERTIFICATE entries of an existing certificate
// table from its bytes in order, as they stream by: the checks parsePE
// makes with random access.
type certWalker struct {
	table, size int64 // the table's file offset and size
	next        int64 // offset in the table of the next entry
	skip        int64 // bytes of the current entry's body still to pass
	hdr         [winCertHeaderSize]byte
	have        int
	entries     int
	err         error
}

func (c *certWalker) Write(b []byte) (int, error) {
	n := len(b)
	for c.err == nil && len(b) > 0 {
		if c.skip > 0 {
			k := min(c.skip, int64(len(b)))
			c.skip -= k
			b = b[k:]
			continue
		}
		if c.next >= c.size {
			break
		}
		if c.next+winCertHeaderSize > c.size {
			c.err = fmt.Errorf("certificate table: truncated entry at offset %d", c.table+c.next)
			break
		}
		k := copy(c.hdr[c.have:], b)
		c.have += k
		b = b[k:]
		if c.have < winCertHeaderSize {
			break
		}
		length := int64(binary.LittleEndian.Uint32(c.hdr[:]))
		if length <= winCertHeaderSize || c.next+length > c.size {
			c.err = fmt.Errorf("certificate table: entry at offset %d has bad length %d", c.table+c.next, length)
			break
		}
		c.entries++
		c.skip = alignUp8(c.next+length) - c.next - winCertHeaderSize
		c.next = alignUp8(c.next + length)
		c.have = 0
	}
	return n, c.err
}

// peOnePass reads a PE image once and feeds its bytes to the hashes and
// the output.
type peOnePass struct {
	pe         *peFile
	plan       []peRange // hashed ranges in stream order; size -1: replay the spill
	item       int
	image      hash.Hash // Authenticode image hash
	file       hash.Hash // SHA-256 of the whole file
	certs      *certWalker
	spill      *os.File // bytes of [spillFrom, spillTo), hashed again later
	spillFrom  int64
	spillTo    int64
	out        io.Writer
	ck         peChecksum
	imageHash  []byte
	fileSHA256 []byte
}

// readPEOnce reads the PE image of size bytes from r, once, and returns its
// parsed headers, image hash and file SHA-256. If out is not nil it
// receives the image as attached mode writes it, without the signature yet
// and with the CheckSum and certificate table entry zero: appendSignature
// then completes it.
func readPEOnce(r io.Reader, size int64, out io.Writer, buf []byte) (*peOnePass, error) {
	pr := &prefixReader{r: r, limit: min(size, peMaxHeaderPrefix), size: size}
	pe, err := parsePEHeaders(pr, size)
	if err != nil {
		return nil, err
	}
	pe.r = nil // everything else comes from the stream
	o := &peOnePass{pe: pe, image: sha256.New(), file: sha256.New(), out: out}
	if pe.certSize > 0 {
		o.certs = &certWalker{table: pe.certOffset, size: pe.certSize}
	}
	defer func() {
		if o.spill != nil {
			o.spill.Close()
		}
	}()
	if err := o.makePlan(); err != nil {
		return nil, err
	}
	buf = chunkBuffer(buf, size)
	pos := int64(len(pr.buf))
	if err := o.feed(pr.buf, 0); err != nil {
		return nil, err
	}
	for pos < size {
		n := min(int64(len(buf)), size-pos)
		got, err := io.ReadFull(r, buf[:n])
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("the file shrank while being read (%d bytes of %d)", pos+int64(got), size)
			}
			return nil, err
		}
		if err := o.feed(buf[:n], pos); err != nil {
			return nil, err
		}
		pos += n
	}
	if o.item != len(o.plan) {
		return nil, errors.New("internal error: the image hash did not cover its ranges")
	}
	if o.certs != nil {
		if o.certs.err != nil {
			return nil, o.certs.err
		}
		pe.signatures = o.certs.entries
	}
	var pad [8]byte
	o.image.Write(pad[:pe.hashPadding()])
	o.imageHash = o.image.Sum(nil)
	o.fileSHA256 = o.file.Sum(nil)
	return o, nil
}

// makePlan lists the hashed ranges in the order the stream meets them.
// Only the trailing range can start behind the stream (when there are gaps
// between the sections); its part that does is spilled and replayed.
func (o *peOnePass) makePlan() error {
	rs := o.pe.hashedRanges()
	main := 3 + len(o.pe.sections)
	for _, r := range rs[:main] {
		if r.size > 0 {
			o.plan = append(o.plan, r)
		}
	}
	mainEnd := o.pe.sizeOfHeaders
	if n := len(o.pe.sections); n > 0 {
		mainEnd = o.pe.sections[n-1].offset + o.pe.sections[n-1].size
	}
	for _, r := range rs[main:] {
		if r.offset >= mainEnd {
			o.plan = append(o.plan, r)
			continue
		}
		f, err := os.CreateTemp("", "debusine-signing-pe-")
		if err != nil {
			return fmt.Errorf("temporary file for the image hash: %w", err)
		}
		os.Remove(f.Name())
		o.spill, o.spillFrom, o.spillTo = f, r.offset, mainEnd
		o.plan = append(o.plan, peRange{size: -1})
		if end := r.offset + r.size; end > mainEnd {
			o.plan = append(o.plan, peRange{mainEnd, end - mainEnd})
		}
	}
	return nil
}

// peParallelHashSize is the smallest chunk whose two hashes are worth two
// goroutines: waking the second one costs about as much as hashing a
// quarter of a MiB on a virtual machine.
const peParallelHashSize = 1 << 20

// feed passes chunk, the file's bytes from off, to everything that needs
// them. It may change chunk (the fields zeroed in the output).
func (o *peOnePass) feed(chunk []byte, off int64) error {
	end := off + int64(len(chunk))
	// The file's SHA-256 of a large chunk runs on another core while the
	// image hash takes the same bytes, so the audit digest adds no time;
	// chunk is changed only once both are done.
	var fileHashed sync.WaitGroup
	if len(chunk) >= peParallelHashSize {
		fileHashed.Go(func() { o.file.Write(chunk) })
		defer fileHashed.Wait()
	} else {
		o.file.Write(chunk)
	}
	section := func(from, to int64) []byte {
		lo, hi := max(from, off), min(to, end)
		if lo >= hi {
			return nil
		}
		return chunk[lo-off : hi-off]
	}
	if o.certs != nil {
		o.certs.Write(section(o.pe.certOffset, o.pe.certOffset+o.pe.certSize))
	}
	if o.spill != nil {
		if _, err := o.spill.Write(section(o.spillFrom, o.spillTo)); err != nil {
			return fmt.Errorf("temporary file for the image hash: %w", err)
		}
	}
	for o.item < len(o.plan) {
		r := o.plan[o.item]
		if r.size < 0 {
			if o.spillTo > end {
				break
			}
			if _, err := o.spill.Seek(0, io.SeekStart); err != nil {
				return err
			}
			if _, err := io.Copy(writerOnly{o.image}, o.spill); err != nil {
				return fmt.Errorf("temporary file for the image hash: %w", err)
			}
			o.item++
			continue
		}
		if r.offset >= end {
			break
		}
		o.image.Write(section(r.offset, r.offset+r.size))
		if r.offset+r.size > end {
			break
		}
		o.item++
	}
	if o.out != nil {
		fileHashed.Wait()
		var zero [8]byte
		patch(chunk, off, o.pe.checksumOffset, zero[:4])
		patch(chunk, off, o.pe.certDirOffset, zero[:])
		if _, err := o.out.Write(chunk); err != nil {
			return err
		}
		o.ck.Write(chunk)
	}
	return nil
}

// peFieldPatch is bytes to write at an offset of the output once the rest
// is written.
type peFieldPatch struct {
	offset int64
	data   []byte
}

// appendSignature completes the attached output written by readPEOnce
// (every byte of the input so far): it appends pkcs7 as a new
// WIN_CERTIFICATE at the end of the certificate table (creating the table
// for an unsigned image) and returns the certificate table entry and the
// CheckSum to write over the zeros left for them. The layout is sbsign's:
// entries start on 8-byte boundaries, dwLength counts the entry without
// its padding, and the directory size covers the padding.
func (o *peOnePass) appendSignature(w io.Writer, pkcs7 []byte) ([]peFieldPatch, error) {
	p := o.pe
	tableOffset := alignUp8(p.imageEnd())
	entryLen := int64(winCertHeaderSize + len(pkcs7))
	if entryLen > 1<<31 {
		return nil, errors.New("signature too large")
	}
	newSize := alignUp8(p.certSize) + alignUp8(entryLen)
	if tableOffset+newSize > 1<<32-1 {
		return nil, errors.New("signed image would exceed 4 GiB, the limit of the certificate table entry")
	}
	out := io.MultiWriter(w, &o.ck)
	var pad [8]byte
	var hdr [winCertHeaderSize]byte
	binary.LittleEndian.PutUint32(hdr[0:], uint32(entryLen))
	binary.LittleEndian.PutUint16(hdr[4:], winCertRevision2)
	binary.LittleEndian.PutUint16(hdr[6:], winCertTypePKCS7)
	// The input ends where the old table ends, or the image does: both
	// are padded to 8 bytes, then the new entry follows.
	for _, b := range [][]byte{pad[:alignUp8(p.size)-p.size], hdr[:], pkcs7, pad[:alignUp8(entryLen)-entryLen]} {
		if _, err := out.Write(b); err != nil {
			return nil, err
		}
	}
	dir := make([]byte, 8)
	binary.LittleEndian.PutUint32(dir[0:], uint32(tableOffset))
	binary.LittleEndian.PutUint32(dir[4:], uint32(newSize))
	o.ck.addAt(p.certDirOffset, dir)
	ck := make([]byte, 4)
	binary.LittleEndian.PutUint32(ck, o.ck.Sum32())
	return []peFieldPatch{{p.certDirOffset, dir}, {p.checksumOffset, ck}}, nil
}
