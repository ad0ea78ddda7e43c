// Command debusine-signing is a signing service for the Debusine build
// system: a key store with an append-only audit log, UEFI Secure Boot and
// OpenPGP signing, a Debusine signing worker and an offline command line.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/BurntSushi/toml"
)

// Exit statuses, as Debusine's own debusine-signing uses them.
const (
	exitOK         = 0
	exitUnexpected = 1
	exitUsage      = 2
	exitError      = 3
)

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// Config is the TOML configuration; signing.toml.example documents it.
type Config struct {
	Database string `toml:"database"`
	// DatabasePasswordFile holds the PostgreSQL password (a systemd
	// credential, for example); never in database itself.
	DatabasePasswordFile string   `toml:"database_password_file"`
	ServiceKeys          []string `toml:"service_keys"`
	TrustedCerts         []string `toml:"trusted_certs"`
	// AuditOrigin names the audit log in its checkpoints (checkpoint.go);
	// "" for the default derived from the audit key.
	AuditOrigin string        `toml:"audit_origin"`
	Worker      WorkerConfig  `toml:"worker"`
	YubiKey     YubiKeyConfig `toml:"yubikey"`
	PKCS11      PKCS11Config  `toml:"pkcs11"`
	Relay       RelayConfig   `toml:"relay"`
	// AuditServe configures `audit serve`; Witnesses cosign checkpoints.
	AuditServe AuditServeConfig `toml:"audit_serve"`
	Witnesses  []WitnessConfig  `toml:"witness"`

	// path is the file the configuration came from, "" for the embedded
	// default.
	path string
}

// WorkerConfig is the [worker] table.
type WorkerConfig struct {
	APIURL              string `toml:"api_url"`
	TokenFile           string `toml:"token_file"`
	ActivationTokenFile string `toml:"activation_token_file"`
	CAFile              string `toml:"ca_file"`
	FQDN                string `toml:"fqdn"`
	LogFile             string `toml:"log_file"`
	LogLevel            string `toml:"log_level"`
	// RetryFor is how long transfers to and from the server are retried
	// through an outage before the task fails (default 10 minutes).
	RetryFor duration `toml:"retry_for"`
	// CheckpointFile receives a signed audit checkpoint after each task.
	CheckpointFile string `toml:"checkpoint_file"`
	// SignKernelModules: sign .ko files of a sign task's input (default
	// true); false keeps Debusine's behaviour of skipping them.
	SignKernelModules *bool `toml:"sign_kernel_modules"`
}

// duration is a TOML string such as "10m" or "90s".
type duration struct{ time.Duration }

func (d *duration) UnmarshalText(text []byte) error {
	v, err := time.ParseDuration(string(text))
	if err != nil {
		return err
	}
	if v < 0 {
		return fmt.Errorf("duration %q is negative", text)
	}
	d.Duration = v
	return nil
}

// YubiKeyConfig is the [yubikey] table.
type YubiKeyConfig struct {
	PINFile           string `toml:"pin_file"`
	ManagementKeyFile string `toml:"management_key_file"`
	PINPolicy         string `toml:"pin_policy"`
	TouchPolicy       string `toml:"touch_policy"`
}

// loadConfig reads a configuration file. Unknown keys are errors, with the
// line they are on, so that a misspelt key never silently falls back to a
// default. Relative paths are taken relative to the file's directory.
func loadConfig(path string) (*Config, error) {
	data, err := readInput(path, "configuration", maxTextSize)
	if err != nil {
		return nil, err
	}
	cfg := &Config{path: path}
	md, err := toml.Decode(string(data), cfg)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			return nil, fmt.Errorf("configuration %s:%d: %s", path, perr.Position.Line, perr.Message)
		}
		return nil, fmt.Errorf("configuration %s: %w", path, err)
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		k := undecoded[0]
		return nil, fmt.Errorf("configuration %s:%d: unknown key %q", path, keyLine(data, k), k.String())
	}
	if err := cfg.PKCS11.check(); err != nil {
		return nil, fmt.Errorf("configuration %s: %w", path, err)
	}
	if cfg.AuditOrigin != "" {
		if err := checkOrigin(cfg.AuditOrigin); err != nil {
			return nil, fmt.Errorf("configuration %s: %w", path, err)
		}
	}
	dir := filepath.Dir(path)
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	if !isPostgres(cfg.Database) {
		abs(&cfg.Database)
	}
	abs(&cfg.DatabasePasswordFile)
	for i := range cfg.ServiceKeys {
		abs(&cfg.ServiceKeys[i])
	}
	for _, p := range []*string{&cfg.Worker.TokenFile, &cfg.Worker.ActivationTokenFile, &cfg.Worker.CAFile,
		&cfg.Worker.LogFile, &cfg.Worker.CheckpointFile, &cfg.YubiKey.PINFile, &cfg.YubiKey.ManagementKeyFile,
		&cfg.AuditServe.Socket, &cfg.AuditServe.TokenFile, &cfg.AuditServe.CheckpointFile} {
		abs(p)
	}
	for _, p := range cfg.Relay.paths() {
		abs(p)
	}
	return cfg, nil
}

