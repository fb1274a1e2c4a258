package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"

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
	force := fs.Bool("force", false, "destroy even when the members hold other keys that the catalog does not list")
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
	return destroyLeftover(ctx, cfg, hsm.KeyID(*key), *force, newLogger(stderr, slog.LevelInfo))
}

// destroyLeftover opens the server's catalog and cluster (the catalog
// cannot be opened while a server holds it) and destroys id's leftovers.
//
// Unless force is set, it refuses when the members hold other keys that
// the catalog does not list: a first start that died leaves only the one
// ID, while HSMs that another deployment (another catalog) also uses hold
// that deployment's keys, and id may be its live integrity key.
func destroyLeftover(ctx context.Context, cfg serverConfig, id hsm.KeyID, force bool, log *slog.Logger, opts ...cluster.Option) (err error) {
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
	if !force {
		cv, err := cl.Coverage(ctx)
		if err != nil {
			return err
		}
		var others []string
		for member, ids := range cv.Orphans {
			for _, o := range ids {
				if o != id {
					others = append(others, member+":"+string(o))
				}
			}
		}
		if len(others) > 0 {
			slices.Sort(others)
			return fmt.Errorf("the members hold %d other keys that the catalog %s does not list (%s): these HSMs may serve another deployment, "+
				"and %s may be its live key; nothing was destroyed (--force destroys it all the same)",
				len(others), cfg.CatalogPath, strings.Join(others[:min(len(others), 5)], ", "), id)
		}
	}
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
		log.Warn("hsmkms: members that are down keep what they hold under the ID; if they are back before the key is created, run destroy-leftover again",
			"key", id, "members", away)
	}
	log.Info("hsmkms: no member that could be reached holds anything under the ID now", "key", id)
	return nil
}
