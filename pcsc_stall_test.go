package main

import (
	"crypto"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// The waits on a hostile pcscd or card are bounded: GET RESPONSE chains,
// each reader's share of a search for the token, and one token operation
// as a whole; what gave up says which reader it was waiting for.

// shortTokenTimeouts makes the bounds short for a test.
func shortTokenTimeouts(t *testing.T, reader, op time.Duration) {
	oldReader, oldOp := readerTimeout, tokenOpTimeout
	readerTimeout, tokenOpTimeout = reader, op
	t.Cleanup(func() { readerTimeout, tokenOpTimeout = oldReader, oldOp })
}

// within runs fn, failing the test if it has not returned after limit (the
// goroutine is then left to the hook that ends it).
func within(t *testing.T, limit time.Duration, what string, fn func() error) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	ch := make(chan error, 1)
	go func() { ch <- fn() }()
	select {
	case err := <-ch:
		return time.Since(start), err
	case <-time.After(limit):
		t.Fatalf("%s: still running after %s", what, limit)
	}
	return 0, nil
}

// TestPCSCGetResponseBounded: a card answering every APDU of a signature
// with 61 10 and no data gets a bounded number of GET RESPONSEs, and a
// one-line error.
func TestPCSCGetResponseBounded(t *testing.T) {
	d := newFakePCSCD(t, 4)
	_, signer, pub := fakeTokenSigner(t, d)
	var n atomic.Int64
	d.setTransmit(func(apdu, resp []byte) *fakeAnswer {
		if apdu[0] != 0 || (apdu[1] != insAuthenticate && apdu[1] != insGetResponse) {
			return nil
		}
		if n.Add(1) > 10000 {
			// Ends the loop of a client without a bound.
			return &fakeAnswer{data: []byte{0x6f, 0x00}}
		}
		return &fakeAnswer{data: []byte{0x61, 0x10}}
	})
	_, err := within(t, time.Minute, "endless GET RESPONSE", func() error { _, _, err := signDigest(t, signer, "x"); return err })
	oneLine(t, "endless GET RESPONSE", err, fmt.Sprintf("YubiKey %d", testTokenSerial), "still announced more data after 65 chunks")
	if got := n.Load(); got > pivMaxChunks+1 {
		t.Errorf("%d APDUs sent, want at most %d", got, pivMaxChunks+1)
	}
	d.setTransmit(nil)
	signVerified(t, signer, pub, "after the endless chain")
}

// TestPCSCStalledReaders: readers before the token's that stall Connect or
// Transmit, or whose card another program keeps (SHARING_VIOLATION), cost
// readerTimeout each: the token is found behind them.
func TestPCSCStalledReaders(t *testing.T) {
	shortTokenTimeouts(t, 300*time.Millisecond, time.Minute)
	for _, tc := range []struct {
		name  string
		stall func(cmd uint32) (pcscError, bool)
	}{
		{"connect", func(cmd uint32) (pcscError, bool) { return 0, cmd == pcscConnect }},
		{"transmit", func(cmd uint32) (pcscError, bool) { return 0, cmd == pcscTransmit }},
		{"sharing violation", func(cmd uint32) (pcscError, bool) {
			if cmd == pcscBeginTransaction {
				return pcscErrSharingViolation, false
			}
			return 0, false
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newFakePCSCD(t, 4)
			for i := range 3 {
				d.addCard(t, uint32(11111111+i))
			}
			card := d.addCard(t, testTokenSerial)
			token := d.readers[3].name
			uri, pub := fakeKeyURI(t, card, 1)
			d.mu.Lock()
			d.onCommand = func(cmd uint32, reader string) (pcscError, bool) {
				if reader == "" || reader == token {
					return 0, false
				}
				return tc.stall(cmd)
			}
			d.mu.Unlock()
			var signer crypto.Signer
			took, err := within(t, 30*time.Second, tc.name, func() (err error) {
				signer, err = tokenSigner(YubiKeyConfig{}, uri)
				return err
			})
			if err != nil {
				t.Fatalf("token behind 3 stalled readers: %v (after %s)", err, took)
			}
			signVerified(t, signer, pub, "behind stalled readers")
		})
	}
}

// TestPCSCOperationCapped: sixteen readers that all stall cost one token
// operation tokenOpTimeout in all, not readerTimeout each, and the error
// names the readers; a signature whose answer stalls on an open session
// ends by tokenOpTimeout too, naming the token's reader, and the next
// signature finds the token again.
func TestPCSCOperationCapped(t *testing.T) {
	shortTokenTimeouts(t, time.Second, 1500*time.Millisecond)
	d := newFakePCSCD(t, 4)
	for i := range pcscMaxReaders - 1 {
		d.addCard(t, uint32(11111111+i))
	}
	card := d.addCard(t, testTokenSerial)
	token := d.readers[pcscMaxReaders-1].name
	uri, pub := fakeKeyURI(t, card, 1)
	stall := func(cmd uint32, reader string) (pcscError, bool) { return 0, cmd == pcscConnect }
	d.mu.Lock()
	d.onCommand = stall
	d.mu.Unlock()
	took, err := within(t, time.Minute, "16 stalled readers", func() error {
		_, err := tokenSigner(YubiKeyConfig{}, uri)
		return err
	})
	oneLine(t, "16 stalled readers", err, fmt.Sprintf("YubiKey %d is not connected to this host", testTokenSerial),
		`connecting to the card in "Fake Reader 00 00"`, "no answer in time", "and those after it not looked at: out of time")
	if took > 10*time.Second {
		t.Errorf("16 stalled readers took %s, with %s for one operation", took, tokenOpTimeout)
	}

	d.mu.Lock()
	d.onCommand = nil
	d.mu.Unlock()
	signer, err := tokenSigner(YubiKeyConfig{}, uri)
	if err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	d.onCommand = func(cmd uint32, reader string) (pcscError, bool) { return 0, cmd == pcscTransmit && reader == token }
	d.mu.Unlock()
	took, err = within(t, time.Minute, "stalled signature", func() error { _, _, err := signDigest(t, signer, "x"); return err })
	oneLine(t, "stalled signature", err, fmt.Sprintf("YubiKey %d in reader %q", testTokenSerial, token), "no answer in time")
	if took > 10*time.Second {
		t.Errorf("a stalled signature took %s, with %s for one operation", took, tokenOpTimeout)
	}
	d.mu.Lock()
	d.onCommand = nil
	d.mu.Unlock()
	signVerified(t, signer, pub, "after the stall")
}
