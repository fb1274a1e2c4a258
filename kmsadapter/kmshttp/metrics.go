package kmshttp

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	// ok holds, per operation served, the counter of its successes and
	// its latency histogram, looked up in the vectors once instead of per
	// request. It is built by newMetrics and only read after.
	ok map[string]*opMetrics
}

type opMetrics struct {
	once     sync.Once // on the first success: an operation never served exports no series
	requests prometheus.Counter
	latency  prometheus.Observer
}

func newMetrics() *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "hsmkms", Subsystem: "http", Name: "requests_total",
			Help: "KMS API requests, by operation and AWS error code (empty when the request succeeded)."}, []string{"op", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "hsmkms", Subsystem: "http", Name: "request_duration_seconds",
			Help:    "Latency of KMS API requests, from the request headers to the response.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"op"}),
		ok: make(map[string]*opMetrics, len(opTable)),
	}
	for op := range opTable {
		m.ok[op] = &opMetrics{}
	}
	return m
}

func (m *metrics) observe(op, code string, d time.Duration) {
	if om := m.ok[op]; om != nil && code == "" {
		om.once.Do(func() {
			om.requests = m.requests.WithLabelValues(op, "")
			om.latency = m.latency.WithLabelValues(op)
		})
		om.requests.Inc()
		om.latency.Observe(d.Seconds())
		return
	}
	m.requests.WithLabelValues(op, code).Inc()
	m.latency.WithLabelValues(op).Observe(d.Seconds())
}

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	m.requests.Describe(ch)
	m.latency.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	m.requests.Collect(ch)
	m.latency.Collect(ch)
}