// keyLine finds the line of a TOML key for error messages: the first line
// defining its last component inside its table. BurntSushi/toml keeps key
// positions to itself.
func keyLine(data []byte, key toml.Key) int {
	table := strings.Join(key[:len(key)-1], ".")
	name := key[len(key)-1]
	current := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(text, "[") {
			current = strings.Trim(text, "[] ")
			if current == strings.Join(key, ".") {
				return line
			}
			continue
		}
		if k, _, ok := strings.Cut(text, "="); ok && current == table && strings.Trim(strings.TrimSpace(k), `"'`) == name {
			return line
		}
	}
	return 0
}

// defaultConfig is the embedded default: a state directory holding the
// database and a service key created on first use.
func defaultConfig(stderr io.Writer) (*Config, error) {
	dir, err := defaultStateDir()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	cfg := &Config{
		Database:    filepath.Join(dir, "signing.sqlite3"),
		ServiceKeys: []string{filepath.Join(dir, "service-key")},
	}
	fmt.Fprintf(stderr, "debusine-signing: no configuration file (--config or DEBUSINE_SIGNING_CONFIG); using the default store in %s\n", dir)
	if _, err := os.Stat(cfg.ServiceKeys[0]); errors.Is(err, os.ErrNotExist) {
		if err := generateServiceKey(cfg.ServiceKeys[0]); err != nil {
			return nil, err
		}
		fmt.Fprintf(stderr, "debusine-signing: created service key %s (mode 0600); back it up: without it the stored keys are lost\n", cfg.ServiceKeys[0])
	}
	return cfg, nil
}

// env is what a command runs with.
type env struct {
	configPath string
	cfg        *Config
	store      *Store
	stdout     io.Writer
	stderr     io.Writer
	// upgradeStore lets openStore adopt a version 1 store (upgrade-store).
	upgradeStore bool
}

func (e *env) config() (*Config, error) {
	if e.cfg != nil {
		return e.cfg, nil
	}
	var err error
	if e.configPath != "" {
		e.cfg, err = loadConfig(e.configPath)
	} else {
		e.cfg, err = defaultConfig(e.stderr)
	}
	return e.cfg, err
}

func (e *env) openStore() (*Store, error) {
	if e.store != nil {
		return e.store, nil
	}
	cfg, err := e.config()
	if err != nil {
		return nil, err
	}
	if cfg.Database == "" {
		// Only the commands that open the store need it: a relay's
		// connected host has no store.
		return nil, fmt.Errorf("configuration %s: \"database\" is not set, and this command opens the key store", cfg.path)
	}
	st, err := openOrUpgradeStore(cfg.Database, cfg.DatabasePasswordFile, cfg.ServiceKeys, e.upgradeStore)
	if err != nil {
		return nil, err
	}
	for _, w := range st.warnings {
		fmt.Fprintf(e.stderr, "debusine-signing: warning: %s\n", w)
	}
	st.yubikey = cfg.YubiKey
	st.pkcs11 = cfg.PKCS11
	st.auditOrigin = cfg.AuditOrigin
	st.witnesses = cfg.Witnesses
	e.store = st
	return st, nil
}

