package main

// Checks the relay makes on the outputs the offline host sends back before
// anything reaches the server: an Authenticode signature must sign the
// image it is for with the key's certificate, an OpenPGP signature must be
// made by exactly the keys the work request named, over the input.

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/clearsign"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

var errMalformedPKCS7 = errors.New("not an Authenticode signature (malformed PKCS#7)")

// verifyAuthenticode checks that sig, a detached Authenticode signature as
// sbsign --detached writes it, signs the PE image r (size bytes) with the
// key of cert: the image hash in its SpcIndirectDataContent is the image's,
// its messageDigest attribute is that content's digest, and the RSA
// signature over the attributes verifies with cert's public key.
func verifyAuthenticode(sig []byte, r io.ReaderAt, size int64, cert *x509.Certificate) error {
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return fmt.Errorf("certificate %s: not an RSA key", cert.Subject)
	}
	pe, err := readPEOnce(io.NewSectionReader(r, 0, size), size, nil, make([]byte, peCopyBufferSize))
	if err != nil {
		return err
	}
	imageHash := pe.imageHash

	s := cryptobyte.String(sig)
	var ci, signedData, encap, idc, signerInfos cryptobyte.String
	var oid asn1.ObjectIdentifier
	var version int64
	if !s.ReadASN1(&ci, cbasn1.SEQUENCE) || !s.Empty() || !ci.ReadASN1ObjectIdentifier(&oid) || !oid.Equal(oidSignedData) ||
		!ci.ReadASN1(&signedData, cbasn1.Tag(0).Constructed().ContextSpecific()) ||
		!signedData.ReadASN1(&signedData, cbasn1.SEQUENCE) ||
		!signedData.ReadASN1Integer(&version) || !signedData.SkipASN1(cbasn1.SET) ||
		!signedData.ReadASN1(&encap, cbasn1.SEQUENCE) ||
		!encap.ReadASN1ObjectIdentifier(&oid) || !oid.Equal(oidSpcIndirectData) ||
		!encap.ReadASN1(&encap, cbasn1.Tag(0).Constructed().ContextSpecific()) ||
		!encap.ReadASN1Element(&idc, cbasn1.SEQUENCE) ||
		!signedData.SkipOptionalASN1(cbasn1.Tag(0).Constructed().ContextSpecific()) ||
		!signedData.SkipOptionalASN1(cbasn1.Tag(1).Constructed().ContextSpecific()) ||
		!signedData.ReadASN1(&signerInfos, cbasn1.SET) {
		return errMalformedPKCS7
	}

	// SpcIndirectDataContent: { SpcAttributeTypeAndOptionalValue, DigestInfo }.
	var idcBody, digestInfo, hash cryptobyte.String
	content := idc
	if !content.ReadASN1(&idcBody, cbasn1.SEQUENCE) {
		return errMalformedPKCS7
	}
	idcContent := idcBody
	if !idcBody.SkipASN1(cbasn1.SEQUENCE) || !idcBody.ReadASN1(&digestInfo, cbasn1.SEQUENCE) ||
		!digestInfo.SkipASN1(cbasn1.SEQUENCE) || !digestInfo.ReadASN1(&hash, cbasn1.OCTET_STRING) {
		return errMalformedPKCS7
	}
	if !bytes.Equal(hash, imageHash) {
		return errors.New("the signature is for another image (its image hash differs)")
	}

	var si, attrs, sigValue cryptobyte.String
	if !signerInfos.ReadASN1(&si, cbasn1.SEQUENCE) || !si.SkipASN1(cbasn1.INTEGER) || !si.SkipASN1(cbasn1.SEQUENCE) ||
		!si.SkipASN1(cbasn1.SEQUENCE) || !si.ReadASN1(&attrs, cbasn1.Tag(0).Constructed().ContextSpecific()) ||
		!si.SkipASN1(cbasn1.SEQUENCE) || !si.ReadASN1(&sigValue, cbasn1.OCTET_STRING) {
		return errMalformedPKCS7
	}
	wantDigest := sha256.Sum256(idcContent)
	found := false
	for a := attrs; !a.Empty(); {
		var attr, values, v cryptobyte.String
		if !a.ReadASN1(&attr, cbasn1.SEQUENCE) || !attr.ReadASN1ObjectIdentifier(&oid) || !attr.ReadASN1(&values, cbasn1.SET) {
			return errMalformedPKCS7
		}
		if oid.Equal(oidAttrMessageDigest) {
			if !values.ReadASN1(&v, cbasn1.OCTET_STRING) || !bytes.Equal(v, wantDigest[:]) {
				return errors.New("the signature's messageDigest does not match its content")
			}
			found = true
		}
	}
	if !found {
		return errors.New("the signature has no messageDigest attribute")
	}
	var set cryptobyte.Builder
	set.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) { b.AddBytes(attrs) })
	signed, err := set.Bytes()
	if err != nil {
		return errMalformedPKCS7
	}
	digest := sha256.Sum256(signed)
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sigValue); err != nil {
		return fmt.Errorf("the signature does not verify with certificate %s", cert.Subject)
	}
	return nil
}

