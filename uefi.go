package main

// UEFI Secure Boot keys and signing: RSA-2048 keys with a self-signed
// certificate made the way Debusine's `openssl req -x509` makes them, and
// Authenticode signatures of PE images, detached (as `sbsign --detached`
// writes) or attached (as `sbsign` writes).
//
// Already-signed inputs: the image hash never covers the certificate table,
// so a detached signature of a signed image is the same as one of the
// unsigned image and can later be attached with sbattach. In attached mode
// the new signature is added as one more WIN_CERTIFICATE entry after the
// existing ones, which is what sbsign and sbattach do: existing signatures
// are kept, and UEFI firmware (EDK2) walks every entry and accepts the image
// if one verifies. osslsigncode only understands a table with a single
// entry and reports such a file as corrupt, exactly as it does for sbsign's
// output.

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

const (
	uefiKeyBits         = 2048
	uefiValidity        = 15 * 365 * 24 * time.Hour
	uefiMaxCommonName   = 64 // ub-common-name; openssl req refuses longer names
	uefiModeDetached    = "detached"
	uefiModeAttached    = "attached"
	uefiSerialNumberLen = 20
)

var (
	oidCommonName             = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidSubjectKeyIdentifier   = asn1.ObjectIdentifier{2, 5, 29, 14}
	oidAuthorityKeyIdentifier = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidBasicConstraints       = asn1.ObjectIdentifier{2, 5, 29, 19}
)

// certificateFingerprint is the key fingerprint of a UEFI key: SHA-256 of
// the certificate's DER, uppercase hex.
func certificateFingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}

// uefiSelfSignedCertificate makes the certificate `openssl req -x509 -subj
// /CN=description -days 5475` makes: subject and issuer CN=description as a
// UTF8String, a random positive 20-byte serial, validity from now for
// 15 × 365 days, sha256WithRSAEncryption, and openssl's default extensions
// in openssl's order (subjectKeyIdentifier as the SHA-1 of the public key,
// authorityKeyIdentifier with that key id, basicConstraints critical
// CA:TRUE). The signer may be a hardware token.
func uefiSelfSignedCertificate(description string, pub crypto.PublicKey, signer crypto.Signer, now time.Time) ([]byte, error) {
	if err := checkUEFIDescription(description); err != nil {
		return nil, err
	}
	if _, ok := pub.(*rsa.PublicKey); !ok {
		return nil, fmt.Errorf("UEFI keys must be RSA, not %T", pub)
	}
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	var info struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(spki, &info); err != nil {
		return nil, err
	}
	keyID := sha1.Sum(info.PublicKey.Bytes)

	serial := make([]byte, uefiSerialNumberLen)
	if _, err := rand.Read(serial); err != nil {
		return nil, err
	}
	serial[0] &= 0x7f
	serial[0] |= 0x01 // keep the full 20 bytes and the value positive and non-zero

	var name cryptobyte.Builder
	name.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(oidCommonName)
				b.AddASN1(cbasn1.UTF8String, func(b *cryptobyte.Builder) { b.AddBytes([]byte(description)) })
			})
		})
	})
	rawName, err := name.Bytes()
	if err != nil {
		return nil, err
	}
	skid, err := asn1.Marshal(keyID[:])
	if err != nil {
		return nil, err
	}
	var akid cryptobyte.Builder
	akid.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(keyID[:]) })
	})
	basicConstraints := []byte{0x30, 0x03, 0x01, 0x01, 0xff} // SEQUENCE { cA TRUE }

	notBefore := now.UTC().Truncate(time.Second)
	tmpl := &x509.Certificate{
		SerialNumber:       new(big.Int).SetBytes(serial),
		RawSubject:         rawName,
		NotBefore:          notBefore,
		NotAfter:           notBefore.Add(uefiValidity),
		SignatureAlgorithm: x509.SHA256WithRSA,
		// The extensions go in ExtraExtensions rather than IsCA and
		// SubjectKeyId so that their order and key id method are openssl's.
		ExtraExtensions: []pkix.Extension{
			{Id: oidSubjectKeyIdentifier, Value: skid},
			{Id: oidAuthorityKeyIdentifier, Value: akid.BytesOrPanic()},
			{Id: oidBasicConstraints, Critical: true, Value: basicConstraints},
		},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("creating certificate: %w", err)
	}
	return der, nil
}