// command is one line of the command table: a command, or a subcommand
// named "audit verify", with the arguments and the one line its help shows.
// secrets says whether the command may read or make a secret (a service,
// bundle or result key, a token, a password, a PIN, a private key): run
// hardens the process (harden) before such a command parses its first
// argument. The table's entries are positional, so a new command cannot
// leave it unsaid.
type command struct {
	name, args, summary string
	secrets             bool
	run                 func(e *env, args []string) error
}

var commands []command

func init() {
	commands = []command{
		{"generate-service-key", "PATH", "create a service key file (mode 0600)", true, cmdGenerateServiceKey},
		{"reencrypt-keys", "", "re-seal every stored key to the first service key", true, cmdReencryptKeys},
		{"keys", "[--json]", "list the stored keys", true, cmdKeys},
		{"generate-key", "--purpose P --description TEXT [--yubikey SERIAL --slot 9c | --pkcs11 URI [--bits N]]", "generate a key, print its fingerprint", true, cmdGenerateKey},
		{"import-key", "--purpose P --private-key FILE [--certificate FILE] [--passphrase-file FILE] [--description TEXT]", "import an existing private key", true, cmdImportKey},
		{"sign", "--purpose P --key FPR [--key FPR...] [--mode M] [--output PATH] [--type T] [--replace] FILE...", "sign files", true, cmdSign},
		{"register-pkcs11-static-key", "PURPOSE URI CERTIFICATE|PUBLIC-KEY DESCRIPTION", "register a key held on a PKCS#11 token", true, cmdRegisterPKCS11},
		{"register-yubikey-key", "--purpose uefi --serial N --slot 9c --description T [--certificate F]", "register a key held on a YubiKey", true, cmdRegisterYubiKey},
		{"export-public-key", "--purpose P --key FPR", "print a key's public key", true, cmdExportPublicKey},
		{"upgrade-store", "", "adopt a schema-1 store, print the head it adopts", true, cmdUpgradeStore},
		{"audit", "[--json] [--key FPR] [--work-request N]", "list the audit log", true, cmdAudit},
		{"audit verify", "[--checkpoint FILE [--witness KEY... --quorum N]]", "verify the audit log (exit 3 if broken)", true, cmdAuditVerify},
		{"audit checkpoint", "[--output FILE]", "print a signed checkpoint of the audit log", true, cmdAuditCheckpoint},
		{"audit key", "", "print the verifier key of the checkpoints", true, cmdAuditKey},
		{"audit prove", "[--checkpoint FILE] [-o RECEIPT] ROW|--sha256 HEX|--file FILE", "write a receipt: a row and its proof", true, cmdAuditProve},
		{"audit verify-receipt", "--key VERIFIER [--file FILE] [--witness KEY... --quorum N] RECEIPT", "check a receipt offline", true, cmdAuditVerifyReceipt},
		{"audit serve", "[--listen ADDR]", "serve the audit log read-only ([audit_serve])", true, cmdAuditServe},
		{"audit monitor", "URL --checkpoint FILE --key VERIFIER [--witness KEY... --quorum N] [--token-file F]", "follow a served audit log, refuse forks", true, cmdAuditMonitor},
		{"worker", "[--once]", "run the Debusine signing worker ([worker])", true, cmdWorker},
		{"import-debusine-db", "[--dry-run] [--password-file F] CONNINFO", "import Debusine's signing database", true, cmdImportDebusineDB},
		{"relay generate-key", "--name NAME FILE", "write a relay key, print its public key", true, cmdRelayGenerateKey},
		{"relay fetch", "--output BUNDLE [--wait 10s]", "take work for offline keys into a bundle", true, cmdRelayFetch},
		{"relay sign", "BUNDLE --output RESULT", "offline host: sign a bundle into a result", true, cmdRelaySign},
		{"relay complete", "RESULT", "check a result and deliver it to the server", true, cmdRelayComplete},
		{"check", "[--full]", "check the set-up, change nothing (exit 3 if bad)", true, cmdCheck},
		{"version", "", "print the version, VCS revision and build settings", false, cmdVersion},
	}
}

// helpWidth is the width every help text fits in.
const helpWidth = 80

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: debusine-signing [--config FILE] COMMAND [ARGS]\n\ncommands:\n")
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	for _, c := range commands {
		fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
	}
	tw.Flush()
	fmt.Fprint(w, `
"debusine-signing help COMMAND" or "debusine-signing COMMAND --help" shows a
command's arguments and options; man debusine-signing says more.

options:
  --config FILE  the configuration (also DEBUSINE_SIGNING_CONFIG); without
                 one, a default store in the per-user state directory
  --version      print the version and exit
`)
}