// verifyKmodSignature checks that sig, a detached module signature as
// sign-file -d writes it (no signed attributes, content detached), signs
// the module r (size bytes) with the key of cert.
func verifyKmodSignature(sig []byte, r io.ReaderAt, size int64, cert *x509.Certificate) error {
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return fmt.Errorf("certificate %s: not an RSA key", cert.Subject)
	}
	s := cryptobyte.String(sig)
	var ci, sd, encap, signerInfos, si, value cryptobyte.String
	var oid asn1.ObjectIdentifier
	if !s.ReadASN1(&ci, cbasn1.SEQUENCE) || !s.Empty() || !ci.ReadASN1ObjectIdentifier(&oid) || !oid.Equal(oidSignedData) ||
		!ci.ReadASN1(&sd, cbasn1.Tag(0).Constructed().ContextSpecific()) || !sd.ReadASN1(&sd, cbasn1.SEQUENCE) ||
		!sd.SkipASN1(cbasn1.INTEGER) || !sd.SkipASN1(cbasn1.SET) ||
		!sd.ReadASN1(&encap, cbasn1.SEQUENCE) || !encap.ReadASN1ObjectIdentifier(&oid) || !oid.Equal(oidData) || !encap.Empty() ||
		!sd.SkipOptionalASN1(cbasn1.Tag(0).Constructed().ContextSpecific()) ||
		!sd.SkipOptionalASN1(cbasn1.Tag(1).Constructed().ContextSpecific()) ||
		!sd.ReadASN1(&signerInfos, cbasn1.SET) || !signerInfos.ReadASN1(&si, cbasn1.SEQUENCE) ||
		!si.SkipASN1(cbasn1.INTEGER) || !si.SkipASN1(cbasn1.SEQUENCE) || !si.SkipASN1(cbasn1.SEQUENCE) ||
		si.PeekASN1Tag(cbasn1.Tag(0).Constructed().ContextSpecific()) ||
		!si.SkipASN1(cbasn1.SEQUENCE) || !si.ReadASN1(&value, cbasn1.OCTET_STRING) {
		return errors.New("not a detached module signature (malformed PKCS#7)")
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, size)); err != nil {
		return err
	}
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, h.Sum(nil), value); err != nil {
		return fmt.Errorf("the signature does not verify with certificate %s over this module", cert.Subject)
	}
	return nil
}

// readOpenPGPKeys reads armoured public keys.
func readOpenPGPKeys(armoured ...[]byte) (openpgp.EntityList, error) {
	var all openpgp.EntityList
	for _, a := range armoured {
		el, err := openpgp.ReadArmoredKeyRing(bytes.NewReader(a))
		if err != nil {
			return nil, fmt.Errorf("OpenPGP public key: %w", err)
		}
		all = append(all, el...)
	}
	return all, nil
}

// verifyOpenPGP checks an armoured detached signature (detached) or a
// cleartext-signed message (clear) over data: every signature in it must
// verify with one of keys, and together they must come from exactly want
// (primary key fingerprints). A clear-signed message must hold data,
// unless data is nil.
func verifyOpenPGP(signature, data []byte, mode string, keys openpgp.EntityList, want []string) error {
	var sigs io.Reader
	signedText := data
	switch mode {
	case openpgpModeDetached:
		block, err := armor.Decode(bytes.NewReader(signature))
		if err != nil || block.Type != openpgp.SignatureType {
			return errors.New("not an armoured OpenPGP signature")
		}
		sigs = block.Body
	case openpgpModeClear:
		b, rest := clearsign.Decode(signature)
		if b == nil || len(bytes.TrimSpace(rest)) != 0 {
			return errors.New("not a cleartext-signed message")
		}
		if data != nil && !bytes.Equal(bytes.TrimRight(b.Plaintext, "\r\n"), bytes.TrimRight(data, "\r\n")) {
			return errors.New("the signed text is not the input")
		}
		signedText, sigs = b.Bytes, b.ArmoredSignature.Body
	default:
		return fmt.Errorf("unknown OpenPGP mode %q", mode)
	}
	var got []string
	pr := packet.NewReader(sigs)
	for {
		p, err := pr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading the signature: %w", err)
		}
		sig, ok := p.(*packet.Signature)
		if !ok || sig.IssuerKeyId == nil {
			return errors.New("the signature holds something other than issued signatures")
		}
		found := keys.KeysById(*sig.IssuerKeyId)
		if len(found) == 0 {
			return fmt.Errorf("signature by unknown key %016X", *sig.IssuerKeyId)
		}
		// A text signature hashes the canonical text, but its trailer
		// goes into the bare hash.
		h := sig.Hash.New()
		var w io.Writer = h
		if sig.SigType == packet.SigTypeText {
			w = openpgp.NewCanonicalTextHash(h)
		}
		w.Write(signedText)
		if err := found[0].PublicKey.VerifySignature(h, sig); err != nil {
			return fmt.Errorf("signature by key %016X does not verify: %w", *sig.IssuerKeyId, err)
		}
		got = append(got, strings.ToUpper(fmt.Sprintf("%X", found[0].Entity.PrimaryKey.Fingerprint)))
	}
	slices.Sort(got)
	wanted := slices.Sorted(slices.Values(want))
	if !slices.Equal(got, wanted) {
		return fmt.Errorf("signed by %v, want %v", got, wanted)
	}
	return nil
}
