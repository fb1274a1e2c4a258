package kmshttp

import (
	"bytes"
	"context"
	"io"
	"net/http"

	"github.com/aws/aws-sdk-go-v2/aws"
)

// Transport serves an SDK's HTTP requests through a Handler in the same
// process, without a socket. It satisfies aws.HTTPClient:
//
//	client := kms.NewFromConfig(cfg, func(o *kms.Options) {
//		o.HTTPClient = h.Transport()
//		o.BaseEndpoint = aws.String("http://hsmkms.local")
//	})
//
// It is safe for concurrent use.
type Transport struct {
	h         *Handler
	principal *Principal
}

var _ aws.HTTPClient = (*Transport)(nil)

// Transport returns a transport whose requests are authenticated like any
// other: the SDK's signature is verified, and the credentials the SDK is
// configured with must be the handler's.
func (h *Handler) Transport() *Transport { return &Transport{h: h} }

// TrustedTransport returns a transport whose requests are served as p
// without verifying their signature: the caller is this process, which
// could call the API directly. Key policies still apply to p.
func (h *Handler) TrustedTransport(p Principal) *Transport {
	p.Actions = append([]string(nil), p.Actions...)
	return &Transport{h: h, principal: &p}
}

// Do implements aws.HTTPClient.
func (t *Transport) Do(req *http.Request) (*http.Response, error) {
	if err := req.Context().Err(); err != nil {
		return nil, err
	}
	if t.principal != nil {
		req = req.WithContext(context.WithValue(req.Context(), principalKey{}, t.principal))
	}
	if req.Body == nil {
		req.Body = http.NoBody
	}
	rw := &responseWriter{header: http.Header{}}
	t.h.ServeHTTP(rw, req)
	if rw.status == 0 {
		rw.status = http.StatusOK
	}
	return &http.Response{
		Status:        http.StatusText(rw.status),
		StatusCode:    rw.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        rw.header,
		Body:          io.NopCloser(bytes.NewReader(rw.body.Bytes())),
		ContentLength: int64(rw.body.Len()),
		Request:       req,
	}, nil
}

type responseWriter struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (w *responseWriter) Header() http.Header { return w.header }

func (w *responseWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *responseWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if w.body.Len() == 0 {
		w.body.Grow(len(b))
	}
	return w.body.Write(b)
}