// commandUsage is a command's help: its usage line, wrapped, what it does,
// and its options.
func commandUsage(w io.Writer, c *command, fs *flag.FlagSet) {
	fmt.Fprint(w, wrap("usage: debusine-signing "+c.name+" "+c.args, "         "))
	fmt.Fprintf(w, "\n%s\n", c.summary)
	n := 0
	fs.VisitAll(func(f *flag.Flag) {
		if n++; n == 1 {
			fmt.Fprint(w, "\noptions:\n")
		}
		arg, text := flag.UnquoteUsage(f)
		if arg != "" {
			arg = " " + arg
		}
		fmt.Fprintf(w, "  %s%s\n", flagName(f.Name), arg)
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			text += " (default " + f.DefValue + ")"
		}
		fmt.Fprint(w, wrap("      "+text, "      "))
	})
}

// flagName is how help and man pages write an option: -o, --output.
func flagName(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// wrap breaks text into lines of at most helpWidth columns at spaces
// outside brackets ("[--mode M]" stays whole), starting each line after the
// first with indent.
func wrap(text, indent string) string {
	var words []string
	depth := 0
	for _, f := range strings.Fields(text) {
		if depth > 0 {
			words[len(words)-1] += " " + f
		} else {
			words = append(words, f)
		}
		depth += strings.Count(f, "[") - strings.Count(f, "]")
	}
	var b strings.Builder
	line := ""
	for _, word := range words {
		switch {
		case line == "":
			line = strings.Repeat(" ", len(text)-len(strings.TrimLeft(text, " "))) + word
		case len(line)+1+len(word) > helpWidth:
			b.WriteString(line + "\n")
			line = indent + word
		default:
			line += " " + word
		}
	}
	b.WriteString(line + "\n")
	return b.String()
}

// findCommand finds the command args name, a subcommand first ("audit
// verify"), and returns it with its arguments.
func findCommand(args []string) (*command, []string) {
	if len(args) > 1 {
		for i := range commands {
			if commands[i].name == args[0]+" "+args[1] {
				return &commands[i], args[2:]
			}
		}
	}
	for i := range commands {
		if commands[i].name == args[0] {
			return &commands[i], args[1:]
		}
	}
	return nil, nil
}

// subcommands lists the subcommands of name ("relay": generate-key, ...).
func subcommands(name string) []string {
	var subs []string
	for _, c := range commands {
		if sub, ok := strings.CutPrefix(c.name, name+" "); ok {
			subs = append(subs, sub)
		}
	}
	return subs
}

// globalFlags are the options before the command.
func globalFlags(e *env) (fs *flag.FlagSet, showVersion *bool) {
	fs = flag.NewFlagSet("debusine-signing", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() { usage(e.stderr) }
	fs.StringVar(&e.configPath, "config", e.configPath, "configuration `file`")
	return fs, fs.Bool("version", false, "print the version and exit")
}

// run is the whole program; main only maps it to the process.
func run(args []string, stdout, stderr io.Writer) (status int) {
	e := &env{stdout: stdout, stderr: stderr, configPath: os.Getenv("DEBUSINE_SIGNING_CONFIG")}
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(stderr, "debusine-signing: internal error: %v\n%s", r, debug.Stack())
			status = exitUnexpected
		}
		if e.store != nil {
			e.store.Close()
		}
	}()
	fs, showVersion := globalFlags(e)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if *showVersion {
		fmt.Fprint(stdout, versionReport())
		return exitOK
	}
	args = fs.Args()
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	help := args[0] == "help"
	if help {
		if len(args) == 1 {
			usage(stdout)
			return exitOK
		}
		// help COMMAND [SUBCOMMAND] is COMMAND [SUBCOMMAND] --help.
		args = args[1:]
	}
	c, rest := findCommand(args)
	if c == nil {
		if subs := subcommands(args[0]); len(subs) > 0 {
			return report(stderr, usagef("%s needs a subcommand: %s", args[0], strings.Join(subs, ", ")))
		}
		fmt.Fprintf(stderr, "debusine-signing: unknown command %q (see debusine-signing help)\n", args[0])
		return exitUsage
	}
	if help {
		rest = []string{"--help"}
	}
	if c.secrets {
		harden()
	}
	return report(stderr, c.run(e, rest))
}

