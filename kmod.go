package main

// Linux kernel module signatures, as the kernel's scripts/sign-file makes
// them with OpenSSL's CMS and no options: a PKCS#7 SignedData over the
// whole module with SHA-256, the signer named by the certificate's issuer
// and serial number, no signed attributes, no certificates, the content
// detached. With RSA PKCS#1 v1.5 the signature is deterministic, so the
// bytes are the ones `sign-file` writes with the same key.
//
// Detached, the signature is what `sign-file -d` writes (MODULE.p7s) and
// what a template's `linux-module` entry expects as MODULE.sig; attached,
// it is appended to the module followed by struct module_signature
// (include/linux/module_signature.h: algo, hash, id_type = PKEY_ID_PKCS7,
// signer_len, key_id_len, three bytes of padding, sig_len big-endian; only
// id_type and sig_len are non-zero) and the marker
// "~Module signature appended~\n".
//
// The kernel checks only the last signature appended, over everything
// before it. An already-signed module is therefore refused: signing it
// again would sign the old signature along with the module. With replace,
// the old signature is dropped and the module proper is signed.

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

const (
	kmodMarker     = "~Module signature appended~\n"
	kmodInfoSize   = 12 // struct module_signature
	kmodIDPKCS7    = 2  // PKEY_ID_PKCS7, the only id_type the kernel accepts
	kmodTypeModule = "linux-module"
	kmodTypeEFI    = "efi"
	kmodSuffix     = ".ko"
	elfTypeRel     = 1 // ET_REL: modules are relocatable objects
	elf32HdrSize   = 52
	elf64HdrSize   = 64
	kmodTailBytes  = kmodInfoSize + len(kmodMarker)
)

var (
	oidData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}

	errKmodSigned = errors.New("the module is already signed")
)

// kmodFile is a parsed module: its size, and where the module proper ends
// (before an appended signature, if any).
type kmodFile struct {
	size    int64
	content int64
}

func (m *kmodFile) signed() bool { return m.content < m.size }

// parseKmod checks that the size bytes of r are an ELF relocatable object,
// possibly followed by a module signature whose trailer it checks as the
// kernel's mod_check_sig does. Errors do not name the file; callers do.
func parseKmod(r io.ReaderAt, size int64) (*kmodFile, error) {
	m := &kmodFile{size: size, content: size}
	var tail [kmodTailBytes]byte
	if size >= int64(len(kmodMarker)) {
		marker := tail[kmodInfoSize:]
		if err := readAt(r, marker, size-int64(len(marker)), "module end"); err != nil {
			return nil, err
		}
		if string(marker) == kmodMarker {
			if size < int64(len(tail)) {
				return nil, errors.New("truncated module signature: the marker without its module_signature trailer")
			}
			if err := readAt(r, tail[:kmodInfoSize], size-int64(len(tail)), "module_signature trailer"); err != nil {
				return nil, err
			}
			sigLen, err := parseKmodInfo(tail[:kmodInfoSize])
			if err != nil {
				return nil, err
			}
			if before := size - int64(len(tail)); sigLen >= before {
				return nil, fmt.Errorf("truncated module signature: the trailer claims %d bytes of signature, the file has %d before it", sigLen, before)
			}
			m.content = size - int64(len(tail)) - sigLen
		}
	}
	if err := checkELFRelocatable(r, m.content); err != nil {
		return nil, err
	}
	return m, nil
}

// parseKmodInfo checks a struct module_signature and returns sig_len.
func parseKmodInfo(info []byte) (int64, error) {
	if info[2] != kmodIDPKCS7 {
		return 0, fmt.Errorf("module signature of type %d, not PKCS#7 (%d), the only type the kernel accepts", info[2], kmodIDPKCS7)
	}
	for i, v := range info[:8] {
		if v != 0 && i != 2 {
			return 0, errors.New("module signature trailer with non-zero algo, hash, signer, key id or padding fields, which the kernel refuses")
		}
	}
	sigLen := int64(binary.BigEndian.Uint32(info[8:]))
	if sigLen == 0 {
		return 0, errors.New("module signature trailer with an empty signature")
	}
	return sigLen, nil
}

