// Command merkle checks a tree's inclusion and consistency proofs with
// github.com/transparency-dev/merkle, an implementation of RFC 6962's
// checks independent of golang.org/x/mod/sumdb/tlog. The tests build it
// (tlog_test.go) in a module of its own: it is no part of the program.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
)

type input struct {
	Size      uint64
	Root      []byte
	Inclusion []struct {
		Index uint64
		Leaf  []byte
		Proof [][]byte
	}
	Consistency []struct {
		Size  uint64
		Root  []byte
		Proof [][]byte
	}
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Println("FAIL: reading the input:", err)
		os.Exit(1)
	}
	h := rfc6962.DefaultHasher
	for _, p := range in.Inclusion {
		if err := proof.VerifyInclusion(h, p.Index, in.Size, h.HashLeaf(p.Leaf), p.Proof, in.Root); err != nil {
			fmt.Printf("FAIL: inclusion of leaf %d: %v\n", p.Index, err)
			os.Exit(1)
		}
	}
	for _, p := range in.Consistency {
		if err := proof.VerifyConsistency(h, p.Size, in.Size, p.Proof, p.Root, in.Root); err != nil {
			fmt.Printf("FAIL: consistency from %d to %d: %v\n", p.Size, in.Size, err)
			os.Exit(1)
		}
	}
	fmt.Printf("ok: root of %d leaves, %d inclusion proofs, %d consistency proofs\n", in.Size, len(in.Inclusion), len(in.Consistency))
}
