package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hsmkms/hsmkms/cluster"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/kmsadapter"
	"github.com/hsmkms/hsmkms/kmsadapter/kmshttp"
)

// server is a running hsmkms: the cluster, the adapter over it, the
// handler and the HTTP server.
type server struct {
	cfg      serverConfig
	log      *slog.Logger
	catalog  *cluster.BoltCatalog
	cluster  *cluster.Cluster
	adapter  *kmsadapter.Client
	handler  *kmshttp.Handler
	http     *http.Server
	listener net.Listener
	stopMnt  context.CancelFunc
	mntDone  chan struct{}
	closeMu  sync.Mutex // serializes closeBackends
}

// startServer opens the cluster (bootstrapping it when configured), the
// metadata store and the listener. It does not serve yet.
func startServer(ctx context.Context, cfg serverConfig, log *slog.Logger, tokOpts ...cluster.Option) (_ *server, err error) {
	s := &server{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			s.closeBackends()
		}
	}()
	if s.catalog, err = cluster.OpenBoltCatalog(cfg.CatalogPath); err != nil {
		return nil, fmt.Errorf("opening the catalog %s: %w", cfg.CatalogPath, err)
	}
	opts := append([]cluster.Option{cluster.WithCatalog(s.catalog), cluster.WithLogger(log)}, tokOpts...)
	if s.cluster, err = cluster.New(ctx, cfg.Cluster, opts...); err != nil {
		return nil, fmt.Errorf("opening the cluster: %w", err)
	}
	if cfg.Bootstrap {
		if err := s.cluster.Bootstrap(ctx); err != nil {
			return nil, fmt.Errorf("bootstrapping the cluster: %w", err)
		}
	}
	if !s.anyServing() {
		return nil, fmt.Errorf("no member of the cluster can serve: %s", s.memberSummary())
	}
	if s.adapter, err = kmsadapter.New(s.cluster, nil, cfg.Adapter, kmsadapter.WithLogger(log)); err != nil {
		if errors.Is(err, hsm.ErrKeyExists) {
			return nil, fmt.Errorf("opening the metadata store %s: %w (if the catalog does not list the key: with no server running, "+
				"`hsmkms destroy-leftover --config <this configuration> --key %s` destroys them)",
				cfg.Adapter.StorePath, err, cfg.Adapter.IntegrityKeyID)
		}
		return nil, fmt.Errorf("opening the metadata store %s: %w", cfg.Adapter.StorePath, err)
	}
	auth, err := kmshttp.NewSigV4(cfg.SigV4)
	if err != nil {
		return nil, err
	}
	if s.handler, err = kmshttp.New(s.adapter, auth, cfg.HTTP, kmshttp.WithLogger(log)); err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		s.cluster.Collector(), s.handler.Collector())
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/", s.handler)
	s.http = &http.Server{
		Handler:           mux,
		ReadTimeout:       cfg.ReadTimeout,
		ReadHeaderTimeout: cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if s.listener, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	mctx, cancel := context.WithCancel(context.Background())
	s.stopMnt, s.mntDone = cancel, make(chan struct{})
	go func() {
		defer close(s.mntDone)
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		s.adapter.RunMaintenance(mctx, t.C)
	}()
	return s, nil
}

func (s *server) url() string {
	scheme := "http"
	if s.cfg.CertFile != "" {
		scheme = "https"
	}
	return scheme + "://" + s.listener.Addr().String()
}

// serve serves until ctx is done, then shuts down gracefully: it stops
// accepting, waits up to ShutdownTimeout for the requests in flight, and
// closes the adapter and the cluster.
func (s *server) serve(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() {
		var err error
		if s.cfg.CertFile != "" {
			err = s.http.ServeTLS(s.listener, s.cfg.CertFile, s.cfg.KeyFile)
		} else {
			err = s.http.Serve(s.listener)
		}
		errc <- err
	}()
	var serveErr error
	select {
	case err := <-errc:
		serveErr = err
	case <-ctx.Done():
		s.log.Info("hsmkms: shutting down; draining requests in flight", "timeout", s.cfg.ShutdownTimeout)
		sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
		serveErr = s.http.Shutdown(sctx)
		cancel()
		<-errc
	}
	s.closeBackends()
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	return serveErr
}

// closeBackends stops maintenance and closes the adapter, the cluster and
// the catalog; it is idempotent.
func (s *server) closeBackends() {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.stopMnt != nil {
		s.stopMnt()
		<-s.mntDone
		s.stopMnt = nil
	}
	if s.adapter != nil {
		_ = s.adapter.Close()
		s.adapter = nil
	}
	if s.cluster != nil {
		_ = s.cluster.Close()
		s.cluster = nil
	}
	if s.catalog != nil {
		_ = s.catalog.Close()
		s.catalog = nil
	}
}

func (s *server) anyServing() bool {
	for _, m := range s.cluster.Members() {
		if m.State == cluster.Healthy || m.State == cluster.Degraded {
			return true
		}
	}
	return false
}

func (s *server) memberSummary() string {
	var out string
	for i, m := range s.cluster.Members() {
		if i > 0 {
			out += "; "
		}
		out += fmt.Sprintf("%s %v (%s)", m.Name, m.State, m.Reason)
	}
	return out
}

type memberHealth struct {
	Name     string `json:"name"`
	Role     string `json:"role"`
	State    string `json:"state"`
	Reason   string `json:"reason,omitempty"`
	Keys     int    `json:"keys"`
	InFlight int64  `json:"in_flight"`
	Served   int64  `json:"served"`
}

// healthz reports every member's state: 200 while at least one member
// serves ("ok" when all are healthy, "degraded" otherwise), 503 when none
// does.
func (s *server) healthz(w http.ResponseWriter, _ *http.Request) {
	c := s.cluster
	if c == nil {
		http.Error(w, `{"status":"down"}`, http.StatusServiceUnavailable)
		return
	}
	var members []memberHealth
	serving, healthy := 0, 0
	for _, m := range c.Members() {
		members = append(members, memberHealth{Name: m.Name, Role: m.Role.String(), State: m.State.String(), Reason: m.Reason, Keys: m.Keys, InFlight: m.InFlight, Served: m.Served})
		switch m.State {
		case cluster.Healthy:
			healthy++
			serving++
		case cluster.Degraded:
			serving++
		}
	}
	status, code := "ok", http.StatusOK
	switch {
	case serving == 0:
		status, code = "down", http.StatusServiceUnavailable
	case healthy < len(members):
		status = "degraded"
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"status": status, "members": members})
}

func newLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}
