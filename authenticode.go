package main

// The Authenticode signature: a PKCS#7 SignedData whose content is an
// SpcIndirectDataContent carrying the PE image hash. The layout follows
// Microsoft's Authenticode PE specification and matches what sbsign writes,
// minus the SMIMECapabilities attribute that nothing checks.

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"slices"
	"time"
	"unicode/utf16"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

var (
	oidSignedData           = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	oidSpcIndirectData      = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 1, 4}
	oidSpcPEImageData       = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 1, 15}
	oidSHA256               = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	oidRSAEncryption        = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	oidAttrContentType      = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 3}
	oidAttrMessageDigest    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 4}
	oidAttrSigningTime      = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 5}
	spcObsoleteFileLinkName = "<<<Obsolete>>>"
)

// spcIndirectDataContent encodes the SpcIndirectDataContent for a PE image
// hash:
//
//	SEQUENCE {
//	  SEQUENCE { OID spcPEImageData,
//	             SpcPeImageData { flags BIT STRING {}, file [0] { [2] { [0] BMPString } } } }
//	  DigestInfo { { sha256, NULL }, OCTET STRING imageHash } }
func spcIndirectDataContent(imageHash []byte) []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oidSpcPEImageData)
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1BitString(nil)
				b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.Tag(2).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
						b.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(b *cryptobyte.Builder) {
							for _, u := range utf16.Encode([]rune(spcObsoleteFileLinkName)) {
								b.AddUint16(u)
							}
						})
					})
				})
			})
		})
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			addSHA256AlgorithmIdentifier(b)
			b.AddASN1OctetString(imageHash)
		})
	})
	return b.BytesOrPanic()
}

func addAlgorithmIdentifier(b *cryptobyte.Builder, oid asn1.ObjectIdentifier) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oid)
		b.AddASN1NULL()
	})
}

func addSHA256AlgorithmIdentifier(b *cryptobyte.Builder) { addAlgorithmIdentifier(b, oidSHA256) }

// addIssuerAndSerialNumber names a signer by its certificate (PKCS#7
// IssuerAndSerialNumber).
func addIssuerAndSerialNumber(b *cryptobyte.Builder, cert *x509.Certificate) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(cert.RawIssuer)
		b.AddASN1BigInt(cert.SerialNumber)
	})
}

// authenticodeSignature returns the DER ContentInfo(SignedData) signing
// imageHash with signer, whose certificate is cert: the bytes
// `sbsign --detached` writes and the attached mode embeds.
func authenticodeSignature(imageHash []byte, signer crypto.Signer, cert *x509.Certificate, now time.Time) ([]byte, error) {
	if _, ok := signer.Public().(*rsa.PublicKey); !ok {
		return nil, fmt.Errorf("UEFI signing needs an RSA key, not %T", signer.Public())
	}
	idc := spcIndirectDataContent(imageHash)

	// The messageDigest attribute covers the content octets of the
	// SpcIndirectDataContent SEQUENCE, without its tag and length.
	s := cryptobyte.String(idc)
	var idcContent cryptobyte.String
	if !s.ReadASN1(&idcContent, cbasn1.SEQUENCE) {
		return nil, errors.New("internal error: malformed SpcIndirectDataContent")
	}
	digest := sha256.Sum256(idcContent)

	attrs, err := signedAttributes(digest[:], now)
	if err != nil {
		return nil, err
	}
	// The signature covers the attributes encoded as a SET OF (tag 0x31),
	// although they are sent with the [0] IMPLICIT tag.
	var set cryptobyte.Builder
	set.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) { b.AddBytes(attrs) })
	toSign, err := set.Bytes()
	if err != nil {
		return nil, err
	}
	attrDigest := sha256.Sum256(toSign)
	sig, err := signer.Sign(rand.Reader, attrDigest[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("signing: %w", err)
	}

	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oidSignedData)
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1Int64(1)
				b.AddASN1(cbasn1.SET, addSHA256AlgorithmIdentifier)
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1ObjectIdentifier(oidSpcIndirectData)
					b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
						b.AddBytes(idc)
					})
				})
				b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
					b.AddBytes(cert.Raw)
				})
				b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddASN1Int64(1)
						addIssuerAndSerialNumber(b, cert)
						addSHA256AlgorithmIdentifier(b)
						b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
							b.AddBytes(attrs)
						})
						addAlgorithmIdentifier(b, oidRSAEncryption)
						b.AddASN1OctetString(sig)
					})
				})
			})
		})
	})
	return b.Bytes()
}

// signedAttributes returns the encoded contentType, signingTime and
// messageDigest attributes, concatenated in DER SET OF order.
func signedAttributes(messageDigest []byte, now time.Time) ([]byte, error) {
	attr := func(oid asn1.ObjectIdentifier, value func(*cryptobyte.Builder)) ([]byte, error) {
		var b cryptobyte.Builder
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oid)
			b.AddASN1(cbasn1.SET, value)
		})
		return b.Bytes()
	}
	var list [][]byte
	for _, a := range []struct {
		oid   asn1.ObjectIdentifier
		value func(*cryptobyte.Builder)
	}{
		{oidAttrContentType, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(oidSpcIndirectData) }},
		{oidAttrSigningTime, func(b *cryptobyte.Builder) { b.AddASN1UTCTime(now.UTC().Truncate(time.Second)) }},
		{oidAttrMessageDigest, func(b *cryptobyte.Builder) { b.AddASN1OctetString(messageDigest) }},
	} {
		enc, err := attr(a.oid, a.value)
		if err != nil {
			return nil, fmt.Errorf("encoding signed attributes: %w", err)
		}
		list = append(list, enc)
	}
	// DER orders the elements of a SET OF by their encodings.
	slices.SortFunc(list, bytes.Compare)
	return bytes.Join(list, nil), nil
}