// checkELFRelocatable checks the ELF header of the n bytes of a module.
func checkELFRelocatable(r io.ReaderAt, n int64) error {
	var h [elf64HdrSize]byte
	if n < elf32HdrSize {
		return errors.New("not a kernel module: too short for an ELF header")
	}
	hdr := h[:min(n, elf64HdrSize)]
	if err := readAt(r, hdr, 0, "ELF header"); err != nil {
		return err
	}
	if string(hdr[:4]) != "\x7fELF" {
		return errors.New("not a kernel module: no ELF signature")
	}
	var order binary.ByteOrder
	switch hdr[5] {
	case 1:
		order = binary.LittleEndian
	case 2:
		order = binary.BigEndian
	default:
		return fmt.Errorf("not a kernel module: unknown ELF data encoding %d", hdr[5])
	}
	switch {
	case hdr[4] != 1 && hdr[4] != 2:
		return fmt.Errorf("not a kernel module: unknown ELF class %d", hdr[4])
	case hdr[4] == 2 && n < elf64HdrSize:
		return errors.New("not a kernel module: too short for an ELF64 header")
	case hdr[6] != 1:
		return fmt.Errorf("not a kernel module: unknown ELF version %d", hdr[6])
	}
	if t := order.Uint16(hdr[16:]); t != elfTypeRel {
		return fmt.Errorf("not a kernel module: ELF type %d, not a relocatable object (%d)", t, elfTypeRel)
	}
	return nil
}

// kmodSignature returns the DER PKCS#7 SignedData over a module whose
// SHA-256 is digest, byte for byte what sign-file writes:
//
//	ContentInfo { signedData, [0] SignedData {
//	  version 1, digestAlgorithms { {sha256} }, encapContentInfo { data },
//	  signerInfos { { version 1, { issuer, serialNumber }, {sha256},
//	                  {rsaEncryption, NULL}, OCTET STRING signature } } } }
//
// OpenSSL leaves the SHA-256 AlgorithmIdentifier parameters absent (not
// NULL), as RFC 5754 recommends, and writes NULL for rsaEncryption. The
// signer must be RSA: signKmod checks it before reading the module.
func kmodSignature(digest []byte, signer crypto.Signer, cert *x509.Certificate) ([]byte, error) {
	sig, err := signer.Sign(rand.Reader, digest, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("signing: %w", err)
	}
	sha256NoParams := func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(oidSHA256) })
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oidSignedData)
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1Int64(1)
				b.AddASN1(cbasn1.SET, sha256NoParams)
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(oidData) })
				b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddASN1Int64(1)
						addIssuerAndSerialNumber(b, cert)
						sha256NoParams(b)
						addAlgorithmIdentifier(b, oidRSAEncryption)
						b.AddASN1OctetString(sig)
					})
				})
			})
		})
	})
	return b.Bytes()
}

// kmodTrailer is what follows a signature of sigLen bytes appended to a
// module: struct module_signature and the marker.
func kmodTrailer(sigLen int) []byte {
	t := make([]byte, kmodInfoSize, kmodTailBytes)
	t[2] = kmodIDPKCS7
	binary.BigEndian.PutUint32(t[8:], uint32(sigLen))
	return append(t, kmodMarker...)
}

// kmodSigned is a module signature made in memory, not yet released.
type kmodSigned struct {
	pkcs7      []byte
	dataSHA256 string // SHA-256 of the whole input, for the audit log
}

// signKmod parses and signs the module of size bytes read from r, in one
// pass through a fixed buffer, copying the module proper to out if it is
// not nil: the signature, the audited SHA-256 and the attached output all
// come from the same read. An already-signed module is refused unless
// replace: then its module proper is signed. Errors do not name the file.
func signKmod(r io.ReaderAt, size int64, replace bool, signer crypto.Signer, cert *x509.Certificate, buf []byte, out io.Writer) (*kmodSigned, error) {
	if _, ok := signer.Public().(*rsa.PublicKey); !ok {
		return nil, fmt.Errorf("module signing needs an RSA key, not %T", signer.Public())
	}
	m, err := parseKmod(r, size)
	if err != nil {
		return nil, err
	}
	if m.signed() && !replace {
		return nil, errKmodSigned
	}
	content := sha256.New()
	whole := content
	writers := []io.Writer{content}
	if m.signed() {
		whole = sha256.New()
		writers = append(writers, whole)
	}
	if out != nil {
		writers = append(writers, out)
	}
	buf = chunkBuffer(buf, size)
	if err := kmodCopy(io.MultiWriter(writers...), r, 0, m.content, buf); err != nil {
		return nil, err
	}
	if err := kmodCopy(whole, r, m.content, m.size-m.content, buf); err != nil {
		return nil, err
	}
	s := &kmodSigned{dataSHA256: hex.EncodeToString(whole.Sum(nil))}
	if s.pkcs7, err = kmodSignature(content.Sum(nil), signer, cert); err != nil {
		return nil, err
	}
	return s, nil
}