func report(stderr io.Writer, err error) int {
	if err == nil {
		return exitOK
	}
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	fmt.Fprintf(stderr, "debusine-signing: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
	var ue usageError
	if errors.As(err, &ue) || errors.Is(err, errFlagParse) {
		return exitUsage
	}
	return exitError
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

var errFlagParse = errors.New("bad arguments")

// helpShown is what parseFlags returns after printing a command's help: it
// is flag.ErrHelp (exit status 0), and carries the command's flags.
type helpShown struct{ fs *flag.FlagSet }

func (helpShown) Error() string        { return flag.ErrHelp.Error() }
func (helpShown) Is(target error) bool { return target == flag.ErrHelp }

// parseFlags parses a command's flags, named as the command is in the
// command table. --help prints the command's help on stdout; on a mistake
// the flag package has already said what was wrong.
func parseFlags(fs *flag.FlagSet, e *env, args []string) error {
	fs.SetOutput(e.stderr)
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c, _ := findCommand(strings.Fields(fs.Name()))
			if c == nil {
				c = &command{name: fs.Name()}
			}
			commandUsage(e.stdout, c, fs)
			return helpShown{fs}
		}
		return fmt.Errorf("%s: %w (see debusine-signing help %s)", fs.Name(), errFlagParse, fs.Name())
	}
	return nil
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func cmdVersion(e *env, args []string) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	if err := parseFlags(fs, e, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("version takes no arguments")
	}
	fmt.Fprint(e.stdout, versionReport())
	return nil
}

func cmdGenerateServiceKey(e *env, args []string) error {
	fs := flag.NewFlagSet("generate-service-key", flag.ContinueOnError)
	if err := parseFlags(fs, e, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("generate-service-key takes one argument: the PATH of the new key file")
	}
	return generateServiceKey(fs.Arg(0))
}

func cmdReencryptKeys(e *env, args []string) error {
	fs := flag.NewFlagSet("reencrypt-keys", flag.ContinueOnError)
	if err := parseFlags(fs, e, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("reencrypt-keys takes no arguments")
	}
	st, err := e.openStore()
	if err != nil {
		return err
	}
	moved, auditKeyMoved, err := st.ReencryptKeys()
	if err != nil {
		return err
	}
	if auditKeyMoved {
		fmt.Fprintln(e.stdout, "re-encrypted the audit key")
	}
	for _, k := range moved {
		fmt.Fprintf(e.stdout, "re-encrypted %s\n", k)
	}
	fmt.Fprintf(e.stderr, "debusine-signing: %d key(s) re-encrypted to %s\n", len(moved), st.serviceKeys[0].path)
	return nil
}

func cmdKeys(e *env, args []string) error {
	fs := flag.NewFlagSet("keys", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, e, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("keys takes no arguments")
	}
	st, err := e.openStore()
	if err != nil {
		return err
	}
	// Keys refused by their checks are named after the others are listed.
	keys, refused := st.Keys()
	if refused != nil && !errors.Is(refused, errKeyRefused) {
		return refused
	}
	type keyInfo struct {
		Purpose     string `json:"purpose"`
		Fingerprint string `json:"fingerprint"`
		Storage     string `json:"storage"`
		CreatedAt   string `json:"created_at"`
		Description string `json:"description"`
	}
	var infos []keyInfo
	for _, k := range keys {
		storage, err := k.Storage()
		if err != nil {
			return err
		}
		infos = append(infos, keyInfo{k.Purpose, k.Fingerprint, storage, k.CreatedAt.Format("2006-01-02T15:04:05Z"), k.Description})
	}
	if *asJSON {
		if infos == nil {
			infos = []keyInfo{}
		}
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(infos); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(e.stdout, 2, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "PURPOSE\tFINGERPRINT\tSTORAGE\tCREATED\tDESCRIPTION")
		for _, i := range infos {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", i.Purpose, i.Fingerprint, i.Storage, i.CreatedAt, i.Description)
		}
		tw.Flush()
	}
	return refused
}

