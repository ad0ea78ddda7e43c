package main

// `audit monitor URL --checkpoint FILE --key VERIFIER`: the check a third
// party runs against a served log, with nothing but its public tiles. It
// fetches the served checkpoint, checks its signature (and, with
// --witness/--quorum, its cosignatures), proves from the hash tiles that
// it extends the checkpoint kept in FILE, and only then replaces FILE with
// it. A log that shows a checkpoint of the same size with another root, a
// smaller one, or one that does not extend FILE's, has forked or been cut:
// the monitor refuses, and FILE keeps the last good one as evidence.

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/tlog"
)

// tileClient reads a served log's tiles (C2SP tlog-tiles paths) over
// HTTP: a tlog.TileReader for tlog.TileHashReader, which checks every
// tile against the tree it was asked for.
type tileClient struct {
	ctx   context.Context
	base  string // ends in "/"
	hc    *http.Client
	token string // for the entry bundles, "" for none
}

func (c *tileClient) get(path string, limit int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(c.ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", c.base+path, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", c.base+path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("GET %s: more than %d bytes", c.base+path, limit)
	}
	return data, nil
}

func (c *tileClient) Height() int { return 8 }

func (c *tileClient) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		data, err := c.get("tile/"+strings.TrimPrefix(t.Path(), "tile/8/"), int64(t.W)*tlog.HashSize)
		if err != nil {
			return nil, err
		}
		out[i] = data
	}
	return out, nil
}

func (c *tileClient) SaveTiles([]tlog.Tile, [][]byte) {}

// monitorStep checks the served checkpoint against the kept one and
// returns the served one, or why it does not extend the kept one.
func monitorStep(c *tileClient, kept []byte, vkey string, policy *witnessPolicy) (served []byte, old, cur AuditCheckpoint, err error) {
	// The kept checkpoint passed when it was served; it may be older than
	// the witnesses, so it needs the log's signature only.
	if old, err = (&witnessPolicy{}).check(kept, vkey); err != nil {
		return nil, old, cur, fmt.Errorf("the kept checkpoint: %w", err)
	}
	if served, err = c.get("checkpoint", 1<<20); err != nil {
		return nil, old, cur, err
	}
	if cur, err = policy.check(served, vkey); err != nil {
		return nil, old, cur, fmt.Errorf("the served checkpoint: %w", err)
	}
	switch {
	case cur.Legacy:
		return nil, old, cur, errors.New("the served checkpoint has no tree root (the first form): the log is not served as a Merkle tree")
	case old.Origin != cur.Origin && !old.Legacy:
		return nil, old, cur, fmt.Errorf("the served checkpoint is of log %q, the kept one of %q", cur.Origin, old.Origin)
	case cur.Size < old.Size:
		return nil, old, cur, fmt.Errorf("the log shrank: the served checkpoint covers %d rows, the kept one %d (rows cut, or another log under the same key)", cur.Size, old.Size)
	case old.Legacy:
		// The first form has no root to prove from: it is replaced by the
		// first tree head seen, as a new start.
	case cur.Size == old.Size && cur.Root != old.Root:
		return nil, old, cur, fmt.Errorf("the log forked: two checkpoints of size %d with different roots (%s served, %s kept), both signed by the log's key", cur.Size, cur.Root, old.Root)
	case cur.Size > old.Size && old.Size > 0:
		proof, err := tlog.ProveTree(cur.Size, old.Size, tlog.TileHashReader(cur.Tree(), c))
		if err != nil {
			return nil, old, cur, fmt.Errorf("reading the consistency proof from the tiles: %w", err)
		}
		if err := tlog.CheckTree(proof, cur.Size, cur.Root, old.Size, old.Root); err != nil {
			return nil, old, cur, fmt.Errorf("the log forked: the served checkpoint of size %d does not extend the kept one of size %d (%v)", cur.Size, old.Size, err)
		}
	}
	return served, old, cur, nil
}