// kmodCopy copies n bytes of r from off to w, failing if the file has
// become shorter.
func kmodCopy(w io.Writer, r io.ReaderAt, off, n int64, buf []byte) error {
	got, err := io.CopyBuffer(writerOnly{w}, io.NewSectionReader(r, off, n), buf)
	if err != nil {
		return err
	}
	if got != n {
		return errors.New("the module changed while being signed: it became shorter")
	}
	return nil
}

// signKmodDetached signs the module read from r (size bytes, named name in
// errors), writes its audit row, and only then returns the detached
// signature: what the worker's sign task uploads as FILE.sig. A module
// already signed is refused: a signature over it would sign the old
// signature too.
func signKmodDetached(st *Store, k *Key, signer crypto.Signer, cert *x509.Certificate, name string, r io.ReaderAt, size int64, ac auditContext) ([]byte, error) {
	s, err := signKmod(r, size, false, signer, cert, make([]byte, peCopyBufferSize), nil)
	if errors.Is(err, errKmodSigned) {
		return nil, fmt.Errorf("%s: %w: only unsigned modules are signed here", name, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := st.Audit(ac.signEntry(k, s.dataSHA256)); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return s.pkcs7, nil
}

// signKernelModules is sign_kernel_modules: true unless set to false.
func (wc WorkerConfig) signKernelModules() bool {
	return wc.SignKernelModules == nil || *wc.SignKernelModules
}

// kmodChosen says whether the sign command's FILEs are kernel modules:
// --type linux-module, or every name ending in .ko. It refuses a mix, and
// --type or --replace where they mean nothing.
func kmodChosen(purpose, typ string, replace bool, files []string) (bool, error) {
	if purpose != purposeUEFI {
		if typ != "" || replace {
			return false, usagef("--type and --replace are for --purpose %s only", purposeUEFI)
		}
		return false, nil
	}
	var modules bool
	switch typ {
	case kmodTypeModule:
		modules = true
	case kmodTypeEFI:
	case "":
		n := 0
		for _, f := range files {
			if strings.HasSuffix(f, kmodSuffix) {
				n++
			}
		}
		if n > 0 && n < len(files) {
			return false, usagef("%d of the %d FILEs are kernel modules (%s): sign modules and images separately, or give --type", n, len(files), kmodSuffix)
		}
		modules = n > 0
	default:
		return false, usagef("unknown --type %q (want %s or %s)", typ, kmodTypeEFI, kmodTypeModule)
	}
	if replace && !modules {
		return false, usagef("--replace is for kernel modules only")
	}
	return modules, nil
}

// signKmodFiles is the sign command for kernel modules: every FILE is
// signed with the UEFI key fpr, into FILE.sig (detached) or FILE.signed
// (attached), or into output when there is a single FILE (output may be
// FILE itself: it is replaced atomically). Every module is checked before
// the first is signed; signing and release then go as for PE images
// (signPipelined).
func signKmodFiles(st *Store, fpr, mode, output string, replace bool, files []string) error {
	mode, k, outputs, err := uefiSignArgs(st, fpr, mode, output, files)
	if err != nil {
		return err
	}
	for _, in := range files {
		if err := checkKmodFile(in, replace); err != nil {
			return err
		}
	}
	signer, cert, err := uefiSigner(st, k)
	if err != nil {
		return err
	}
	return signPipelined(st, k, signer, len(files), func(i int, signer crypto.Signer, buf []byte) (*pendingSignature, error) {
		return prepareKmodSignature(files[i], outputs[i], mode, replace, signer, cert, buf)
	})
}

// prepareKmodSignature reads and signs the module in, once. In attached
// mode the module proper goes to a temporary file beside out as it is
// hashed, and the signature and its trailer are appended once audited.
func prepareKmodSignature(in, out, mode string, replace bool, signer crypto.Signer, cert *x509.Certificate, buf []byte) (*pendingSignature, error) {
	return prepareSignature(in, out, mode, func(f *os.File, size int64, p *pendingSignature) error {
		var w io.Writer
		if p.tmp != nil {
			w = p.tmp
		}
		s, err := signKmod(f, size, replace, signer, cert, buf, w)
		if err != nil {
			return err
		}
		p.pkcs7, p.dataSHA256 = s.pkcs7, s.dataSHA256
		if p.tmp != nil {
			p.tail = append(bytes.Clone(s.pkcs7), kmodTrailer(len(s.pkcs7))...)
		}
		return nil
	})
}

// checkKmodFile parses the module in path without reading all of it.
func checkKmodFile(path string, replace bool) error {
	f, fi, err := openInput(path)
	if err != nil {
		return err
	}
	defer f.Close()
	m, err := parseKmod(f, fi.Size())
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if m.signed() && !replace {
		return fmt.Errorf("%s: %w (give --replace to replace its signature)", path, errKmodSigned)
	}
	return nil
}
