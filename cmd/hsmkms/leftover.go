package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/hsmkms/hsmkms/cluster"
	"github.com/hsmkms/hsmkms/hsm"
)

// runDestroyLeftover is `hsmkms destroy-leftover`: it destroys what the
// members hold under a key ID that the catalog does not list, left by a
// creation whose process died before the catalog recorded the key (the
// first start's integrity key, whose fixed ID the next start cannot
// create while it is taken).
func runDestroyLeftover(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("destroy-leftover", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "the YAML configuration file of the server")
	key := fs.String("key", "", "the HSM key ID")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if *path == "" || *key == "" || fs.NArg() > 0 {
		return usageError{errors.New("destroy-leftover needs --config FILE and --key ID and nothing else")}
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	return destroyLeftover(ctx, cfg, hsm.KeyID(*key), newLogger(stderr, slog.LevelInfo))
}

// destroyLeftover opens the server's catalog and cluster (the catalog
// cannot be opened while a server holds it) and destroys id's leftovers.
func destroyLeftover(ctx context.Context, cfg serverConfig, id hsm.KeyID, log *slog.Logger, opts ...cluster.Option) (err error) {
	cat, err := cluster.OpenBoltCatalog(cfg.CatalogPath)
	if err != nil {
		return fmt.Errorf("opening the catalog %s (is a server using it?): %w", cfg.CatalogPath, err)
	}
	defer func() { err = errors.Join(err, cat.Close()) }()
	cl, err := cluster.New(ctx, cfg.Cluster, append([]cluster.Option{cluster.WithCatalog(cat), cluster.WithLogger(log)}, opts...)...)
	if err != nil {
		return fmt.Errorf("opening the cluster: %w", err)
	}
	defer func() { err = errors.Join(err, cl.Close()) }()
	if err := cl.DestroyLeftover(ctx, id); err != nil {
		return err
	}
	var away []string
	for _, m := range cl.Members() {
		if m.State == cluster.Down {
			away = append(away, fmt.Sprintf("%s (%s)", m.Name, m.Reason))
		}
	}
	if len(away) > 0 {
		log.Warn("hsmkms: members that are down keep what they hold under the ID; once the key is created, their re-sync replaces it",
			"key", id, "members", away)
	}
	log.Info("hsmkms: no member that could be reached holds anything under the ID now", "key", id)
	return nil
}
