package main

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// OpenPGP signing reads its input once, in fixed-size chunks: each chunk is
// hashed for the signature (SHA-512, of the bytes as they are for a detached
// signature, of their canonical text form for a cleartext one) and for the
// audit (SHA-256 of the bytes as read), and for a cleartext signature also
// written out dash-escaped. The audit row and the signature therefore cover
// the same bytes even if the file changes while it is read, and memory does
// not grow with the input. A chunk is large enough for its two hashes to
// run on two cores: on a virtual machine, waking the second one for
// each of many small chunks costs more than it saves.
const pgpChunkSize = 1 << 20

// maxTrailingSpace bounds a run of spaces, tabs and carriage returns held
// while clear-signing. Whether such a run is signed depends on what follows
// it (trailing whitespace is not part of the canonical text), so the part of
// it read before the chunk where the line goes on or ends is held; more than
// this is refused rather than held. Runs up to this size always pass.
const maxTrailingSpace = 1 << 20

// signOpenPGPStream signs everything r yields with every entity, as
// signOpenPGP describes, writing the output to w, and returns the SHA-256 of
// the bytes read.
func signOpenPGPStream(entities []*openpgp.Entity, r io.Reader, w io.Writer, mode string, now time.Time) ([32]byte, error) {
	var sum [32]byte
	if len(entities) == 0 {
		return sum, errors.New("no signing key given")
	}
	if mode != openpgpModeDetached && mode != openpgpModeClear {
		return sum, fmt.Errorf("unknown OpenPGP signing mode %q (want %s or %s)", mode, openpgpModeDetached, openpgpModeClear)
	}
	cfg := openpgpConfig(now)
	signers := make([]*packet.PrivateKey, len(entities))
	for i, e := range entities {
		if err := checkOpenPGPSigner(e, now); err != nil {
			return sum, err
		}
		k, _ := e.SigningKey(now)
		signers[i] = k.PrivateKey
	}
	out := bufio.NewWriterSize(w, 64<<10)
	digest := sha512.New()
	sigType := packet.SigTypeBinary
	process := func(chunk []byte) error {
		digest.Write(chunk)
		return nil
	}
	var text *canonicalText
	if mode == openpgpModeClear {
		sigType = packet.SigTypeText
		// The layout of go-crypto's clearsign and of gpg --clearsign.
		out.WriteString("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n")
		text = &canonicalText{out: out, digest: digest, atLineStart: true}
		process = text.write
	}
	sum, err := readChunks(r, process)
	if err != nil {
		return sum, err
	}
	if text != nil {
		// The line break that ends the text belongs to the armour, not to
		// the signed text (RFC 4880 §7.1): the input's final one is
		// dropped (text.write holds every line break back until more text
		// follows) and the armour's is written here. The output then has
		// the layout gpg --clearsign writes, and a verifier's extracted
		// text equals the input.
		out.WriteByte('\n')
	}
	// Every signature packet goes in one armour block, which gets the
	// CRC-24 line: GnuPG 2.2 (gpgv, and so dscverify and apt in Debian 12)
	// misreads an armour that has neither that line nor base64 padding.
	armoured, err := armor.Encode(out, openpgp.SignatureType, nil)
	if err != nil {
		return sum, err
	}
	for i, k := range signers {
		sig := &packet.Signature{
			Version:           k.Version,
			SigType:           sigType,
			PubKeyAlgo:        k.PubKeyAlgo,
			Hash:              crypto.SHA512,
			CreationTime:      cfg.Now(),
			IssuerKeyId:       &k.KeyId,
			IssuerKeyVersion:  uint8(k.Version),
			IssuerFingerprint: k.Fingerprint,
			SigLifetimeSecs:   new(uint32),
		}
		// Each signature appends its own trailer to the digest, so each
		// gets a copy of the digest of the data.
		h, err := digest.(hash.Cloner).Clone()
		if err != nil {
			return sum, err
		}
		if err := sig.Sign(h, k, cfg); err != nil {
			return sum, fmt.Errorf("signing with key %s: %w", openpgpFingerprint(entities[i]), err)
		}
		if err := sig.Serialize(armoured); err != nil {
			return sum, err
		}
	}
	if err := armoured.Close(); err != nil {
		return sum, err
	}
	// gpg ends armour with a line break; go-crypto's stops after the dashes.
	out.WriteByte('\n')
	return sum, out.Flush()
}

// readChunks reads r to its end, passing each chunk to process, and
// returns the SHA-256 of all of it. For large inputs the SHA-256 of a chunk
// runs on another core while process handles the same chunk, so the audit
// digest adds no time to the signature's.
func readChunks(r io.Reader, process func([]byte) error) ([32]byte, error) {
	var sum [32]byte
	audit := sha256.New()
	buf := make([]byte, pgpChunkSize)
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			chunk := buf[:n]
			var wg sync.WaitGroup
			if n == len(buf) {
				wg.Go(func() { audit.Write(chunk) })
			} else {
				audit.Write(chunk)
			}
			perr := process(chunk)
			wg.Wait()
			if perr != nil {
				return sum, perr
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return sum, err
		}
	}
	audit.Sum(sum[:0])
	return sum, nil
}

// canonicalText turns text into a cleartext-signed body as it streams past,
// byte for byte as go-crypto's clearsign does it: lines starting with '-'
// are dash-escaped in the output; the digest gets each line without its
// trailing spaces, tabs and carriage returns, lines joined by CRLF; trailing
// whitespace is dropped from the output too.
type canonicalText struct {
	out    *bufio.Writer
	digest hash.Hash

	atLineStart bool   // the next byte starts a line
	lineBreak   bool   // a line break was read and is not yet written
	space       []byte // whitespace read since the last other byte of the line
}

func isTextSpace(b byte) bool { return b == ' ' || b == '\t' || b == '\r' }

var crlf = []byte("\r\n")

func (c *canonicalText) write(p []byte) error {
	for len(p) > 0 {
		if c.lineBreak {
			// More text follows, so the held line break is not the final
			// one: it ends a line of the signed text.
			c.out.WriteByte('\n')
			c.digest.Write(crlf)
			c.lineBreak = false
		}
		if c.atLineStart && p[0] == '-' {
			c.out.WriteString("- ")
		}
		c.atLineStart = false
		line := p
		nl := bytes.IndexByte(p, '\n')
		if nl >= 0 {
			line = p[:nl]
		}
		last := len(line) - 1
		for last >= 0 && isTextSpace(line[last]) {
			last--
		}
		if last >= 0 {
			// Whitespace held so far is followed by text: it is signed.
			if len(c.space) > 0 {
				c.digest.Write(c.space)
				c.out.Write(c.space)
				c.space = c.space[:0]
			}
			c.digest.Write(line[:last+1])
			c.out.Write(line[:last+1])
		}
		if len(c.space)+len(line)-(last+1) > maxTrailingSpace {
			return fmt.Errorf("clear-signing: a line holds more than %d bytes of consecutive whitespace (sign it detached)", maxTrailingSpace)
		}
		c.space = append(c.space, line[last+1:]...)
		if nl < 0 {
			return nil
		}
		c.space = c.space[:0]
		c.lineBreak = true
		c.atLineStart = true
		p = p[nl+1:]
	}
	return nil
}
