package main

import (
	"context"
	"database/sql"
	_ "embed"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// The store runs on SQLite (the embedded default, one host) or on
// PostgreSQL (one store shared by several signing workers). The store's
// code and its SQL are shared: queries use PostgreSQL's $1, $2 placeholders,
// which SQLite reads too. What differs is here, in one engine value per
// database, and in the two schema files.

//go:embed schema_postgres.sql
var schemaPostgresSQL string

// engine is what differs between the two databases.
type engine struct {
	// schema is the schema file, in "-- version N" sections.
	schema string
	// lockSQL runs first in every write transaction. SQLite needs none: the
	// connection begins its transactions IMMEDIATE, which takes the
	// database's write lock. PostgreSQL takes a transaction-level advisory
	// lock, so that writers on every host queue for it and an audit append
	// reads the chain's head and inserts the next row with no other append
	// in between.
	lockSQL string
	// version reads the schema version, 0 for an empty database, and
	// refuses a database that belongs to something else.
	version func(q querier) (int, error)
	// setVersion records the schema version and marks the database as ours.
	setVersion func(tx *sql.Tx, version int) error
	// schemaObjects lists the tables, indexes, triggers (and, on
	// PostgreSQL, constraints and functions) of the database with their
	// definitions, and expectedSchema what the schema file makes of an
	// empty database: checkSchema compares them, so that a dropped,
	// disabled or altered trigger is reported.
	schemaObjects  func(q querier) (map[string]schemaObject, error)
	expectedSchema func(db *sql.DB) (map[string]schemaObject, error)
}

var sqliteEngine = &engine{
	schema: schemaSQL,
	version: func(q querier) (int, error) {
		// The file was checked before it was opened (checkDatabaseFile).
		var v int
		err := q.QueryRow("PRAGMA user_version").Scan(&v)
		return v, err
	},
	setVersion: func(tx *sql.Tx, version int) error {
		_, err := tx.Exec(fmt.Sprintf("PRAGMA application_id = %d; PRAGMA user_version = %d", applicationID, version))
		return err
	},
	schemaObjects:  schemaObjects,
	expectedSchema: func(*sql.DB) (map[string]schemaObject, error) { return expectedSchema() },
}

// storeLockID is the advisory lock every writer to a PostgreSQL store
// takes: "DBSG", as the SQLite application_id.
const storeLockID = applicationID

var postgresEngine = &engine{
	schema:  schemaPostgresSQL,
	lockSQL: fmt.Sprintf("SELECT pg_advisory_xact_lock(%d)", storeLockID),
	version: func(q querier) (int, error) {
		var ours bool
		if err := q.QueryRow("SELECT to_regclass('debusine_signing_schema') IS NOT NULL").Scan(&ours); err != nil {
			return 0, err
		}
		if !ours {
			var tables int
			if err := q.QueryRow("SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = current_schema()").Scan(&tables); err != nil {
				return 0, err
			}
			if tables > 0 {
				return 0, errors.New("not a debusine-signing database (it holds other tables); refusing to touch it")
			}
			return 0, nil
		}
		var v int
		if err := q.QueryRow("SELECT version FROM debusine_signing_schema").Scan(&v); err != nil {
			return 0, fmt.Errorf("reading the schema version: %w", err)
		}
		return v, nil
	},
	setVersion: func(tx *sql.Tx, version int) error {
		_, err := tx.Exec(`INSERT INTO debusine_signing_schema (application, version) VALUES ('debusine-signing', $1)
			ON CONFLICT (application) DO UPDATE SET version = EXCLUDED.version`, version)
		return err
	},
	schemaObjects: func(q querier) (map[string]schemaObject, error) {
		var schema string
		if err := q.QueryRow("SELECT current_schema()").Scan(&schema); err != nil {
			return nil, err
		}
		return postgresSchemaObjects(q, schema)
	},
	expectedSchema: postgresExpectedSchema,
}

// postgresCatalogue lists, for the schema $1, every table with its
// columns, constraint (named table.constraint), index, trigger (with
// whether it is enabled) and function (named f()), each with its
// definition.
const postgresCatalogue = `
SELECT 'table', c.relname, string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) ||
        CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END, ', ' ORDER BY a.attnum)
    FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    WHERE c.relnamespace = $1::regnamespace AND c.relkind = 'r' GROUP BY c.relname
UNION ALL
SELECT 'constraint', c.relname || '.' || k.conname, pg_get_constraintdef(k.oid)
    FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid WHERE k.connamespace = $1::regnamespace
UNION ALL
SELECT 'index', i.relname, pg_get_indexdef(i.oid)
    FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid WHERE i.relnamespace = $1::regnamespace
UNION ALL
SELECT 'trigger', t.tgname, pg_get_triggerdef(t.oid) || ' ENABLED ' || t.tgenabled::text
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal AND c.relnamespace = $1::regnamespace
UNION ALL
SELECT 'function', p.proname || '()', pg_get_functiondef(p.oid)
    FROM pg_proc p WHERE p.pronamespace = $1::regnamespace`

func postgresSchemaObjects(q querier, schema string) (map[string]schemaObject, error) {
	rows, err := q.Query(postgresCatalogue, schema)
	if err != nil {
		return nil, fmt.Errorf("reading the schema: %w", err)
	}
	defer rows.Close()
	objs := map[string]schemaObject{}
	for rows.Next() {
		var o schemaObject
		if err := rows.Scan(&o.kind, &o.name, &o.sql); err != nil {
			return nil, err
		}
		// Definitions name the schema; the expected ones are made in another.
		o.sql = strings.ReplaceAll(o.sql, schema+".", "")
		objs[o.name] = o
	}
	return objs, rows.Err()
}

// postgresExpectedSchema applies the schema file to a scratch schema in a
// transaction that is rolled back, and reads what it made.
func postgresExpectedSchema(db *sql.DB) (map[string]schemaObject, error) {
	const scratch = "debusine_signing_expected"
	tx, err := db.Begin()
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	if _, err := tx.Exec("CREATE SCHEMA " + scratch + "; SET LOCAL search_path = " + scratch); err != nil {
		return nil, fmt.Errorf("checking the schema needs a scratch schema, rolled back: %w", err)
	}
	for i, section := range schemaSections(schemaPostgresSQL) {
		if _, err := tx.Exec(section); err != nil {
			return nil, fmt.Errorf("schema_postgres.sql version %d: %w", i+1, err)
		}
	}
	return postgresSchemaObjects(tx, scratch)
}

// isPostgres tells a PostgreSQL connection string (a postgresql:// URL or
// key/value conninfo such as "host=/run/postgresql dbname=signing") from
// the path of a SQLite file.
func isPostgres(database string) bool {
	if strings.HasPrefix(database, "postgresql://") || strings.HasPrefix(database, "postgres://") {
		return true
	}
	return conninfoKey.MatchString(database)
}

// conninfoKey matches key/value conninfo: a file name does not start with
// "dbname=" or "host=".
var conninfoKey = regexp.MustCompile(`^\s*(host|hostaddr|dbname|user|port|service)\s*=`)

// conninfoPassword finds a password written into a connection string:
// refused, since connection strings appear in configuration files, command
// lines and process listings.
var conninfoPassword = regexp.MustCompile(`(^|\s)password\s*=`)

func checkNoPassword(conninfo string) error {
	if strings.Contains(conninfo, "://") {
		u, err := url.Parse(conninfo)
		if err != nil {
			return fmt.Errorf("PostgreSQL URL: %v", err)
		}
		if _, set := u.User.Password(); set || u.Query().Has("password") {
			return errors.New("the PostgreSQL URL holds a password: put it in a password file (database_password_file, --password-file, or PGPASSFILE) instead")
		}
		return nil
	}
	if conninfoPassword.MatchString(conninfo) {
		return errors.New("the PostgreSQL conninfo holds a password: put it in a password file (database_password_file, --password-file, or PGPASSFILE) instead")
	}
	return nil
}

// readPasswordFile reads a database password: the first line of a file
// that neither group nor others can read (a systemd credential under
// /run/credentials is such a file).
func readPasswordFile(path string) (string, error) {
	data, err := readSecretInput(path, "database password file", maxSecretSize)
	if err != nil {
		return "", err
	}
	defer clear(data)
	line, _, _ := strings.Cut(string(data), "\n")
	return strings.TrimSuffix(line, "\r"), nil
}

// openPostgres connects the store to a PostgreSQL database and creates or
// migrates its schema.
func (s *Store) openPostgres(conninfo, passwordFile string) (*Store, error) {
	s.path, s.engine = databaseName(conninfo), postgresEngine
	db, err := connectPostgres(conninfo, passwordFile, false)
	if err != nil {
		return nil, fmt.Errorf("database %s: %w", s.path, err)
	}
	s.db = db
	if err := s.migrate(); err != nil {
		db.Close()
		return nil, fmt.Errorf("database %s: %w", s.path, err)
	}
	return s, nil
}

// connectPostgres connects to a PostgreSQL database through pgx's
// database/sql driver. The password comes from passwordFile, else from where
// libpq would find it (PGPASSWORD, PGPASSFILE or ~/.pgpass), never from
// conninfo. A readOnly connection makes every transaction read-only
// (default_transaction_read_only), for audit serve.
func connectPostgres(conninfo, passwordFile string, readOnly bool) (*sql.DB, error) {
	if err := checkNoPassword(conninfo); err != nil {
		return nil, err
	}
	cfg, err := pgx.ParseConfig(conninfo)
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL connection string: %w", err)
	}
	if passwordFile != "" {
		if cfg.Password, err = readPasswordFile(passwordFile); err != nil {
			return nil, err
		}
	}
	if readOnly {
		cfg.RuntimeParams["default_transaction_read_only"] = "on"
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 30 * time.Second
	}
	// Ping every connection taken from the pool: after a server restart or
	// a failover the pooled connections are dead, and pgx reports that as
	// an error of the first statement rather than letting database/sql
	// reconnect. One round trip per transaction buys a store that comes
	// back by itself.
	db := stdlib.OpenDB(*cfg, stdlib.OptionShouldPing(func(context.Context, stdlib.ShouldPingParams) bool { return true }))
	// A worker needs one connection at a time; a few more let parallel
	// signing read keys while an append waits for the lock.
	db.SetMaxOpenConns(4)
	db.SetConnMaxIdleTime(5 * time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.ConnectTimeout)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("connecting to PostgreSQL: %w", err)
	}
	return db, nil
}

// databaseName is how errors name a store: the file, or the PostgreSQL
// database without any secret.
func databaseName(database string) string {
	if !isPostgres(database) {
		return database
	}
	if cfg, err := pgx.ParseConfig(database); err == nil {
		return fmt.Sprintf("PostgreSQL database %s on %s", strconv.Quote(cfg.Database), cfg.Host)
	}
	return "PostgreSQL database"
}

// begin starts a write transaction holding the store's write lock.
func (s *Store) begin() (*sql.Tx, error) {
	tx, err := s.db.Begin()
	if err != nil {
		return nil, sqliteError(err)
	}
	if s.engine.lockSQL != "" {
		if _, err := tx.Exec(s.engine.lockSQL); err != nil {
			tx.Rollback()
			return nil, fmt.Errorf("taking the store's write lock: %w", err)
		}
	}
	return tx, nil
}
