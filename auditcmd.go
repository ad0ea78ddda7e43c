package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"strconv"
	"text/tabwriter"
)

// cmdAudit lists the audit log; its subcommands are in the command table.
func cmdAudit(e *env, args []string) error {
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON")
	fpr := fs.String("key", "", "only rows of the key with this fingerprint")
	wr := fs.String("work-request", "", "only rows of this work request")
	if err := parseFlags(fs, e, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("audit takes no positional arguments (did you mean \"audit verify\", \"audit checkpoint\", \"audit key\", \"audit prove\" or \"audit verify-receipt\"?)")
	}
	var f AuditFilter
	f.Fingerprint = *fpr
	if *wr != "" {
		n, err := strconv.ParseInt(*wr, 10, 64)
		if err != nil {
			return usagef("--work-request must be a number, not %q", *wr)
		}
		f.WorkRequest = &n
	}
	st, err := e.openStore()
	if err != nil {
		return err
	}
	rows, err := st.AuditRows(f)
	if err != nil {
		return err
	}
	if *asJSON {
		if rows == nil {
			rows = []AuditRow{}
		}
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	tw := tabwriter.NewWriter(e.stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCREATED\tEVENT\tKEY\tWORK REQUEST\tDATA")
	for _, r := range rows {
		fmt.Fprintln(tw, r.String())
	}
	return tw.Flush()
}

// cmdAuditVerify verifies the schema, the chain and every row's
// authentication code, and with --checkpoint that the log still holds what
// a checkpoint covered.
func cmdAuditVerify(e *env, args []string) error {
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	checkpoint := fs.String("checkpoint", "", "signed checkpoint `file` (from audit checkpoint) the log must still hold")
	var policy witnessPolicy
	policy.addFlags(fs)
	if err := parseFlags(fs, e, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("audit verify takes no positional arguments")
	}
	if err := policy.parse(); err != nil {
		return err
	}
	if len(policy.witnesses) > 0 && *checkpoint == "" {
		return usagef("--witness applies to the checkpoint of --checkpoint FILE")
	}
	msg, err := readCheckpointFlag(*checkpoint)
	if err != nil {
		return err
	}
	st, err := e.openStore()
	if err != nil {
		return err
	}
	var v AuditVerification
	var cp AuditCheckpoint
	if msg != nil {
		v, cp, err = st.VerifyCheckpoint(msg)
		if err == nil && len(policy.witnesses) > 0 {
			var vkey string
			if vkey, err = st.CheckpointVerifierKey(); err == nil {
				_, err = policy.check(msg, vkey)
			}
		}
	} else {
		v, err = st.VerifyAudit()
	}
	if err != nil {
		return err
	}
	if v.Rows == 0 {
		fmt.Fprintln(e.stdout, "audit log is empty (no rows yet); schema and triggers as expected")
	} else {
		fmt.Fprintf(e.stdout, "audit log intact: %d rows, head %s, tree root %s; schema and triggers as expected\n", v.Rows, v.Head, v.Root)
	}
	if msg != nil {
		proof := ""
		if !cp.Legacy {
			proof = "; today's tree extends its tree (consistency proof checked)"
		}
		fmt.Fprintf(e.stdout, "checkpoint holds: the log still contains the %d rows it covered (%d added since)%s\n", cp.Size, int64(v.Rows)-cp.Size, proof)
		if len(policy.witnesses) > 0 {
			fmt.Fprintf(e.stdout, "checkpoint cosigned by at least %d of the %d witnesses given\n", policy.quorum, len(policy.witnesses))
		}
	}
	return nil
}

// cmdAuditCheckpoint prints a signed checkpoint of the log, or replaces
// --output FILE with it, cosigned by the configured witnesses.
func cmdAuditCheckpoint(e *env, args []string) error {
	fs := flag.NewFlagSet("audit checkpoint", flag.ContinueOnError)
	output := fs.String("output", "", "replace `file` with the checkpoint (the witnesses then start from its previous size)")
	if err := parseFlags(fs, e, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("audit checkpoint takes no positional arguments")
	}
	st, err := e.openStore()
	if err != nil {
		return err
	}
	var cp []byte
	var witnessErrs []error
	if *output != "" {
		witnessErrs, err = writeCheckpointFile(st, *output)
	} else {
		cp, witnessErrs, err = st.witnessedCheckpoint(nil)
	}
	if err != nil {
		return err
	}
	for _, err := range witnessErrs {
		fmt.Fprintf(e.stderr, "debusine-signing: warning: not cosigned: %v\n", err)
	}
	_, err = e.stdout.Write(cp)
	return err
}

// cmdAuditKey prints the note verifier key of the checkpoints.
func cmdAuditKey(e *env, args []string) error {
	fs := flag.NewFlagSet("audit key", flag.ContinueOnError)
	if err := parseFlags(fs, e, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("audit key takes no arguments")
	}
	st, err := e.openStore()
	if err != nil {
		return err
	}
	vkey, err := st.CheckpointVerifierKey()
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, vkey)
	return nil
}

// cmdUpgradeStore adopts a store at schema version 1, whose audit log has
// no authentication codes: its rows are verified as version 1 verified
// them, authenticated with a new audit key, and an audit row records the
// head adopted. Ordinary commands refuse such a store, so that a store
// rewritten as version 1 is never adopted without an administrator
// looking at the head it prints.
func cmdUpgradeStore(e *env, args []string) error {
	fs := flag.NewFlagSet("upgrade-store", flag.ContinueOnError)
	if err := parseFlags(fs, e, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("upgrade-store takes no arguments")
	}
	e.upgradeStore = true
	st, err := e.openStore()
	if err != nil {
		return err
	}
	vkey, err := st.CheckpointVerifierKey()
	if err != nil {
		return err
	}
	if st.adopted == nil {
		fmt.Fprintf(e.stdout, "the store already has authentication codes; nothing to adopt (audit key %s)\n", vkey)
		return nil
	}
	fmt.Fprintf(e.stdout, "adopted the audit log: %d rows, head %s\naudit key %s\n", st.adopted.Rows, st.adopted.Head, vkey)
	return nil
}
