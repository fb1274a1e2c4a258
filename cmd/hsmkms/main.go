// Command hsmkms serves the AWS KMS API from a cluster of PKCS#11 HSMs, so
// that AWS SDKs and the AWS CLI use the HSMs by setting
// AWS_ENDPOINT_URL_KMS (or --endpoint-url).
//
//	hsmkms serve --config FILE   serve the cluster a YAML file describes
//	hsmkms dev [--state DIR]     a 3-member SoftHSM2 cluster for development,
//	                             provisioned on first run, on 127.0.0.1
//	hsmkms destroy-leftover --config FILE --key ID [--force]
//	                             destroy what the members hold under a key
//	                             ID that the catalog does not list
//
// serve and dev serve the KMS protocol on /, member states on /healthz and
// Prometheus metrics on /metrics, and shut down gracefully on SIGINT or
// SIGTERM, finishing the requests in flight.
//
// A first start that dies after some members made the metadata
// integrity key and before the catalog recorded it leaves objects under
// the key's ID, and every later start fails saying so. With no server
// running, destroy-leftover with that ID (hsmkms.metadata-mac) removes
// them; the next start makes the key. It refuses an ID that the catalog
// lists, and, unless --force, HSMs that hold other keys the catalog does
// not list: another deployment may use them, and the ID may name its
// live integrity key.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage:
  hsmkms serve --config FILE    serve the cluster described by a YAML file
  hsmkms dev [--state DIR] [--listen ADDR]
                                a 3-member SoftHSM2 cluster for development, on 127.0.0.1
  hsmkms destroy-leftover --config FILE --key ID [--force]
                                destroy what the members hold under a key ID that the
                                catalog does not list (a creation that died midway)
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run runs the command line args; it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = runServe(ctx, args[1:], stderr)
	case "dev":
		err = runDev(ctx, args[1:], stdout, stderr)
	case "destroy-leftover":
		err = runDestroyLeftover(ctx, args[1:], stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "hsmkms: unknown command %q\n%s", args[0], usage)
		return 2
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "hsmkms: %v\n%s", err, usage)
		return 2
	}
	fmt.Fprintf(stderr, "hsmkms: %v\n", err)
	return 1
}

type usageError struct{ error }

func runServe(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "the YAML configuration file")
	verbose := fs.Bool("v", false, "log debug messages")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if *path == "" || fs.NArg() > 0 {
		return usageError{errors.New("serve needs --config FILE and nothing else")}
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := newLogger(stderr, level)
	s, err := startServer(ctx, cfg, log)
	if err != nil {
		return err
	}
	log.Info("hsmkms: serving the AWS KMS API", "url", s.url(), "members", len(cfg.Cluster.Members))
	return s.serve(ctx)
}