func checkPurpose(p string) error {
	if p != purposeUEFI && p != purposeOpenPGP {
		return usagef("--purpose must be %s or %s, not %q", purposeUEFI, purposeOpenPGP, p)
	}
	return nil
}

func cmdImportKey(e *env, args []string) error {
	fs := flag.NewFlagSet("import-key", flag.ContinueOnError)
	purpose := fs.String("purpose", "", "uefi or openpgp")
	privateKey := fs.String("private-key", "", "private key `file` (PEM for uefi, armoured for openpgp)")
	certificate := fs.String("certificate", "", "certificate `file` (PEM, uefi)")
	description := fs.String("description", "", "description")
	passphraseFile := fs.String("passphrase-file", "", "`file` holding the passphrase of an openpgp key")
	if err := parseFlags(fs, e, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("import-key takes no positional arguments")
	}
	if err := checkPurpose(*purpose); err != nil {
		return err
	}
	if *privateKey == "" {
		return usagef("import-key needs --private-key")
	}
	keyData, err := readInput(*privateKey, "private key", maxKeyFileSize)
	if err != nil {
		return err
	}
	defer clear(keyData)
	var fpr string
	switch *purpose {
	case purposeUEFI:
		if *certificate == "" {
			return usagef("import-key --purpose uefi needs --certificate")
		}
		if *passphraseFile != "" {
			return usagef("--passphrase-file is for openpgp keys")
		}
		certData, err := readInput(*certificate, "certificate", maxKeyFileSize)
		if err != nil {
			return err
		}
		st, err := e.openStore()
		if err != nil {
			return err
		}
		if fpr, err = importUEFIKey(st, keyData, certData, *description); err != nil {
			return err
		}
	case purposeOpenPGP:
		if *certificate != "" {
			return usagef("--certificate is for uefi keys")
		}
		var passphrase []byte
		if *passphraseFile != "" {
			data, err := readInput(*passphraseFile, "passphrase file", maxKeyFileSize)
			if err != nil {
				return err
			}
			defer clear(data)
			// Like gpg --passphrase-file: the first line is the passphrase.
			passphrase, _, _ = bytes.Cut(data, []byte("\n"))
		}
		st, err := e.openStore()
		if err != nil {
			return err
		}
		if fpr, err = importOpenPGPKey(st, keyData, passphrase, *description); err != nil {
			return err
		}
	}
	fmt.Fprintln(e.stdout, fpr)
	return nil
}

func cmdGenerateKey(e *env, args []string) error {
	fs := flag.NewFlagSet("generate-key", flag.ContinueOnError)
	purpose := fs.String("purpose", "", "uefi or openpgp")
	description := fs.String("description", "", "description (openpgp: the user ID)")
	yubikey := fs.String("yubikey", "", "generate on the YubiKey with this serial `number` (uefi)")
	slot := fs.String("slot", "", "PIV `slot` for --yubikey (9c, 9a, 9d, 9e, 82..95)")
	p11URI := fs.String("pkcs11", "", "generate an RSA key on the PKCS#11 token this `URI` names; its id= (and object=) become the key's")
	bits := fs.Int("bits", 0, "RSA key size for --pkcs11 (default 2048; larger where the token allows)")
	if err := parseFlags(fs, e, args); err != nil {
		return err
	}
	if *bits != 0 && *p11URI == "" {
		return usagef("--bits is for --pkcs11")
	}
	if *p11URI != "" && (*yubikey != "" || *slot != "") {
		return usagef("--pkcs11 and --yubikey/--slot exclude each other")
	}
	if *p11URI != "" && *bits == 0 {
		*bits = uefiKeyBits
	}
	if *p11URI != "" && (*bits < uefiKeyBits || *bits%8 != 0) {
		return usagef("--bits %d: at least %d, a multiple of 8", *bits, uefiKeyBits)
	}
	if fs.NArg() != 0 {
		return usagef("generate-key takes no positional arguments")
	}
	if err := checkPurpose(*purpose); err != nil {
		return err
	}
	if *description == "" {
		return usagef("generate-key needs --description")
	}
	st, err := e.openStore()
	if err != nil {
		return err
	}
	var fpr string
	switch {
	case *yubikey != "" || *slot != "":
		fpr, err = generateYubiKeyCommand(st, *purpose, *description, *yubikey, *slot)
	case *p11URI != "" && *purpose == purposeUEFI:
		fpr, err = generateP11UEFIKey(st, *p11URI, *description, *bits, nil)
	case *p11URI != "":
		fpr, err = generateP11OpenPGPKey(st, *p11URI, *description, *bits, nil)
	case *purpose == purposeUEFI:
		fpr, err = generateUEFIKey(st, *description, nil)
	default:
		fpr, err = generateOpenPGPKey(st, *description, nil)
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, fpr)
	return nil
}