// checkUEFIDescription checks that description can be a certificate's
// common name.
func checkUEFIDescription(description string) error {
	if description == "" {
		return errors.New("the description (certificate common name) must not be empty")
	}
	if !utf8.ValidString(description) || utf8.RuneCountInString(description) > uefiMaxCommonName {
		return fmt.Errorf("the description must be valid UTF-8 of at most %d characters (it becomes the certificate's common name)", uefiMaxCommonName)
	}
	return nil
}

// newUEFIKeyPair generates an RSA key and its certificate, returning the
// PKCS#8 PEM private key (the form `openssl req -nodes` writes) and the PEM
// certificate.
func newUEFIKeyPair(description string, now time.Time) (keyPEM, certPEM []byte, err error) {
	if err := checkUEFIDescription(description); err != nil {
		return nil, nil, err
	}
	key, err := rsa.GenerateKey(rand.Reader, uefiKeyBits)
	if err != nil {
		return nil, nil, err
	}
	der, err := uefiSelfSignedCertificate(description, &key.PublicKey, key, now)
	if err != nil {
		return nil, nil, err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
	clear(pkcs8)
	return keyPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// parseUEFIKeyPair parses a PEM RSA private key (PKCS#8 or PKCS#1) and a
// PEM certificate, and checks that they belong together. Errors never
// include key material.
func parseUEFIKeyPair(keyPEM, certPEM []byte) (crypto.Signer, *x509.Certificate, error) {
	cert, err := parseUEFICertificate(certPEM)
	if err != nil {
		return nil, nil, err
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, nil, errors.New("private key: no PEM block found")
	}
	var key any
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		if len(block.Headers) > 0 {
			return nil, nil, errors.New("private key: encrypted PEM keys are not supported")
		}
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "ENCRYPTED PRIVATE KEY":
		return nil, nil, errors.New("private key: encrypted keys are not supported")
	default:
		return nil, nil, fmt.Errorf("private key: unexpected PEM block %q", block.Type)
	}
	clear(block.Bytes)
	if err != nil {
		return nil, nil, errors.New("private key: cannot parse it as a PKCS#8 or PKCS#1 key")
	}
	rsaKey, ok := key.(*rsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("private key: UEFI keys must be RSA, not %T", key)
	}
	if !rsaKey.PublicKey.Equal(cert.PublicKey) {
		return nil, nil, errors.New("the private key does not match the certificate")
	}
	return rsaKey, cert, nil
}

// parseCertificatePEM parses one PEM certificate.
func parseCertificatePEM(certPEM []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("certificate: no PEM CERTIFICATE block found")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	return cert, nil
}

// parseUEFICertificate parses the PEM certificate of a UEFI key, which
// must hold an RSA key.
func parseUEFICertificate(certPEM []byte) (*x509.Certificate, error) {
	cert, err := parseCertificatePEM(certPEM)
	if err != nil {
		return nil, err
	}
	if _, ok := cert.PublicKey.(*rsa.PublicKey); !ok {
		return nil, fmt.Errorf("certificate: UEFI keys must be RSA, not %T", cert.PublicKey)
	}
	return cert, nil
}

// uefiSignedImage is a signature made in memory for one PE image, not yet
// released: the caller audits it, then writes it out.
type uefiSignedImage struct {
	once       *peOnePass
	pkcs7      []byte
	dataSHA256 string // SHA-256 of the whole input, for the audit log
}

// signPEImage reads the PE image of size bytes from r once (readPEOnce),
// signs its image hash and, if out is not nil, writes the attached output
// to out: the signature, the audited SHA-256 and the output all come from
// the same read. Errors do not name the file; callers do.
func signPEImage(r io.Reader, size int64, out *os.File, signer crypto.Signer, cert *x509.Certificate, now time.Time, buf []byte) (*uefiSignedImage, error) {
	var w io.Writer
	if out != nil {
		w = out
	}
	o, err := readPEOnce(r, size, w, buf)
	if err != nil {
		return nil, err
	}
	pkcs7, err := authenticodeSignature(o.imageHash, signer, cert, now)
	if err != nil {
		return nil, err
	}
	if out != nil {
		patches, err := o.appendSignature(out, pkcs7)
		if err != nil {
			return nil, err
		}
		for _, p := range patches {
			if _, err := out.WriteAt(p.data, p.offset); err != nil {
				return nil, err
			}
		}
	}
	return &uefiSignedImage{once: o, pkcs7: pkcs7, dataSHA256: hex.EncodeToString(o.fileSHA256)}, nil
}

// checkUEFIMode validates a signing mode.
func checkUEFIMode(mode string) error {
	if mode != uefiModeDetached && mode != uefiModeAttached {
		return fmt.Errorf("unknown UEFI signing mode %q (want %s or %s)", mode, uefiModeDetached, uefiModeAttached)
	}
	return nil
}

// uefiOutputName is the default output name for a mode: FILE.sig for a
// detached signature (what Debusine's Sign task uploads), FILE.signed for a
// signed image (sbsign's default).
func uefiOutputName(in, mode string) string {
	if mode == uefiModeAttached {
		return in + ".signed"
	}
	return in + ".sig"
}

// addUEFIKey stores a UEFI key by its certificate, private being the
// protected private_key JSON, and audits event; data nil audits the
// description alone.
func addUEFIKey(st *Store, cert *x509.Certificate, private []byte, description, event string, data map[string]any, workRequest *int64) (string, error) {
	k := &Key{
		Purpose:     purposeUEFI,
		Fingerprint: certificateFingerprint(cert),
		PrivateKey:  private,
		PublicKey:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		Description: description,
	}
	if data == nil {
		data = map[string]any{"description": description}
	}
	if err := st.AddKeyWithData(k, event, data, workRequest); err != nil {
		return "", err
	}
	return k.Fingerprint, nil
}

// importUEFIKey stores an existing UEFI key pair: the private key is
// checked against the certificate, then sealed; the event is "register".
func importUEFIKey(st *Store, keyPEM, certPEM []byte, description string) (string, error) {
	signer, cert, err := parseUEFIKeyPair(keyPEM, certPEM)
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalPKCS8PrivateKey(signer)
	if err != nil {
		return "", fmt.Errorf("private key: %w", err)
	}
	plain := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	clear(der)
	sealed, err := st.Seal(plain)
	clear(plain)
	if err != nil {
		return "", err
	}
	return addUEFIKey(st, cert, sealed, description, "register", nil, nil)
}

// registerPKCS11Key records a UEFI key that stays on a PKCS#11 token, by
// its URI and certificate, as Debusine's register_pkcs11_static_key does.
// A key on a PKCS#11 token must make a test signature that verifies with
// the certificate; a YubiKey URI is only checked for what it names
// (register-yubikey-key makes the test signature).
func registerPKCS11Key(st *Store, uri string, certPEM []byte, description string) (string, error) {
	cert, err := parseCertificatePEM(certPEM)
	if err != nil {
		return "", err
	}
	yubikey, providers, u, err := routeKeyURI(st.pkcs11, uri)
	if err != nil {
		return "", err
	}
	if !yubikey {
		return registerP11UEFIKey(st, providers, u, uri, cert, description)
	}
	// Only keys this service can reach are worth registering.
	if _, err := parsePKCS11URI(uri); err != nil {
		return "", err
	}
	private, err := pkcs11KeyJSON(uri)
	if err != nil {
		return "", err
	}
	return addUEFIKey(st, cert, private, description, "register", nil, nil)
}

// generateUEFIKey generates a UEFI key, stores it sealed to the service key
// and audits the "generate" event, returning the fingerprint.
func generateUEFIKey(st *Store, description string, workRequest *int64) (string, error) {
	keyPEM, certPEM, err := newUEFIKeyPair(description, time.Now())
	if err != nil {
		return "", fmt.Errorf("generating UEFI key: %w", err)
	}
	sealed, err := st.Seal(keyPEM)
	clear(keyPEM)
	if err != nil {
		return "", err
	}
	cert, err := parseCertificatePEM(certPEM)
	if err != nil {
		return "", err
	}
	return addUEFIKey(st, cert, sealed, description, "generate", nil, workRequest)
}

// uefiSigner returns the signer and certificate of a stored UEFI key: the
// private key unsealed in memory (never written anywhere), or a handle on
// the hardware token holding it.
func uefiSigner(st *Store, k *Key) (crypto.Signer, *x509.Certificate, error) {
	if k.Purpose != purposeUEFI {
		return nil, nil, fmt.Errorf("key %s is a %s key, not %s", k.Fingerprint, k.Purpose, purposeUEFI)
	}
	storage, err := k.Storage()
	if err != nil {
		return nil, nil, err
	}
	switch storage {
	case storageNaCl:
		plain, err := st.Unseal(k)
		if err != nil {
			return nil, nil, err
		}
		defer clear(plain)
		signer, cert, err := parseUEFIKeyPair(plain, k.PublicKey)
		if err != nil {
			return nil, nil, fmt.Errorf("key %s: %w", k.Fingerprint, err)
		}
		if err := checkCertificateFingerprint(k, cert); err != nil {
			return nil, nil, err
		}
		return signer, cert, nil
	case storagePKCS11:
		uri, err := k.PKCS11URI()
		if err != nil {
			return nil, nil, err
		}
		// A sealed key's certificate is parsed with the key
		// (parseUEFIKeyPair); a token's only here.
		cert, err := parseUEFICertificate(k.PublicKey)
		if err != nil {
			return nil, nil, fmt.Errorf("key %s: %w", k.Fingerprint, err)
		}
		if err := checkCertificateFingerprint(k, cert); err != nil {
			return nil, nil, err
		}
		signer, err := keySigner(st, uri)
		if err != nil {
			return nil, nil, fmt.Errorf("key %s: %w", k.Fingerprint, err)
		}
		if pub, ok := signer.Public().(*rsa.PublicKey); !ok || !pub.Equal(cert.PublicKey) {
			return nil, nil, fmt.Errorf("key %s: the key on the token does not match the stored certificate", k.Fingerprint)
		}
		return signer, cert, nil
	default:
		return nil, nil, fmt.Errorf("key %s: unsupported storage %q", k.Fingerprint, storage)
	}
}

// checkCertificateFingerprint checks, as the signer uses the certificate,
// that it is the one the key's fingerprint names (Store.Key has checked
// the row; this holds whatever the Key came from).
func checkCertificateFingerprint(k *Key, cert *x509.Certificate) error {
	if got := certificateFingerprint(cert); got != k.Fingerprint {
		return fmt.Errorf("%w: %s: its certificate has fingerprint %s", errKeyRefused, k, got)
	}
	return nil
}

// signUEFIFile signs the PE image in and writes the result for mode to out.
// The signature is made and audited before out appears, atomically
// (a locked temporary file in the same directory, then a rename), mode
// 0644. If anything fails, no output is left behind.
func signUEFIFile(st *Store, k *Key, signer crypto.Signer, cert *x509.Certificate, in, out, mode string, ac auditContext) error {
	if err := checkUEFIMode(mode); err != nil {
		return err
	}
	p, err := prepareUEFISignature(in, out, mode, signer, cert, make([]byte, peCopyBufferSize))
	if err != nil {
		return err
	}
	defer p.discard()
	if err := st.Audit(ac.signEntry(k, p.dataSHA256)); err != nil {
		return fmt.Errorf("%s: %w", p.in, err)
	}
	return p.write()
}

// signUEFIDetached signs the PE image read from r (size bytes, named name
// in errors), writes its audit row, and only then returns the detached
// signature: what the worker's Sign task uploads as FILE.sig. The image is
// read once, front to back.
func signUEFIDetached(st *Store, k *Key, signer crypto.Signer, cert *x509.Certificate, name string, r io.ReaderAt, size int64, ac auditContext) ([]byte, error) {
	s, err := signPEImage(io.NewSectionReader(r, 0, size), size, nil, signer, cert, time.Now(), make([]byte, peCopyBufferSize))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := st.Audit(ac.signEntry(k, s.dataSHA256)); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return s.pkcs7, nil
}

// pendingSignature is a signature made for the file in, not yet released.
// In attached mode the output is already written to tmp, but for tail,
// appended once the signature is audited; tmp then becomes out.
type pendingSignature struct {
	in, out, mode string
	tmp           *os.File
	pkcs7         []byte
	dataSHA256    string // SHA-256 of the whole input, for the audit log
	tail          []byte
}

// prepareSignature opens in and, in attached mode, a locked temporary
// output beside out, then has sign read the input once, copying what the
// output needs to p.tmp if it is not nil, and fill in p. On success the
// caller calls p.write or p.discard.
func prepareSignature(in, out, mode string, sign func(f *os.File, size int64, p *pendingSignature) error) (p *pendingSignature, err error) {
	f, fi, err := openInput(in)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	pending := &pendingSignature{in: in, out: out, mode: mode}
	if mode == uefiModeAttached {
		if pending.tmp, err = createOutputTemp(out); err != nil {
			return nil, err
		}
		// pending, not p: p is nil once an error is returned.
		defer func() {
			if err != nil {
				pending.discard()
			}
		}()
	}
	if err := sign(f, fi.Size(), pending); err != nil {
		return nil, fmt.Errorf("%s: %w", in, err)
	}
	return pending, nil
}

// prepareUEFISignature reads and signs the PE image in, once, writing the
// attached output to a temporary file beside out.
func prepareUEFISignature(in, out, mode string, signer crypto.Signer, cert *x509.Certificate, buf []byte) (*pendingSignature, error) {
	return prepareSignature(in, out, mode, func(f *os.File, size int64, p *pendingSignature) error {
		s, err := signPEImage(f, size, p.tmp, signer, cert, time.Now(), buf)
		if err != nil {
			return err
		}
		p.pkcs7, p.dataSHA256 = s.pkcs7, s.dataSHA256
		return nil
	})
}

// write puts the output of an audited signature under its final name.
func (p *pendingSignature) write() error {
	if p.mode == uefiModeDetached {
		return writeFileAtomic(p.out, func(w *os.File) error {
			_, err := w.Write(p.pkcs7)
			return err
		})
	}
	tmp := p.tmp
	p.tmp = nil
	err := func() error {
		if _, err := tmp.Write(p.tail); err != nil {
			return err
		}
		return commitOutputTemp(tmp, p.out)
	}()
	if err != nil {
		os.Remove(tmp.Name())
		tmp.Close()
		return fmt.Errorf("%s: %w", p.out, err)
	}
	return nil
}

// discard removes the temporary output of a signature not written.
func (p *pendingSignature) discard() {
	if p.tmp != nil {
		os.Remove(p.tmp.Name())
		p.tmp.Close()
		p.tmp = nil
	}
}

// signUEFIFiles is the sign command for UEFI keys: every FILE is signed
// with the key fpr, into FILE.sig (detached) or FILE.signed (attached), or
// into output when there is a single FILE. All inputs are checked before
// the first is signed, so that a bad file in the list leaves nothing signed.
func signUEFIFiles(st *Store, fpr, mode, output string, files []string) error {
	mode, k, outputs, err := uefiSignArgs(st, fpr, mode, output, files)
	if err != nil {
		return err
	}
	for _, in := range files {
		if err := checkPEFile(in); err != nil {
			return err
		}
	}
	signer, cert, err := uefiSigner(st, k)
	if err != nil {
		return err
	}
	return signUEFIPipelined(st, k, signer, cert, files, outputs, mode)
}

// uefiSignArgs checks the arguments of the sign command for a UEFI key and
// returns the mode (detached unless given), the key and each FILE's output.
func uefiSignArgs(st *Store, fpr, mode, output string, files []string) (string, *Key, []string, error) {
	if mode == "" {
		mode = uefiModeDetached
	}
	if err := checkUEFIMode(mode); err != nil {
		return "", nil, nil, usagef("%v", err)
	}
	if len(files) == 0 {
		return "", nil, nil, usagef("sign needs at least one FILE")
	}
	if output != "" && len(files) > 1 {
		return "", nil, nil, usagef("--output needs exactly one FILE, not %d", len(files))
	}
	k, err := st.Key(purposeUEFI, fpr)
	if err != nil {
		return "", nil, nil, err
	}
	outputs := make([]string, len(files))
	for i, in := range files {
		outputs[i] = output
		if output == "" {
			outputs[i] = uefiOutputName(in, mode)
		}
	}
	return mode, k, outputs, nil
}

// uefiMaxAhead bounds how many files are signed ahead of the one being
// released, and so how many are open at once.
const uefiMaxAhead = 32

// signUEFIPipelined signs the PE images files[i] into outputs[i] with
// signPipelined.
func signUEFIPipelined(st *Store, k *Key, signer crypto.Signer, cert *x509.Certificate, files, outputs []string, mode string) error {
	return signPipelined(st, k, signer, len(files), func(i int, signer crypto.Signer, buf []byte) (*pendingSignature, error) {
		return prepareUEFISignature(files[i], outputs[i], mode, signer, cert, buf)
	})
}

// signPipelined makes and releases n signatures, the i-th by prepare(i).
// Hashing and RSA signing run on every core, ahead of the release; the
// release takes every signature ready so far, in order, appends their
// audit rows in one transaction (one fsync for the group instead of one
// per file), and only then writes their outputs, while the next files are
// being signed. The first error stops everything: signatures not yet
// audited are dropped, outputs already released stay.
func signPipelined(st *Store, k *Key, signer crypto.Signer, n int, prepare func(i int, signer crypto.Signer, buf []byte) (*pendingSignature, error)) error {
	if _, ok := signer.(*rsa.PrivateKey); !ok {
		// A hardware token signs one request at a time.
		signer = &serialSigner{Signer: signer}
	}
	type result struct {
		p   *pendingSignature
		err error
	}
	results := make([]chan result, n)
	for i := range results {
		results[i] = make(chan result, 1)
	}
	ahead := make(chan struct{}, uefiMaxAhead)
	next := make(chan int)
	stop := make(chan struct{})
	go func() {
		defer close(next)
		for i := range n {
			select {
			case ahead <- struct{}{}:
			case <-stop:
				return
			}
			select {
			case next <- i:
			case <-stop:
				return
			}
		}
	}()
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), n) {
		wg.Go(func() {
			buf := make([]byte, peCopyBufferSize)
			for i := range next {
				p, err := prepare(i, signer, buf)
				results[i] <- result{p, err}
			}
		})
	}
	var group []*pendingSignature
	defer func() {
		close(stop)
		wg.Wait()
		for _, p := range group {
			p.discard()
		}
		for _, c := range results {
			select {
			case r := <-c:
				if r.p != nil {
					r.p.discard()
				}
			default:
			}
		}
	}()

	for done := 0; done < n; {
		r := <-results[done]
		for {
			if r.err != nil {
				return r.err
			}
			group = append(group, r.p)
			if done+len(group) == n {
				break
			}
			select {
			case r = <-results[done+len(group)]:
				continue
			default:
			}
			break
		}
		err := releaseSignatures(st, k, group)
		for _, p := range group {
			p.discard()
			<-ahead
		}
		done += len(group)
		group = nil
		if err != nil {
			return err
		}
	}
	return nil
}

// releaseSignatures audits the signatures in one transaction, then
// writes their outputs.
func releaseSignatures(st *Store, k *Key, pending []*pendingSignature) error {
	entries := make([]AuditEntry, len(pending))
	for i, p := range pending {
		entries[i] = auditContext{}.signEntry(k, p.dataSHA256)
	}
	if err := st.auditAll(entries); err != nil {
		return fmt.Errorf("%s: %w", pending[0].in, err)
	}
	for _, p := range pending {
		if err := p.write(); err != nil {
			return err
		}
	}
	return nil
}

// serialSigner lets one Sign call through at a time.
type serialSigner struct {
	mu sync.Mutex
	crypto.Signer
}

func (s *serialSigner) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Signer.Sign(rand, digest, opts)
}

// checkPEFile parses the headers of the PE image in path.
func checkPEFile(path string) error {
	f, fi, err := openInput(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := parsePE(f, fi.Size()); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