// newRows reads rows from+1 to tree.N from the entry bundles, and checks
// each one's leaf against the tree's (read from the tiles, which are
// checked against tree): the rows the served checkpoint added.
func newRows(c *tileClient, from int64, tree tlog.Tree) ([]AuditRow, error) {
	if from >= tree.N {
		return nil, nil
	}
	indexes := make([]int64, 0, tree.N-from)
	for i := from; i < tree.N; i++ {
		indexes = append(indexes, tlog.StoredHashIndex(0, i))
	}
	leaves, err := tlog.TileHashReader(tree, c).ReadHashes(indexes)
	if err != nil {
		return nil, fmt.Errorf("reading the leaf hashes from the tiles: %w", err)
	}
	var rows []AuditRow
	for n := from / 256; n*256 < tree.N; n++ {
		t := tlog.Tile{H: 8, L: -1, N: n, W: int(min(256, tree.N-n*256))}
		path := "tile/entries/" + strings.TrimPrefix(t.Path(), "tile/8/data/")
		bundle, err := c.get(path, int64(t.W)*(2+0xffff))
		if err != nil {
			return nil, err
		}
		entries, err := parseEntryBundle(bundle, t.W)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		for k, leaf := range entries {
			i := n*256 + int64(k)
			if i < from {
				continue
			}
			if tlog.RecordHash(leaf) != leaves[i-from] {
				return nil, fmt.Errorf("%s: row %d is not the tree's leaf %d", path, i+1, i)
			}
			r, err := parseLeafData(leaf)
			if err != nil || r.ID != i+1 {
				return nil, fmt.Errorf("%s: leaf %d is not row %d (%v)", path, i, i+1, err)
			}
			rows = append(rows, r)
		}
	}
	return rows, nil
}

// parseEntryBundle splits a C2SP tlog-tiles entry bundle into its w
// entries, each after its length as 2 bytes, big-endian.
func parseEntryBundle(bundle []byte, w int) ([][]byte, error) {
	entries := make([][]byte, 0, w)
	for len(bundle) > 0 && len(entries) < w {
		if len(bundle) < 2 || len(bundle)-2 < int(binary.BigEndian.Uint16(bundle)) {
			return nil, fmt.Errorf("entry %d is truncated", len(entries))
		}
		size := int(binary.BigEndian.Uint16(bundle))
		entries = append(entries, bundle[2:2+size])
		bundle = bundle[2+size:]
	}
	if len(entries) != w || len(bundle) != 0 {
		return nil, fmt.Errorf("%d entries and %d bytes more, want %d entries", len(entries), len(bundle), w)
	}
	return entries, nil
}

func cmdAuditMonitor(e *env, args []string) error {
	fs := flag.NewFlagSet("audit monitor", flag.ContinueOnError)
	checkpoint := fs.String("checkpoint", "", "`file` holding the last checkpoint seen (start with one from a trusted copy); replaced by the served one when it extends it")
	vkey := fs.String("key", "", "the log's checkpoint verifier `key` (audit key)")
	tokenFile := fs.String("token-file", "", "`file` holding the server's token: also read the rows added, check each against the tree and list them")
	var policy witnessPolicy
	policy.addFlags(fs)
	// Flags may come after the URL, as the usage line writes them.
	var url string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		url, args = args[0], args[1:]
	}
	if err := parseFlags(fs, e, args); err != nil {
		return err
	}
	if url == "" && fs.NArg() == 1 {
		url = fs.Arg(0)
	} else if fs.NArg() != 0 || url == "" {
		return usagef("audit monitor takes one URL: the address the log is served at")
	}
	if *checkpoint == "" || *vkey == "" {
		return usagef("audit monitor needs --checkpoint FILE and --key VERIFIER")
	}
	if err := policy.parse(); err != nil {
		return err
	}
	kept, err := readInput(*checkpoint, "checkpoint", maxKeyFileSize)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c := &tileClient{ctx: ctx, base: strings.TrimSuffix(url, "/") + "/", hc: &http.Client{Timeout: time.Minute}}
	if *tokenFile != "" {
		if c.token, err = readSecret(*tokenFile); err != nil {
			return err
		}
	}
	served, old, cur, err := monitorStep(c, kept, *vkey, &policy)
	if err != nil {
		return fmt.Errorf("audit monitor %s: %w; %s is unchanged", url, err, *checkpoint)
	}
	if c.token != "" {
		from := old.Size
		if old.Legacy {
			from = 0
		}
		rows, err := newRows(c, from, cur.Tree())
		if err != nil {
			return fmt.Errorf("audit monitor %s: %w; %s is unchanged", url, err, *checkpoint)
		}
		for _, r := range rows {
			fmt.Fprintln(e.stdout, r.String())
		}
	}
	if err := writeFileAtomic(*checkpoint, func(f *os.File) error {
		_, err := f.Write(served)
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "log consistent: size %d extends the kept size %d (%d rows added), root %s; %s updated\n",
		cur.Size, old.Size, cur.Size-old.Size, cur.Root, *checkpoint)
	return nil
}
