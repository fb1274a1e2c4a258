package kmshttp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"sync"

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
	resp := &http.Response{
		Status:        http.StatusText(rw.status),
		StatusCode:    rw.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        rw.header,
		Body:          io.NopCloser(bytes.NewReader(rw.body.Bytes())),
		ContentLength: int64(rw.body.Len()),
		Request:       req,
	}
	if rw.owned != nil {
		resp.Body = &pooledBody{buf: rw.owned, r: bytes.NewReader(rw.owned.Bytes())}
		resp.ContentLength = int64(rw.owned.Len())
	}
	return resp, nil
}

type responseWriter struct {
	header http.Header
	status int
	body   bytes.Buffer
	owned  *bytes.Buffer // a whole response from the pool, taken by take
}

// take makes buf, a pooled buffer holding the whole response, the body of
// a 200 response without copying it; the response body puts it back in
// the pool when it is closed.
func (w *responseWriter) take(buf *bytes.Buffer) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	w.owned = buf
}

// pooledBody reads a response from a pooled buffer and puts the buffer
// back when closed; reads after Close fail, as a closed http body's do.
type pooledBody struct {
	mu  sync.Mutex
	buf *bytes.Buffer
	r   *bytes.Reader
}

var errBodyClosed = errors.New("kmshttp: read on closed response body")

func (b *pooledBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf == nil {
		return 0, errBodyClosed
	}
	return b.r.Read(p)
}

func (b *pooledBody) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf != nil {
		b.r.Reset(nil)
		putBuf(b.buf)
		b.buf = nil
	}
	return nil
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
