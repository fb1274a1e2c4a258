package cluster

import (
	"time"

	"github.com/hsmkms/hsmkms/hsm"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the cluster's Prometheus collectors. Nothing is registered
// by the cluster; the caller registers Collector().
type metrics struct {
	c *Cluster

	ops           *prometheus.CounterVec   // member, op
	errs          *prometheus.CounterVec   // member, op, class
	latency       *prometheus.HistogramVec // member, op
	clusterOps    *prometheus.CounterVec   // op, result
	clusterLat    *prometheus.HistogramVec // op
	probeFailures *prometheus.CounterVec   // member
	resyncs       *prometheus.CounterVec   // member
	retries       prometheus.Counter
	hedges        prometheus.Counter
	eventsDropped prometheus.Counter
	keysCreated   prometheus.Counter
	keysDestroyed prometheus.Counter
	keysCopied    prometheus.Counter
	rollbacks     prometheus.Counter
	leftovers     prometheus.Counter
	kekTransfers  prometheus.Counter
	stateDesc     *prometheus.Desc
	inflightDesc  *prometheus.Desc
	keysDesc      *prometheus.Desc
}

const ns = "hsmkms_cluster"

func newMetrics(c *Cluster) *metrics {
	buckets := []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: name, Help: help})
	}
	return &metrics{
		c: c,
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "member_operations_total",
			Help: "Calls made on each member, by operation."}, []string{"member", "op"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "member_errors_total",
			Help: "Failed calls on each member, by operation and whose fault (caller, member, fatal, context)."}, []string{"member", "op", "class"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "member_operation_duration_seconds",
			Help: "Latency of calls on each member.", Buckets: buckets}, []string{"member", "op"}),
		clusterOps: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "operations_total",
			Help: "Cluster calls, by operation and result (ok, caller, member, fatal, context)."}, []string{"op", "result"}),
		clusterLat: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "operation_duration_seconds",
			Help: "Latency of cluster calls, retries and hedges included.", Buckets: buckets}, []string{"op"}),
		probeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "probe_failures_total",
			Help: "Failed health probes."}, []string{"member"}),
		resyncs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "resyncs_total",
			Help: "Completed re-syncs and anti-entropy passes."}, []string{"member"}),
		retries:       counter("retries_total", "Calls retried on another member after a member's fault."),
		hedges:        counter("hedges_total", "Hedged calls sent to a second member."),
		eventsDropped: counter("events_dropped_total", "State change events dropped because the event channel was full."),
		keysCreated:   counter("keys_created_total", "Keys created on a quorum."),
		keysDestroyed: counter("keys_destroyed_total", "Keys destroyed."),
		keysCopied:    counter("keys_copied_total", "Keys copied to a member by re-sync or anti-entropy."),
		rollbacks:     counter("rollbacks_total", "Key creations rolled back for want of a quorum."),
		leftovers:     counter("leftovers_replaced_total", "Copies whose check value did not match the catalog's, left under a key's ID by a failed creation, destroyed and copied afresh."),
		kekTransfers:  counter("kek_transfers_total", "Key-encryption keys transferred in join ceremonies."),
		stateDesc: prometheus.NewDesc(ns+"_member_state", "1 for the member's current state (down, syncing, degraded, healthy).",
			[]string{"member", "state"}, nil),
		inflightDesc: prometheus.NewDesc(ns+"_member_in_flight", "Calls in flight on the member.", []string{"member"}, nil),
		keysDesc:     prometheus.NewDesc(ns+"_member_keys", "Keys the member holds, as the cluster knows.", []string{"member"}, nil),
	}
}

func (mt *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{mt.ops, mt.errs, mt.latency, mt.clusterOps, mt.clusterLat, mt.probeFailures, mt.resyncs,
		mt.retries, mt.hedges, mt.eventsDropped, mt.keysCreated, mt.keysDestroyed, mt.keysCopied, mt.rollbacks, mt.leftovers, mt.kekTransfers}
}

func resultLabel(err error) string {
	if err == nil {
		return "ok"
	}
	return hsm.Classify(err).String()
}

func (mt *metrics) observe(member, op string, d time.Duration, err error) {
	mt.ops.WithLabelValues(member, op).Inc()
	mt.latency.WithLabelValues(member, op).Observe(d.Seconds())
	if err != nil {
		mt.errs.WithLabelValues(member, op, resultLabel(err)).Inc()
	}
}

func (mt *metrics) observeCluster(op string, d time.Duration, err error) {
	mt.clusterOps.WithLabelValues(op, resultLabel(err)).Inc()
	mt.clusterLat.WithLabelValues(op).Observe(d.Seconds())
}

// Describe implements prometheus.Collector.
func (mt *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range mt.collectors() {
		c.Describe(ch)
	}
	ch <- mt.stateDesc
	ch <- mt.inflightDesc
	ch <- mt.keysDesc
}

// Collect implements prometheus.Collector.
func (mt *metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range mt.collectors() {
		c.Collect(ch)
	}
	for _, s := range mt.c.Members() {
		for _, st := range states {
			v := 0.0
			if s.State == st {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(mt.stateDesc, prometheus.GaugeValue, v, s.Name, st.String())
		}
		ch <- prometheus.MustNewConstMetric(mt.inflightDesc, prometheus.GaugeValue, float64(s.InFlight), s.Name)
		ch <- prometheus.MustNewConstMetric(mt.keysDesc, prometheus.GaugeValue, float64(s.Keys), s.Name)
	}
}

// Collector returns the cluster's Prometheus metrics as one collector
// for the caller to register: calls, errors by class and latency per
// member and operation; cluster calls and latency; member state, in
// flight and key counts; retries, hedges, re-syncs, dropped events.
func (c *Cluster) Collector() prometheus.Collector { return c.metrics }