func cmdSign(e *env, args []string) error {
	fs := flag.NewFlagSet("sign", flag.ContinueOnError)
	purpose := fs.String("purpose", "", "uefi or openpgp")
	var keys stringList
	fs.Var(&keys, "key", "key `fingerprint` (openpgp: repeat to sign with several keys)")
	mode := fs.String("mode", "", "uefi: detached|attached; openpgp: detached|clear|debsign")
	output := fs.String("output", "", "output `path` (one FILE only; a directory for debsign)")
	typ := fs.String("type", "", "uefi: efi or linux-module (default: linux-module for FILEs named *.ko)")
	replace := fs.Bool("replace", false, "linux-module: replace a module's existing signature")
	if err := parseFlags(fs, e, args); err != nil {
		return err
	}
	if err := checkPurpose(*purpose); err != nil {
		return err
	}
	modules, err := kmodChosen(*purpose, *typ, *replace, fs.Args())
	if err != nil {
		return err
	}
	if *purpose == purposeUEFI && len(keys) != 1 {
		return usagef("sign --purpose uefi takes exactly one --key")
	}
	st, err := e.openStore()
	if err != nil {
		return err
	}
	if modules {
		return signKmodFiles(st, keys[0], *mode, *output, *replace, fs.Args())
	}
	if *purpose == purposeUEFI {
		return signUEFIFiles(st, keys[0], *mode, *output, fs.Args())
	}
	return signOpenPGPFiles(st, keys, *mode, *output, fs.Args())
}

func cmdRegisterPKCS11(e *env, args []string) error {
	fs := flag.NewFlagSet("register-pkcs11-static-key", flag.ContinueOnError)
	if err := parseFlags(fs, e, args); err != nil {
		return err
	}
	if fs.NArg() != 4 {
		return usagef("register-pkcs11-static-key takes PURPOSE URI CERTIFICATE|PUBLIC-KEY DESCRIPTION")
	}
	purpose, uri, certFile, description := fs.Arg(0), fs.Arg(1), fs.Arg(2), fs.Arg(3)
	if err := checkPurpose(purpose); err != nil {
		return err
	}
	what := "certificate"
	if purpose == purposeOpenPGP {
		what = "OpenPGP public key"
	}
	certData, err := readInput(certFile, what, maxKeyFileSize)
	if err != nil {
		return err
	}
	st, err := e.openStore()
	if err != nil {
		return err
	}
	register := registerPKCS11Key
	if purpose == purposeOpenPGP {
		register = registerP11OpenPGPKey
	}
	fpr, err := register(st, uri, certData, description)
	if err != nil {
		return err
	}
	if u, err := parseP11URI(uri); err == nil && u.hasPIN {
		fmt.Fprintln(e.stderr, "debusine-signing: warning: the PIN in the URI (pin-value) is stored in the database with it; prefer pin-source=FILE")
	}
	fmt.Fprintln(e.stdout, fpr)
	return nil
}

func cmdExportPublicKey(e *env, args []string) error {
	fs := flag.NewFlagSet("export-public-key", flag.ContinueOnError)
	purpose := fs.String("purpose", "", "uefi or openpgp")
	fpr := fs.String("key", "", "key fingerprint")
	if err := parseFlags(fs, e, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("export-public-key takes no positional arguments")
	}
	if err := checkPurpose(*purpose); err != nil {
		return err
	}
	if *fpr == "" {
		return usagef("export-public-key needs --key")
	}
	st, err := e.openStore()
	if err != nil {
		return err
	}
	k, err := st.Key(*purpose, *fpr)
	if err != nil {
		return err
	}
	_, err = e.stdout.Write(k.PublicKey)
	return err
}
