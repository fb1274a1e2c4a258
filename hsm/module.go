package hsm

import (
	"errors"
	"fmt"
	"sync"

	"github.com/miekg/pkcs11"
)

// The one global that PKCS#11 forces on us: a module may be loaded and
// initialized only once per process, so every Token that names the same
// path shares one *module, reference counted.
var modules = struct {
	sync.Mutex
	byPath map[string]*module
}{byPath: map[string]*module{}}

type module struct {
	path   string
	ctx    *pkcs11.Ctx
	direct directCalls // a nil fn: use ctx's function
	refs   int         // guarded by modules.Mutex
	// released is closed once the last reference's C_Finalize is over;
	// until then the module stays in modules.byPath with refs 0, and a
	// Token opening the same path waits, so that the finalize never runs
	// under the new Token's calls (both would use one library instance).
	released chan struct{}

	mu sync.Mutex // serializes (re)initialization
}

// acquireModule loads the module at path, or returns the already loaded
// one with its reference count raised. The caller initializes it (through
// its Interceptor, so that a member held down stays down).
func acquireModule(path string) (*module, error) {
	modules.Lock()
	defer modules.Unlock()
	for {
		m, ok := modules.byPath[path]
		if !ok {
			break
		}
		if m.refs > 0 {
			m.refs++
			return m, nil
		}
		modules.Unlock() // the last Token is finalizing it
		<-m.released
		modules.Lock()
	}
	ctx := pkcs11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("%w: cannot load PKCS#11 module %q", ErrInvalidInput, path)
	}
	m := &module{path: path, ctx: ctx, refs: 1, direct: resolveDirect(path), released: make(chan struct{})}
	modules.byPath[path] = m
	return m, nil
}

// initialize calls C_Initialize; a module already initialized (by us
// earlier, or by another user of the same library instance) is fine.
func (m *module) initialize() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	err := m.ctx.Initialize()
	if c, ok := asCKR(err); ok && c == CKR(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		return nil
	}
	return err
}

// release drops one reference; the last one finalizes and unloads.
func (m *module) release() error {
	modules.Lock()
	m.refs--
	if m.refs > 0 {
		modules.Unlock()
		return nil
	}
	modules.Unlock()

	err := m.ctx.Finalize()
	if c, ok := asCKR(err); ok && c == CKR(pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED) {
		err = nil
	}
	m.ctx.Destroy()
	modules.Lock()
	delete(modules.byPath, m.path)
	modules.Unlock()
	close(m.released)
	if err != nil {
		return errors.Join(fmt.Errorf("finalize %s", m.path), err)
	}
	return nil
}
